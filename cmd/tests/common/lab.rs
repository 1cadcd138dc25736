//! A lab for the privileged lab tests (`cilium lab ...` as root): its own temp directory and a
//! name derived from the test's tag and this process's PID, so tests run in parallel, and
//! `cilium lab down` on drop, so a failing test leaves nothing behind.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const CILIUM: &str = env!("CARGO_BIN_EXE_cilium");
pub const DBG: &str = env!("CARGO_BIN_EXE_cilium-dbg");

/// Whether `pid` runs (a zombie waiting for its reaper does not).
pub fn running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// The lines of /proc/mounts that `keep` keeps.
pub fn mounts_where(keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .expect("mounts")
        .lines()
        .filter(|l| keep(l))
        .map(str::to_owned)
        .collect()
}

/// A lab in a temp directory, taken down on drop.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("lab dir"),
            name: format!("{tag}{:x}", std::process::id()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `cilium GROUP --dir DIR ARGS` (the directory first, so it never ends up after `--`).
    pub fn cilium(&self, group: &str, args: &[&str]) -> Output {
        Command::new(CILIUM)
            .args([group, "--dir"])
            .arg(self.dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cilium")
    }

    /// `cilium GROUP ARGS`, which must succeed (the lab's logs in the failure message).
    pub fn cilium_ok(&self, group: &str, args: &[&str]) -> Output {
        let out = self.cilium(group, args);
        assert!(
            out.status.success(),
            "cilium {group} {args:?} failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }

    /// `cilium lab ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cilium("lab", args)
    }

    /// `cilium lab ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cilium_ok("lab", args).stdout).into_owned()
    }

    /// `cilium lab ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// The lab's state file as JSON.
    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.dir().join("state.json")).expect("state file");
        serde_json::from_str(&text).expect("state JSON")
    }

    /// An echo server inside lab pod `pod` on `port`: `pod exec` execs into it, so the
    /// child's PID is the server's.
    pub fn serve_in(&self, pod: &str, port: u16) -> Child {
        Command::new(CILIUM)
            .args(["lab", "pod", "exec", pod, "--dir"])
            .arg(self.dir())
            .args(["--", CILIUM, "lab", "echo-server", "--listen"])
            .arg(format!("0.0.0.0:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo server in pod")
    }

    /// One `cilium lab echo-client` probe from lab pod `pod` to `addr` (a 1 s connect timeout).
    pub fn probe(&self, pod: &str, addr: &str) -> Output {
        self.run(&[
            "pod",
            "exec",
            pod,
            "--",
            CILIUM,
            "lab",
            "echo-client",
            "--connect",
            addr,
            "--timeout",
            "1s",
        ])
    }

    /// Whether one probe from `pod` to `addr` connects.
    pub fn connects(&self, pod: &str, addr: &str) -> bool {
        self.probe(pod, addr).status.success()
    }

    /// `cilium-dbg ARGS -o json` against node `node`'s agent, which must succeed; parsed.
    pub fn dbg(&self, node: &str, args: &[&str]) -> Value {
        let socket = self.dir().join("nodes").join(node).join("cilium.sock");
        let out = Command::new(DBG)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .output()
            .expect("run cilium-dbg");
        assert!(
            out.status.success(),
            "cilium-dbg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cilium-dbg JSON")
    }

    /// Network namespaces named with this lab's prefix.
    pub fn namespaces_left(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir("/var/run/netns")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mounts below the lab's directory.
    pub fn mounts_left(&self) -> Vec<String> {
        let dir = self.dir().to_string_lossy().into_owned();
        mounts_where(|line| line.contains(&dir))
    }

    /// Command lines of running processes that name the lab's directory (agents, etcd...).
    pub fn processes_left(&self) -> Vec<String> {
        let dir = self.dir().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .parse::<i64>()
                    .is_ok_and(running)
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&dir))
            .collect()
    }

    /// The last lines of every log of the lab, for failure messages.
    pub fn logs(&self) -> String {
        let Ok(entries) = std::fs::read_dir(self.dir().join("logs")) else {
            return String::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines.get(lines.len().saturating_sub(30)..).unwrap_or(&[]);
                format!("--- {}:\n{}\n", e.path().display(), tail.join("\n"))
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}
