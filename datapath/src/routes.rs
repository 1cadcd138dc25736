//! Routes to other nodes' pod CIDRs: how a packet for a pod on another node leaves this node.
//!
//! The node manager (`actors::node`) turns every peer node record into a [`NodeRoute`] and
//! drives a [`NodeRoutes`] directly. Routes, neighbour and FDB entries are kernel networking
//! state, not BPF maps, so they do not go through the Datapath actor (which stays the single
//! writer of every BPF map); nothing else programs them.
//!
//! Two [`RoutingMode`]s, fixed when the implementation is built (the agent's
//! `--routing-mode`):
//! - **Native**: `ip route replace <pod cidr> via <node ip>`, the pod CIDR routed over the
//!   underlay to the peer, which must be on-link.
//! - **Tunnel**: VXLAN on [`VXLAN_DEVICE`] (VNI [`VXLAN_VNI`], UDP port [`VXLAN_PORT`] like
//!   upstream's default, learning off), created on first use with a MAC derived from this
//!   node's IP ([`tunnel_mac`]), so every peer computes it without asking. Per peer: the route
//!   `<pod cidr> via <node ip> dev cilium_vxlan onlink`, a permanent neighbour entry
//!   `<node ip> lladdr <peer's tunnel MAC>` and an FDB entry `<peer's tunnel MAC> dst <node ip>`,
//!   so the kernel never floods or ARPs on the tunnel.
//!
//! Implementations: `NetlinkNodeRoutes` (feature `kernel`, rtnetlink in the caller's network
//! namespace, which for the agent is its node's) and `fake::FakeNodeRoutes` (feature
//! `test-util`, in memory, recording every call). Routes this module programs carry the
//! protocol [`ROUTE_PROTOCOL`], which is how [`NodeRoutes::list`] tells them from everyone
//! else's.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::api::MacAddr;

/// The tunnel device (upstream's name).
pub const VXLAN_DEVICE: &str = "cilium_vxlan";
/// The VNI every node uses on [`VXLAN_DEVICE`]; one value cluster-wide, since identities are
/// carried by the ipcache, not in the VNI.
pub const VXLAN_VNI: u32 = 2;
/// Upstream's default VXLAN port (the Linux one, not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;
/// The tunnel device's MTU: a 1500-byte underlay minus the 50 bytes of outer IPv4, UDP and
/// VXLAN headers, so encapsulated packets are never fragmented on the underlay.
pub const VXLAN_MTU: u32 = 1450;
/// The `rtm_protocol` of every route programmed here (a private value, as routing daemons
/// use), so listing and cleanup touch nothing they did not create.
pub const ROUTE_PROTOCOL: u8 = 0xc1;

/// The route to one peer node's pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRoute {
    pub pod_cidr: Ipv4Net,
    /// The peer's underlay address: the next hop, or the tunnel endpoint.
    pub node_ip: Ipv4Addr,
}

impl fmt::Display for NodeRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.pod_cidr, self.node_ip)
    }
}

/// How traffic to other nodes' pods travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Plain routes over the underlay.
    #[default]
    Native,
    /// VXLAN encapsulation on [`VXLAN_DEVICE`].
    Tunnel,
}

