//! The shared behavioural suite against [`KernelDatapath`] (root): each case gets freshly
//! loaded programs on a private bpffs mount and, for the attach case, a veth pair in a network
//! namespace of its own, so cases run in parallel and leave nothing behind.

mod privileged_common;

use std::cell::RefCell;
use std::path::PathBuf;

use datapath::api::{
    CtGcStats, Datapath, DatapathError, EndpointAttachment, EndpointId, MapKey, MapName, MapValue,
    MetricEntry,
};
use datapath::testing::datapath_behaviour_tests;
use datapath::{KernelDatapath, LoadOptions};
use privileged_common::{BpfFs, Netns, unique};

thread_local! {
    /// The interface the current test's attach case uses: (host-side ifname, node netns).
    static INTERFACE: RefCell<Option<(String, PathBuf)>> = const { RefCell::new(None) };
}

/// A fresh kernel datapath and the resources it lives on. Fields drop in order: the datapath
/// (closing its fds), then the namespace with the veth, then the bpffs mount with its pins.
#[derive(Debug)]
struct KernelUnderTest {
    dp: KernelDatapath,
    _node: NodeNs,
    _fs: BpfFsGuard,
}

struct NodeNs(Netns);
struct BpfFsGuard(BpfFs);

impl std::fmt::Debug for NodeNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeNs({})", self.0.name)
    }
}

impl std::fmt::Debug for BpfFsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpfFs({})", self.0.path().display())
    }
}

fn fresh() -> KernelUnderTest {
    let fs = BpfFs::mount();
    let node = Netns::add("dk");
    let host = unique("h");
    let pod = unique("p");
    node.exec(&["link", "add", &host, "type", "veth", "peer", "name", &pod]);
    node.exec(&["link", "set", &host, "up"]);
    node.exec(&["link", "set", &pod, "up"]);
    INTERFACE.with(|cell| *cell.borrow_mut() = Some((host, node.path())));
    let options = LoadOptions {
        bpf_root: Some(fs.path().to_path_buf()),
        ..LoadOptions::default()
    };
    let dp = KernelDatapath::load(&options).unwrap_or_else(|e| panic!("load datapath: {e}"));
    KernelUnderTest {
        dp,
        _node: NodeNs(node),
        _fs: BpfFsGuard(fs),
    }
}

fn attachment(endpoint: EndpointId) -> EndpointAttachment {
    let (ifname, netns) = INTERFACE
        .with(|cell| cell.borrow().clone())
        .expect("fresh() ran on this thread");
    EndpointAttachment {
        endpoint,
        ifname,
        netns: Some(netns),
    }
}

impl Datapath for KernelUnderTest {
    fn update(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
        self.dp.update(key, value)
    }
    fn delete(&mut self, key: &MapKey) -> Result<bool, DatapathError> {
        self.dp.delete(key)
    }
    fn list(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError> {
        self.dp.list(map)
    }
    fn policy_maps(&self) -> Result<Vec<EndpointId>, DatapathError> {
        self.dp.policy_maps()
    }
    fn create_policy_map(&mut self, endpoint: EndpointId) -> Result<(), DatapathError> {
        self.dp.create_policy_map(endpoint)
    }
    fn remove_policy_map(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        self.dp.remove_policy_map(endpoint)
    }
    fn attach_endpoint(&mut self, attachment: &EndpointAttachment) -> Result<(), DatapathError> {
        self.dp.attach_endpoint(attachment)
    }
    fn detach_endpoint(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        self.dp.detach_endpoint(endpoint)
    }
    fn conntrack_gc(&mut self) -> Result<CtGcStats, DatapathError> {
        self.dp.conntrack_gc()
    }
    fn read_metrics(&self) -> Result<Vec<MetricEntry>, DatapathError> {
        self.dp.read_metrics()
    }
}

datapath_behaviour_tests!(datapath = fresh(), attachment = attachment);

/// Beyond the shared suite: what only the kernel can show.
mod kernel_only {
    use super::*;

    /// An attachment is visible to the kernel as two TCX links on the interface, survives the
    /// datapath being dropped (its pins hold it), and is found again by a new load.
    #[test]
    fn attachment_outlives_the_datapath_and_is_adopted() {
        let mut under = fresh();
        let endpoint = EndpointId::new(42);
        let att = attachment(endpoint);
        under
            .dp
            .attach_endpoint(&att)
            .unwrap_or_else(|e| panic!("attach: {}", datapath::api::error_chain(&e)));
        let links_dir = under._fs.0.path().join("cilium/endpoints/42/links");
        for program in ["cil_from_container", "cil_to_container"] {
            assert!(links_dir.join(program).exists(), "{program} link pinned");
        }
        let options = LoadOptions {
            bpf_root: Some(under._fs.0.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let KernelUnderTest { dp, _node, _fs } = under;
        drop(dp);
        let programs = tcx_programs(&_node.0, &att.ifname);
        assert_eq!(
            programs, 2,
            "both links still attached after the datapath is gone"
        );
        let mut again =
            KernelDatapath::load(&options).unwrap_or_else(|e| panic!("second load: {e}"));
        assert_eq!(again.attached_endpoints().ok(), Some(vec![endpoint]));
        // Re-attaching replaces the links with ones running the new load's programs.
        again
            .attach_endpoint(&att)
            .unwrap_or_else(|e| panic!("re-attach: {e}"));
        assert_eq!(
            settled_tcx_programs(&_node.0, &att.ifname, 2),
            2,
            "replaced, not added"
        );
        assert!(matches!(again.detach_endpoint(endpoint), Ok(true)));
        assert_eq!(
            settled_tcx_programs(&_node.0, &att.ifname, 0),
            0,
            "detached"
        );
        assert_eq!(again.attached_endpoints().ok(), Some(vec![]));
    }

    #[test]
    fn attaching_to_a_missing_interface_fails_with_the_endpoint_named() {
        let mut under = fresh();
        let att = EndpointAttachment {
            endpoint: EndpointId::new(3),
            ifname: "nosuchif0".into(),
            netns: attachment(EndpointId::new(3)).netns,
        };
        let err = under.dp.attach_endpoint(&att).unwrap_err();
        assert!(
            matches!(&err, DatapathError::Attach { endpoint, ifname, .. } if endpoint.get() == 3 && ifname == "nosuchif0"),
            "{err:?}"
        );
        assert_eq!(under.dp.attached_endpoints().ok(), Some(vec![]));
    }

    /// The kernel releases a link whose last pin went away from a workqueue, so a detach shows
    /// shortly after the unlink: polls until `expected` programs remain, for up to two seconds.
    fn settled_tcx_programs(node: &Netns, ifname: &str, expected: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let count = tcx_programs(node, ifname);
            if count == expected || std::time::Instant::now() >= deadline {
                return count;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Programs attached to `ifname` through TCX (ingress + egress), queried inside the node
    /// namespace (`bpftool net` does not show TCX, and link listings are not per namespace).
    fn tcx_programs(node: &Netns, ifname: &str) -> usize {
        use aya::programs::{SchedClassifier, TcAttachType};
        let ifname = ifname.to_owned();
        node.run(move || {
            [TcAttachType::Ingress, TcAttachType::Egress]
                .into_iter()
                .map(|hook| {
                    SchedClassifier::query_tcx(&ifname, hook)
                        .unwrap_or_else(|e| panic!("query tcx {ifname}: {e}"))
                        .1
                        .len()
                })
                .sum()
        })
    }
}
