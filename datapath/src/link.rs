//! [`NetlinkLinks`]: the [`EndpointLinks`] of a real node, over rtnetlink.
//!
//! The node side (veth creation, route and neighbour entry towards the pod, sysctls) is done
//! from the caller's runtime, in the namespace the agent runs in. The pod side needs requests
//! inside the pod's namespace; a netlink socket belongs to the namespace of the thread that
//! opens it, so that work runs on a short-lived helper thread that `setns`es into the pod's
//! namespace and drives its own current-thread runtime. Runtime workers never switch
//! namespaces: a worker that did would carry every later task into the pod.
//!
//! The layout follows upstream's veth connector: the pair is created as `<host>`/`tmp...` in
//! the node namespace, the peer moved into the pod by namespace fd and renamed there, the pod
//! gets its address as a /32 with a link route to the gateway and the default route via it
//! (every packet leaves through the host-side veth, where the programs run), and the node
//! routes the pod's /32 to the host-side veth with a permanent neighbour entry, so the node
//! never has to ARP for a pod. IPv6 is switched off inside the pod: the programs drop IPv6
//! (drop reason 139, unsupported L3), and router solicitations would only produce drops.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourAttribute;
use netlink_packet_route::route::RouteScope;
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::api::{
    EndpointLinkInfo, EndpointLinkSpec, EndpointLinks, LinkError, MacAddr, validate_ifname,
};

/// Upstream names the pod end of a new pair `tmp<hash>` until it is renamed inside the pod.
const TEMPORARY_PREFIX: &str = "tmp";

/// The netlink implementation. See the module docs.
#[derive(Debug, Default)]
pub struct NetlinkLinks {
    /// `net.ipv4.ip_forward` is switched on with the first endpoint.
    forwarding: AtomicBool,
}

impl NetlinkLinks {
    pub fn new() -> Self {
        Self::default()
    }
}

fn to_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn netlink(ifname: &str, step: &'static str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let ifname = ifname.to_owned();
    move |err| LinkError::Netlink {
        ifname,
        step,
        source: to_io(err),
    }
}

fn connect(ifname: &str) -> Result<Handle, LinkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| LinkError::Netlink {
            ifname: ifname.to_owned(),
            step: "opening a netlink socket",
            source,
        })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A link by name, `None` if there is none.
async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(err) => {
            let err = to_io(err);
            if err.raw_os_error() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(LinkError::Netlink {
                    ifname: name.to_owned(),
                    step: "looking up the interface",
                    source: err,
                })
            }
        }
    }
}

fn mac_of(link: &LinkMessage) -> MacAddr {
    link.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .map(MacAddr)
        .unwrap_or_default()
}

fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(0)
}

/// Writes a sysctl under `/proc/sys`, in the namespace of the calling thread.
fn write_sysctl(path: &Path, value: &str) -> Result<(), LinkError> {
    std::fs::write(path, value).map_err(|source| LinkError::Sysctl {
        path: path.to_owned(),
        source,
    })
}

/// The pod end as configured inside the pod.
struct PodSide {
    ifindex: u32,
    mac: MacAddr,
}