impl RoutingMode {
    /// The name used by `--routing-mode`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Native => "native",
            RoutingMode::Tunnel => "tunnel",
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--routing-mode` value that is neither `native` nor `tunnel`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown routing mode {input:?}, expected native or tunnel")]
pub struct RoutingModeParseError {
    pub input: String,
}

impl FromStr for RoutingMode {
    type Err = RoutingModeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(RoutingMode::Native),
            "tunnel" => Ok(RoutingMode::Tunnel),
            _ => Err(RoutingModeParseError {
                input: s.to_owned(),
            }),
        }
    }
}

/// The MAC of a node's [`VXLAN_DEVICE`]: `0a:c1` (locally administered, unicast) followed by
/// the node's IPv4 address, so a peer derives it from the node record alone.
pub fn tunnel_mac(node_ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = node_ip.octets();
    MacAddr([0x0a, 0xc1, a, b, c, d])
}

/// A failed route operation, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket failed")]
    Socket(#[source] io::Error),
    #[error("{step} for the route {route} failed")]
    Route {
        route: NodeRoute,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{step} for device {device} failed")]
    Device {
        device: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("listing the node routes failed")]
    List(#[source] io::Error),
    #[error("sysctl {path} could not be written")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The routes to other nodes' pod CIDRs. Object-safe (boxed `Send` futures through
/// `async-trait`), so the node manager holds an `Arc<dyn NodeRoutes>` and tests swap the kernel
/// out.
#[async_trait]
pub trait NodeRoutes: Send + Sync + fmt::Debug {
    /// The mode fixed at construction.
    fn mode(&self) -> RoutingMode;

    /// Installs the route to `route.pod_cidr` via `route.node_ip`, replacing any route of this
    /// module to the same CIDR (a peer that moved). Idempotent.
    async fn upsert(&self, route: &NodeRoute) -> Result<(), RouteError>;

    /// Removes the route to `route.pod_cidr` if it goes via `route.node_ip` (a route that was
    /// replaced meanwhile stays), and in tunnel mode the peer's neighbour and FDB entries once
    /// no route uses the peer any more. `Ok(false)` if there was no such route.
    async fn delete(&self, route: &NodeRoute) -> Result<bool, RouteError>;

    /// Every route this module programmed that the kernel holds (how a restarted agent finds
    /// routes of peers that vanished while it was away).
    async fn list(&self) -> Result<Vec<NodeRoute>, RouteError>;
}

#[cfg(feature = "kernel")]
pub use netlink::NetlinkNodeRoutes;

#[cfg(feature = "kernel")]
mod netlink {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    use async_trait::async_trait;
    use futures::TryStreamExt;
    use ipnet::Ipv4Net;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
    };
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
    use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
    use tracing::debug;

    use super::{
        NodeRoute, NodeRoutes, ROUTE_PROTOCOL, RouteError, RoutingMode, VXLAN_DEVICE, VXLAN_MTU,
        VXLAN_PORT, VXLAN_VNI, tunnel_mac,
    };

    /// [`NodeRoutes`] over rtnetlink, in the network namespace of the calling thread. See the
    /// module docs.
    #[derive(Debug)]
    pub struct NetlinkNodeRoutes {
        mode: RoutingMode,
        node_ip: Ipv4Addr,
    }

    impl NetlinkNodeRoutes {
        /// Routes in `mode`; `node_ip` is this node's underlay address, the source of tunnel
        /// packets and the seed of its tunnel MAC.
        pub fn new(mode: RoutingMode, node_ip: Ipv4Addr) -> Self {
            NetlinkNodeRoutes { mode, node_ip }
        }
    }

    fn to_io(err: rtnetlink::Error) -> io::Error {
        match err {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => io::Error::other(other.to_string()),
        }
    }

    fn is_errno(err: &io::Error, errno: i32) -> bool {
        err.raw_os_error() == Some(errno)
    }

    fn route_error(route: &NodeRoute, step: &'static str) -> impl FnOnce(io::Error) -> RouteError {
        let route = *route;
        move |source| RouteError::Route {
            route,
            step,
            source,
        }
    }

    fn device_error(step: &'static str) -> impl FnOnce(io::Error) -> RouteError {
        move |source| RouteError::Device {
            device: VXLAN_DEVICE.to_owned(),
            step,
            source,
        }
    }

    fn connect() -> Result<Handle, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(connection);
        Ok(handle)
    }

    /// The index of the tunnel device, `None` if it does not exist.
    async fn vxlan_index(handle: &Handle) -> Result<Option<u32>, RouteError> {
        let mut links = handle
            .link()
            .get()
            .match_name(VXLAN_DEVICE.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|link| link.header.index)),
            Err(err) => {
                let err = to_io(err);
                if is_errno(&err, libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(device_error("looking up the device")(err))
                }
            }
        }
    }

    /// Every route of [`ROUTE_PROTOCOL`] in the main table, with the kernel's message (what a
    /// delete has to name).
    async fn our_routes(handle: &Handle) -> Result<Vec<(NodeRoute, RouteMessage)>, RouteError> {
        let mut dump = handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut routes = Vec::new();
        while let Some(message) = dump
            .try_next()
            .await
            .map_err(|err| RouteError::List(to_io(err)))?
        {
            if let Some(route) = parse_route(&message) {
                routes.push((route, message));
            }
        }
        Ok(routes)
    }

    /// The [`NodeRoute`] behind a dumped route, if it is one of ours.
    fn parse_route(message: &RouteMessage) -> Option<NodeRoute> {
        let header = &message.header;
        if header.address_family != AddressFamily::Inet
            || header.table != RouteHeader::RT_TABLE_MAIN
            || u8::from(header.protocol) != ROUTE_PROTOCOL
        {
            return None;
        }
        let mut destination = None;
        let mut gateway = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                _ => {}
            }
        }
        let pod_cidr = Ipv4Net::new(destination?, header.destination_prefix_length).ok()?;
        Some(NodeRoute {
            pod_cidr,
            node_ip: gateway?,
        })
    }

    fn route_message(route: &NodeRoute, tunnel: Option<u32>) -> RouteMessage {
        let builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.pod_cidr.network(), route.pod_cidr.prefix_len())
            .gateway(route.node_ip)
            .protocol(ROUTE_PROTOCOL.into());
        match tunnel {
            // The peer is not on the tunnel's (address-less) link; `onlink` tells the kernel
            // to trust the neighbour entry instead of looking for a connected subnet.
            Some(index) => builder.output_interface(index).onlink().build(),
            None => builder.build(),
        }
    }

    fn write_sysctl(path: PathBuf, value: &str) -> Result<(), RouteError> {
        std::fs::write(&path, value).map_err(|source| RouteError::Sysctl { path, source })
    }

    impl NetlinkNodeRoutes {
        /// The tunnel device's index, creating the device (and switching `rp_filter` off on
        /// it: decapsulated packets arrive from pod CIDRs the device has no route back to) if
        /// it is missing.
        async fn ensure_vxlan(&self, handle: &Handle) -> Result<u32, RouteError> {
            if let Some(index) = vxlan_index(handle).await? {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(|err| device_error("setting the device up")(to_io(err)))?;
                return Ok(index);
            }
            let device = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .port(VXLAN_PORT)
                .learning(false)
                .local(self.node_ip)
                .mtu(VXLAN_MTU)
                .address(tunnel_mac(self.node_ip).0.to_vec())
                .up()
                .build();
            match handle.link().add(device).execute().await {
                Ok(()) => {}
                // Created concurrently by another caller: use that one.
                Err(err) => {
                    let err = to_io(err);
                    if !is_errno(&err, libc::EEXIST) {
                        return Err(device_error("creating the device")(err));
                    }
                }
            }
            let index = vxlan_index(handle).await?.ok_or_else(|| {
                device_error("reading the new device back")(io::Error::from_raw_os_error(
                    libc::ENODEV,
                ))
            })?;
            write_sysctl(
                PathBuf::from(format!("/proc/sys/net/ipv4/conf/{VXLAN_DEVICE}/rp_filter")),
                "0",
            )?;
            debug!(device = VXLAN_DEVICE, index, "tunnel device created");
            Ok(index)
        }

        /// Removes the peer's neighbour and FDB entries on the tunnel device; missing entries
        /// are fine.
        async fn forget_peer(
            &self,
            handle: &Handle,
            index: u32,
            route: &NodeRoute,
        ) -> Result<(), RouteError> {
            let mut neighbour = NeighbourMessage::default();
            neighbour.header.family = AddressFamily::Inet;
            neighbour.header.ifindex = index;
            neighbour
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    route.node_ip,
                )));
            let mut fdb = NeighbourMessage::default();
            fdb.header.family = AddressFamily::Bridge;
            fdb.header.ifindex = index;
            fdb.header.flags = NeighbourFlags::Own;
            fdb.attributes.push(NeighbourAttribute::LinkLayerAddress(
                tunnel_mac(route.node_ip).0.to_vec(),
            ));
            fdb.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    route.node_ip,
                )));
            for (message, step) in [
                (neighbour, "deleting the peer's neighbour entry"),
                (fdb, "deleting the peer's FDB entry"),
            ] {
                if let Err(err) = handle.neighbours().del(message).execute().await {
                    let err = to_io(err);
                    if !is_errno(&err, libc::ENOENT) {
                        return Err(route_error(route, step)(err));
                    }
                }
            }
            Ok(())
        }
    }

    #[async_trait]
    impl NodeRoutes for NetlinkNodeRoutes {
        fn mode(&self) -> RoutingMode {
            self.mode
        }

        async fn upsert(&self, route: &NodeRoute) -> Result<(), RouteError> {
            let handle = connect()?;
            let tunnel = match self.mode {
                RoutingMode::Native => None,
                RoutingMode::Tunnel => {
                    let index = self.ensure_vxlan(&handle).await?;
                    let mac = tunnel_mac(route.node_ip).0;
                    handle
                        .neighbours()
                        .add(index, IpAddr::V4(route.node_ip))
                        .link_layer_address(&mac)
                        .replace()
                        .execute()
                        .await
                        .map_err(|err| {
                            route_error(route, "adding the peer's neighbour entry")(to_io(err))
                        })?;
                    handle
                        .neighbours()
                        .add_bridge(index, &mac)
                        .destination(IpAddr::V4(route.node_ip))
                        .flags(NeighbourFlags::Own)
                        .replace()
                        .execute()
                        .await
                        .map_err(|err| {
                            route_error(route, "adding the peer's FDB entry")(to_io(err))
                        })?;
                    Some(index)
                }
            };
            handle
                .route()
                .add(route_message(route, tunnel))
                .replace()
                .execute()
                .await
                .map_err(|err| route_error(route, "replacing the route")(to_io(err)))?;
            debug!(%route, mode = %self.mode, "node route installed");
            Ok(())
        }

        async fn delete(&self, route: &NodeRoute) -> Result<bool, RouteError> {
            let handle = connect()?;
            let routes = our_routes(&handle).await?;
            let mut deleted = false;
            for (found, message) in &routes {
                if found != route {
                    continue;
                }
                match handle.route().del(message.clone()).execute().await {
                    Ok(()) => deleted = true,
                    Err(err) => {
                        let err = to_io(err);
                        if !is_errno(&err, libc::ESRCH) {
                            return Err(route_error(route, "deleting the route")(err));
                        }
                    }
                }
            }
            let still_used = routes
                .iter()
                .any(|(other, _)| other != route && other.node_ip == route.node_ip);
            if self.mode == RoutingMode::Tunnel
                && !still_used
                && let Some(index) = vxlan_index(&handle).await?
            {
                self.forget_peer(&handle, index, route).await?;
            }
            Ok(deleted)
        }

        async fn list(&self) -> Result<Vec<NodeRoute>, RouteError> {
            let handle = connect()?;
            let mut routes: Vec<NodeRoute> = our_routes(&handle)
                .await?
                .into_iter()
                .map(|(route, _)| route)
                .collect();
            routes.sort();
            routes.dedup();
            Ok(routes)
        }
    }
}

/// An in-memory [`NodeRoutes`] for actor tests and the simulation (feature `test-util`).
///
/// It holds what the kernel would (one route per pod CIDR) with the netlink implementation's
/// semantics: upsert replaces the route of a CIDR, delete removes it only if it still goes via
/// the given node. Every call is recorded; faults fail the next N calls of an operation.
/// Clones share state, so a test inspects what the actor's handle did.
#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    use std::collections::BTreeMap;
    use std::io;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    use async_trait::async_trait;
    use ipnet::Ipv4Net;

    use super::{NodeRoute, NodeRoutes, RouteError, RoutingMode};

    /// Which operation a fault is injected into.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum RouteFault {
        Upsert,
        Delete,
        List,
    }

    /// One recorded call, failed ones included.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RouteCall {
        Upsert(NodeRoute),
        Delete(NodeRoute),
        List,
    }

    #[derive(Debug, Default)]
    struct Inner {
        routes: BTreeMap<Ipv4Net, Ipv4Addr>,
        calls: Vec<RouteCall>,
        faults: BTreeMap<RouteFault, usize>,
    }

    impl Inner {
        fn take_fault(&mut self, fault: RouteFault, route: NodeRoute) -> Result<(), RouteError> {
            match self.faults.get_mut(&fault) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    let source = io::Error::other(format!("{fault:?} fault injected"));
                    Err(match fault {
                        RouteFault::List => RouteError::List(source),
                        RouteFault::Upsert | RouteFault::Delete => RouteError::Route {
                            route,
                            step: "injected fault",
                            source,
                        },
                    })
                }
                _ => Ok(()),
            }
        }
    }

    /// The recording fake. See the module docs.
    #[derive(Debug, Clone)]
    pub struct FakeNodeRoutes {
        mode: RoutingMode,
        inner: Arc<Mutex<Inner>>,
    }

    impl FakeNodeRoutes {
        pub fn new(mode: RoutingMode) -> Self {
            FakeNodeRoutes {
                mode,
                inner: Arc::default(),
            }
        }

        fn lock(&self) -> MutexGuard<'_, Inner> {
            self.inner.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Makes the next `n` calls of `fault`'s operation fail.
        pub fn fail_next(&self, fault: RouteFault, n: usize) {
            self.lock().faults.insert(fault, n);
        }

        /// The routes installed now, by pod CIDR.
        pub fn routes(&self) -> Vec<NodeRoute> {
            self.lock()
                .routes
                .iter()
                .map(|(pod_cidr, node_ip)| NodeRoute {
                    pod_cidr: *pod_cidr,
                    node_ip: *node_ip,
                })
                .collect()
        }

        /// Every call so far, in order.
        pub fn calls(&self) -> Vec<RouteCall> {
            self.lock().calls.clone()
        }

        /// Installs a route behind the caller's back (left by a previous agent).
        pub fn preinstall(&self, route: NodeRoute) {
            self.lock().routes.insert(route.pod_cidr, route.node_ip);
        }
    }

    #[async_trait]
    impl NodeRoutes for FakeNodeRoutes {
        fn mode(&self) -> RoutingMode {
            self.mode
        }

        async fn upsert(&self, route: &NodeRoute) -> Result<(), RouteError> {
            let mut inner = self.lock();
            inner.calls.push(RouteCall::Upsert(*route));
            inner.take_fault(RouteFault::Upsert, *route)?;
            inner.routes.insert(route.pod_cidr, route.node_ip);
            Ok(())
        }

        async fn delete(&self, route: &NodeRoute) -> Result<bool, RouteError> {
            let mut inner = self.lock();
            inner.calls.push(RouteCall::Delete(*route));
            inner.take_fault(RouteFault::Delete, *route)?;
            if inner.routes.get(&route.pod_cidr) == Some(&route.node_ip) {
                inner.routes.remove(&route.pod_cidr);
                Ok(true)
            } else {
                Ok(false)
            }
        }

        async fn list(&self) -> Result<Vec<NodeRoute>, RouteError> {
            let listed = {
                let mut inner = self.lock();
                inner.calls.push(RouteCall::List);
                let placeholder = NodeRoute {
                    pod_cidr: Ipv4Net::default(),
                    node_ip: Ipv4Addr::UNSPECIFIED,
                };
                inner.take_fault(RouteFault::List, placeholder)?;
                inner.routes.clone()
            };
            Ok(listed
                .into_iter()
                .map(|(pod_cidr, node_ip)| NodeRoute { pod_cidr, node_ip })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeNodeRoutes, RouteCall, RouteFault};
    use super::*;

    fn route(cidr: &str, ip: &str) -> NodeRoute {
        NodeRoute {
            pod_cidr: cidr.parse().unwrap(),
            node_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn tunnel_mac_is_derived_from_the_node_ip() {
        let mac = tunnel_mac(Ipv4Addr::new(192, 168, 50, 2));
        assert_eq!(mac.to_string(), "0a:c1:c0:a8:32:02");
        // Locally administered, unicast.
        assert_eq!(mac.0[0] & 0b11, 0b10);
        assert_ne!(tunnel_mac(Ipv4Addr::new(192, 168, 50, 3)), mac);
    }

    #[test]
    fn routing_mode_round_trips_its_flag_value() {
        for mode in [RoutingMode::Native, RoutingMode::Tunnel] {
            assert_eq!(mode.as_str().parse::<RoutingMode>().unwrap(), mode);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
        }
        let err = "vxlan".parse::<RoutingMode>().unwrap_err();
        assert_eq!(err.input, "vxlan");
        assert!(err.to_string().contains("\"vxlan\""), "{err}");
    }

    #[tokio::test]
    async fn fake_replaces_per_cidr_and_deletes_only_the_matching_route() {
        let routes = FakeNodeRoutes::new(RoutingMode::Tunnel);
        let a = route("10.0.2.0/24", "192.168.50.2");
        let moved = route("10.0.2.0/24", "192.168.50.9");
        routes.upsert(&a).await.unwrap();
        routes.upsert(&a).await.unwrap();
        routes.upsert(&moved).await.unwrap();
        assert_eq!(routes.routes(), [moved]);
        // The stale route is gone already; deleting it leaves the replacement alone.
        assert!(!routes.delete(&a).await.unwrap());
        assert_eq!(routes.list().await.unwrap(), [moved]);
        assert!(routes.delete(&moved).await.unwrap());
        assert!(routes.routes().is_empty());

        routes.fail_next(RouteFault::Upsert, 1);
        assert!(matches!(
            routes.upsert(&a).await,
            Err(RouteError::Route { route, .. }) if route == a
        ));
        routes.upsert(&a).await.unwrap();
        assert_eq!(routes.routes(), [a]);
        assert_eq!(routes.calls().first(), Some(&RouteCall::Upsert(a)));
        assert_eq!(routes.mode(), RoutingMode::Tunnel);
    }
}
