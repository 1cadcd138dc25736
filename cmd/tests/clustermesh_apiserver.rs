//! `clustermesh-apiserver` against two private etcds: cluster c2 runs it as a publisher, cluster
//! c1 runs it with `--kvstoremesh` and caches c2 into its own etcd; both stop cleanly on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kvstore::Backend;
use kvstore::testing::etcd::EtcdServer;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn write_etcd_config(dir: &Path, name: &str, server: &EtcdServer) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("endpoints:\n- {}\n", server.endpoint())).unwrap();
    path
}

/// A running `clustermesh-apiserver`, killed by PID if the test ends without stopping it.
struct Apiserver {
    child: Child,
}

impl Apiserver {
    fn start(args: &[&str]) -> Apiserver {
        let child = Command::new(env!("CARGO_BIN_EXE_clustermesh-apiserver"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            // Logs go to stdout; errors, which say why a start failed, stay on stderr.
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Apiserver { child }
    }

    /// Sends SIGTERM and waits up to 10 s for the exit status.
    async fn terminate(mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_for_value(backend: &dyn Backend, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(kv) = backend.get(key).await.unwrap() {
            return String::from_utf8(kv.value).unwrap();
        }
        assert!(Instant::now() < deadline, "{key} not written within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publisher_and_kvstoremesh_against_etcd() {
    let etcd1 = EtcdServer::start().await.unwrap();
    let etcd2 = EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c1_config = write_etcd_config(dir.path(), "etcd1.yaml", &etcd1);
    let c2_config = write_etcd_config(dir.path(), "etcd2.yaml", &etcd2);
    let mesh_dir = dir.path().join("clustermesh");
    std::fs::create_dir(&mesh_dir).unwrap();
    write_etcd_config(&mesh_dir, "c2", &etcd2);

    // What c2's agents wrote.
    let remote = etcd2.client().await;
    remote
        .put(
            "cilium/state/nodes/v1/c2/n1",
            br#"{"Name":"n1","Cluster":"c2","ClusterID":2}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    remote
        .put(
            "cilium/state/identities/v1/id/131073",
            b"k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec(),
            None,
        )
        .await
        .unwrap();

    let c2_opt = format!("etcd.config={}", c2_config.display());
    let c2 = Apiserver::start(&[
        "--cluster-name",
        "c2",
        "--cluster-id",
        "2",
        "--kvstore",
        "etcd",
        "--kvstore-opt",
        &c2_opt,
    ]);
    let c1_opt = format!("etcd.config={}", c1_config.display());
    let mesh_dir_arg = mesh_dir.display().to_string();
    let c1 = Apiserver::start(&[
        "--cluster-name",
        "c1",
        "--cluster-id",
        "1",
        "--kvstore",
        "etcd",
        "--kvstore-opt",
        &c1_opt,
        "--kvstoremesh",
        "--clustermesh-config",
        &mesh_dir_arg,
        "--log-format",
        "json",
    ]);

    assert_eq!(
        wait_for_value(&remote, "cilium/cluster-config/c2").await,
        r#"{"id":2,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#
    );
    wait_for_value(&remote, "cilium/synced/c2/cilium/state/ip/v1").await;
    wait_for_value(&remote, "cilium/.heartbeat").await;

    let local = etcd1.client().await;
    assert_eq!(
        wait_for_value(&local, "cilium/cluster-config/c1").await,
        r#"{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#
    );
    wait_for_value(&local, "cilium/synced/c2/cilium/cache/identities/v1").await;
    wait_for_value(&local, "cilium/synced/c2/cilium/cache/nodes/v1").await;
    assert_eq!(
        wait_for_value(&local, "cilium/cluster-config/c2").await,
        r#"{"id":2,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}"#
    );
    assert_eq!(
        wait_for_value(&local, "cilium/cache/nodes/v1/c2/n1").await,
        r#"{"Name":"n1","Cluster":"c2","ClusterID":2}"#
    );
    assert_eq!(
        wait_for_value(&local, "cilium/cache/identities/v1/c2/id/131073").await,
        "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;"
    );

    // A change in c2 reaches c1's cache through the watch.
    remote.delete("cilium/state/nodes/v1/c2/n1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while local
        .get("cilium/cache/nodes/v1/c2/n1")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "delete not mirrored within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(
        c1.terminate().await.success(),
        "c1 exits cleanly on SIGTERM"
    );
    assert!(
        c2.terminate().await.success(),
        "c2 exits cleanly on SIGTERM"
    );
    etcd1.stop().await.unwrap();
    etcd2.stop().await.unwrap();
}

#[test]
fn refuses_to_start_without_a_usable_kvstore() {
    let output = Command::new(env!("CARGO_BIN_EXE_clustermesh-apiserver"))
        .args(["--cluster-name", "c1", "--cluster-id", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kvstore etcd"), "{stderr}");
}
