//! Compiles every `bpf/*.c` with clang for the BPF target into `$OUT_DIR`, where
//! `src/loader.rs` embeds the objects with `include_bytes!`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Without the `kernel` feature nothing embeds the objects, and clang need not be installed.
    if env::var_os("CARGO_FEATURE_KERNEL").is_none() {
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = manifest_dir.join("bpf");
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let multiarch_include = multiarch_include();
    watch_dir(&bpf_dir);
    let mut sources: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", bpf_dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();

    for source in &sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("bpf source names are utf-8");
        let object = out_dir.join(format!("{stem}.o"));
        let mut cmd = Command::new(&clang);
        cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
        if let Some(dir) = &multiarch_include {
            cmd.arg(format!("-I{dir}"));
        }
        cmd.arg("-c").arg(source).arg("-o").arg(&object);
        let status = match cmd.status() {
            Ok(status) => status,
            Err(err) => panic!(
                "cannot run `{clang}` to build the eBPF programs ({err}); \
                 run scripts/install-prereqs.sh to install clang, llvm and libbpf-dev, \
                 or point BPF_CLANG at a clang with the BPF target"
            ),
        };
        if !status.success() {
            panic!(
                "`{clang}` failed to compile {} ({status})",
                source.display()
            );
        }
    }
}

/// Registers every file under `dir` with cargo so an edit to any C file or
/// header rebuilds the objects.
fn watch_dir(dir: &Path) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
            .path();
        if path.is_dir() {
            watch_dir(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// `/usr/include/<multiarch>`, where Debian keeps `asm/types.h`.
fn multiarch_include() -> Option<String> {
    let output = Command::new("gcc").arg("-print-multiarch").output().ok()?;
    let triple = String::from_utf8(output.stdout).ok()?;
    let triple = triple.trim();
    (!triple.is_empty()).then(|| format!("/usr/include/{triple}"))
}