/// Runs on the helper thread, inside the pod's namespace.
async fn configure_pod(spec: &EndpointLinkSpec, temporary: &str) -> Result<PodSide, LinkError> {
    let ifname = spec.pod_ifname.as_str();
    let handle = connect(ifname)?;
    let peer = link_by_name(&handle, temporary)
        .await?
        .ok_or_else(|| LinkError::Netlink {
            ifname: temporary.to_owned(),
            step: "finding the moved peer",
            source: io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    let index = peer.header.index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).name(ifname).build())
        .execute()
        .await
        .map_err(netlink(ifname, "renaming the pod interface"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(ifname, "setting the pod interface up"))?;
    if let Some(lo) = link_by_name(&handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(netlink("lo", "setting loopback up"))?;
    }
    handle
        .address()
        .add(index, IpAddr::V4(spec.pod_ip), 32)
        .execute()
        .await
        .map_err(netlink(ifname, "adding the pod address"))?;
    let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(spec.gateway, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(gateway_route)
        .execute()
        .await
        .map_err(netlink(ifname, "adding the route to the gateway"))?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(spec.gateway)
        .output_interface(index)
        .build();
    handle
        .route()
        .add(default_route)
        .execute()
        .await
        .map_err(netlink(ifname, "adding the default route"))?;
    let disable_ipv6 = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"));
    match std::fs::write(&disable_ipv6, "1") {
        // A kernel without IPv6 has nothing to switch off.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LinkError::Sysctl {
                path: disable_ipv6,
                source,
            });
        }
        Ok(()) => {}
    }
    let configured = link_by_name(&handle, ifname)
        .await?
        .ok_or_else(|| LinkError::Netlink {
            ifname: ifname.to_owned(),
            step: "reading the pod interface back",
            source: io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    Ok(PodSide {
        ifindex: index,
        mac: mac_of(&configured),
    })
}

/// Enters the pod's namespace on a fresh thread and configures the pod end there.
async fn in_pod_namespace(
    netns: File,
    spec: EndpointLinkSpec,
    temporary: String,
) -> Result<PodSide, LinkError> {
    let (tx, rx) = oneshot::channel();
    let path = spec.pod_netns.clone();
    let spawned = std::thread::Builder::new()
        .name("endpoint-netns".to_owned())
        .spawn(move || {
            let result = (|| {
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    LinkError::Netns {
                        path: spec.pod_netns.clone(),
                        source: io::Error::from(errno),
                    }
                })?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| LinkError::Netlink {
                        ifname: spec.pod_ifname.clone(),
                        step: "starting the pod-namespace runtime",
                        source,
                    })?;
                runtime.block_on(configure_pod(&spec, &temporary))
            })();
            // The receiver is gone only if the caller gave up; nothing to report to.
            let _ = tx.send(result);
        });
    if let Err(source) = spawned {
        return Err(LinkError::Netns { path, source });
    }
    rx.await.unwrap_or_else(|_| {
        Err(LinkError::Netns {
            path,
            source: io::Error::other("the pod-namespace thread ended without an answer"),
        })
    })
}

