//! Shared fixtures of the privileged tests (root): a private bpffs mount, network namespaces
//! and veth pairs made with `ip`, unique names, and running code inside a namespace on a helper
//! thread. Every fixture cleans up in `Drop`, so a failing test leaves nothing behind.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for an interface (15 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}x{n:x}", std::process::id())
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bpffs mounted on a fresh temp dir, unmounted (lazily, so pins held open by a crashed
/// test cannot keep it busy) on drop.
pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    pub fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for bpffs");
        let target = CString::new(dir.path().as_os_str().as_bytes()).expect("path without NUL");
        let fstype = c"bpf";
        // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs at {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        BpfFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(tag: &str) -> Self {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args...`
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }

    /// A sysctl of this namespace, written through its /proc/sys.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || {
            std::fs::write(&path, &value)
                .unwrap_or_else(|e| panic!("sysctl {} = {value}: {e}", path.display()))
        });
    }

    /// The index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let name = CString::new(ifname).expect("interface name");
        // SAFETY: a valid NUL-terminated name.
        let index = self.run(move || unsafe { libc::if_nametoindex(name.as_ptr()) });
        assert_ne!(index, 0, "no interface {ifname} in {}", self.name);
        index
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", ifname])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC for {ifname} in {text:?}"));
        let mut bytes = [0u8; 6];
        for (byte, part) in bytes.iter_mut().zip(mac.split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("hex MAC byte");
        }
        bytes
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a helper thread that has joined the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: `ns` is an open namespace fd; only this thread switches.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