impl NetlinkLinks {
    /// Everything after the pair exists; the caller removes the pair if this fails.
    async fn configure(
        &self,
        handle: &Handle,
        spec: &EndpointLinkSpec,
        netns: File,
        temporary: &str,
    ) -> Result<EndpointLinkInfo, LinkError> {
        let host_name = spec.host_ifname.as_str();
        let host = link_by_name(handle, host_name)
            .await?
            .ok_or_else(|| LinkError::Netlink {
                ifname: host_name.to_owned(),
                step: "reading the new pair back",
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        let host_index = host.header.index;
        let peer = link_by_name(handle, temporary)
            .await?
            .ok_or_else(|| LinkError::Netlink {
                ifname: temporary.to_owned(),
                step: "reading the new pair back",
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer.header.index)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(temporary, "moving the peer into the pod namespace"))?;
        let pod = in_pod_namespace(netns, spec.clone(), temporary.to_owned()).await?;

        handle
            .link()
            .set(LinkUnspec::new_with_index(host_index).up().build())
            .execute()
            .await
            .map_err(netlink(host_name, "setting the host interface up"))?;
        let pod_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(spec.pod_ip, 32)
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .build();
        handle
            .route()
            .add(pod_route)
            .replace()
            .execute()
            .await
            .map_err(netlink(host_name, "adding the route to the pod"))?;
        handle
            .neighbours()
            .add(host_index, IpAddr::V4(spec.pod_ip))
            .link_layer_address(&pod.mac.0)
            .replace()
            .execute()
            .await
            .map_err(netlink(host_name, "adding the pod's neighbour entry"))?;
        write_sysctl(
            &PathBuf::from(format!("/proc/sys/net/ipv4/conf/{host_name}/rp_filter")),
            "0",
        )?;
        if !self.forwarding.load(Ordering::Relaxed) {
            write_sysctl(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
            self.forwarding.store(true, Ordering::Relaxed);
        }
        Ok(EndpointLinkInfo {
            host_ifname: spec.host_ifname.clone(),
            host_ifindex: host_index,
            host_mac: mac_of(&host),
            pod_mac: pod.mac,
            pod_ifindex: pod.ifindex,
            mtu: spec.mtu,
        })
    }
}

#[async_trait]
impl EndpointLinks for NetlinkLinks {
    async fn create(&self, spec: &EndpointLinkSpec) -> Result<EndpointLinkInfo, LinkError> {
        validate_ifname(&spec.host_ifname)?;
        validate_ifname(&spec.pod_ifname)?;
        let suffix = spec
            .host_ifname
            .get(TEMPORARY_PREFIX.len()..)
            .unwrap_or_default();
        let temporary = format!("{TEMPORARY_PREFIX}{suffix}");
        validate_ifname(&temporary)?;
        let netns = File::open(&spec.pod_netns).map_err(|source| LinkError::Netns {
            path: spec.pod_netns.clone(),
            source,
        })?;
        let handle = connect(&spec.host_ifname)?;
        if link_by_name(&handle, &spec.host_ifname).await?.is_some() {
            return Err(LinkError::Exists {
                ifname: spec.host_ifname.clone(),
            });
        }
        handle
            .link()
            .add(
                LinkVeth::new(&spec.host_ifname, &temporary)
                    .mtu(spec.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(&spec.host_ifname, "creating the veth pair"))?;
        match self.configure(&handle, spec, netns, &temporary).await {
            Ok(info) => {
                debug!(ifname = %info.host_ifname, ifindex = info.host_ifindex, "endpoint veth pair ready");
                Ok(info)
            }
            Err(err) => {
                // Removing either end removes the pair, wherever the peer is by now.
                if let Err(cleanup) = self.delete(&spec.host_ifname).await {
                    warn!(ifname = %spec.host_ifname, error = %cleanup, "could not remove a half-configured veth pair");
                }
                Err(err)
            }
        }
    }

    async fn delete(&self, host_ifname: &str) -> Result<bool, LinkError> {
        validate_ifname(host_ifname)?;
        let handle = connect(host_ifname)?;
        let Some(link) = link_by_name(&handle, host_ifname).await? else {
            return Ok(false);
        };
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(err) => {
                let err = to_io(err);
                if err.raw_os_error() == Some(libc::ENODEV) {
                    Ok(false)
                } else {
                    Err(LinkError::Netlink {
                        ifname: host_ifname.to_owned(),
                        step: "deleting the veth pair",
                        source: err,
                    })
                }
            }
        }
    }

    async fn get(&self, host_ifname: &str) -> Result<Option<EndpointLinkInfo>, LinkError> {
        validate_ifname(host_ifname)?;
        let handle = connect(host_ifname)?;
        let Some(link) = link_by_name(&handle, host_ifname).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        // The pod's MAC is on the node side too: in the permanent neighbour entry.
        let mut neighbours = handle.neighbours().get().execute();
        let mut pod_mac = MacAddr::default();
        while let Some(neighbour) = neighbours
            .try_next()
            .await
            .map_err(netlink(host_ifname, "listing neighbour entries"))?
        {
            if neighbour.header.ifindex != index {
                continue;
            }
            let lladdr = neighbour.attributes.iter().find_map(|attr| match attr {
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                _ => None,
            });
            if let Some(mac) = lladdr {
                pod_mac = MacAddr(mac);
                break;
            }
        }
        Ok(Some(EndpointLinkInfo {
            host_ifname: host_ifname.to_owned(),
            host_ifindex: index,
            host_mac: mac_of(&link),
            pod_mac,
            pod_ifindex: 0,
            mtu: mtu_of(&link),
        }))
    }
}
