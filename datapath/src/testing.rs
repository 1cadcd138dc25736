//! The behavioural suite every [`Datapath`] implementation must pass (feature `test-util`): the
//! in-memory fake now, the aya implementation against real kernel maps, so the fake that actor
//! tests and the simulation rely on cannot drift from the kernel.
//!
//! Each case takes a fresh datapath (empty global maps, no policy maps, no attachments) and
//! panics with a message naming what differs. [`datapath_behaviour_tests!`] turns an
//! expression that builds a fresh datapath, and a function that gives an endpoint an
//! attachable interface, into one `#[test]` per case:
//!
//! ```text
//! datapath::testing::datapath_behaviour_tests!(
//!     datapath = FakeDatapath::new(),
//!     attachment = |endpoint| EndpointAttachment { endpoint, ifname: "lxc0".into(), netns: None },
//! );
//! ```
//!
//! Cases read state back through [`Datapath::list`], never through implementation internals.

use std::net::{Ipv4Addr, SocketAddrV4};

use model::identity::{ClusterId, NumericIdentity};

use crate::api::{
    Backend4Value, BackendId, BackendSelection, CtEntry, CtKey4, CtTupleFlags, Datapath,
    DatapathError, Direction, EndpointAttachment, EndpointId, EndpointInfo, EndpointKey, Frontend,
    IpcacheKey, MacAddr, MapKey, MapName, MapValue, PolicyEntry, PolicyKey, Protocol,
    RemoteEndpointInfo, RevNat4Value, RevNatId, Service4Key, Service4Value, ServiceFlags,
};

/// Expands to one `#[test]` per behavioural case. `datapath` is evaluated once per test and
/// must yield a fresh value implementing [`Datapath`]; `attachment` maps an endpoint id to an
/// attachment the implementation can really attach to.
#[doc(hidden)]
#[macro_export]
macro_rules! __datapath_behaviour_tests {
    (datapath = $make:expr, attachment = $attach:expr $(,)?) => {
        $crate::__datapath_behaviour_tests!(@cases $make;
            update_overwrite_delete_every_map_kind,
            list_returns_one_map_in_key_order,
            policy_map_lifecycle,
            policy_maps_are_independent,
            lpm_prefixes_are_distinct_entries,
            value_of_another_map_kind_is_rejected,
            full_policy_map_rejects_new_keys_only,
            full_endpoint_map_rejects_new_keys_only,
            conntrack_gc_removes_expired_entries,
        );
        #[test]
        fn attach_replace_detach() {
            let mut dp = $make;
            let attach: &dyn Fn($crate::api::EndpointId) -> $crate::api::EndpointAttachment =
                &$attach;
            $crate::testing::attach_replace_detach(&mut dp, attach);
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut dp = $make;
                $crate::testing::$case(&mut dp);
            }
        )*
    };
}

#[doc(inline)]
pub use crate::__datapath_behaviour_tests as datapath_behaviour_tests;

fn identity(n: u32) -> NumericIdentity {
    NumericIdentity::new(n)
}

fn ipcache_entry(prefix: &str, id: u32) -> (MapKey, MapValue) {
    let prefix = prefix
        .parse()
        .unwrap_or_else(|e| panic!("test prefix {prefix}: {e}"));
    (
        MapKey::Ipcache(IpcacheKey::new(ClusterId::UNSET, prefix)),
        MapValue::Ipcache(RemoteEndpointInfo::identity(identity(id))),
    )
}

fn lxc_entry(n: u32) -> (MapKey, MapValue) {
    let ip = Ipv4Addr::from(0x0a00_0000 | n);
    let lxc_id = EndpointId::new((n & 0xffff) as u16);
    (
        MapKey::Lxc(EndpointKey::new(ip.into())),
        MapValue::Lxc(EndpointInfo {
            ifindex: 10 + n,
            lxc_id,
            mac: MacAddr([0x0a, 0, 0, 0, (n >> 8) as u8, n as u8]),
            node_mac: MacAddr([0x0e, 0, 0, 0, 0, 1]),
            identity: identity(256 + n),
            is_host: false,
        }),
    )
}

fn policy_key(endpoint: EndpointId, key: PolicyKey) -> MapKey {
    MapKey::Policy { endpoint, key }
}

fn ct_key(protocol: Protocol, sport: u16) -> MapKey {
    MapKey::Conntrack(CtKey4 {
        daddr: Ipv4Addr::new(10, 0, 0, 1),
        saddr: Ipv4Addr::new(10, 0, 0, 2),
        dport: 80,
        sport,
        protocol,
        flags: CtTupleFlags::OUT,
    })
}

fn ct_value(lifetime: u32) -> MapValue {
    MapValue::Conntrack(CtEntry {
        lifetime,
        src_identity: identity(300),
        ..CtEntry::default()
    })
}

fn frontend() -> Frontend {
    Frontend::new(
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80),
        Protocol::TCP,
    )
}

/// Two different values per map kind, to write, overwrite and delete.
fn samples(endpoint: EndpointId) -> Vec<(MapKey, MapValue, MapValue)> {
    let (ip_key, ip_a) = ipcache_entry("10.1.0.0/16", 1000);
    let (_, ip_b) = ipcache_entry("10.1.0.0/16", 1001);
    let (lxc_key, lxc_a) = lxc_entry(5);
    let (_, lxc_b) = lxc_entry(6);
    let pkey = policy_key(
        endpoint,
        PolicyKey::port(identity(1000), Direction::Ingress, Protocol::TCP, 80)
            .unwrap_or_else(|e| panic!("policy key: {e}")),
    );
    let be = |port| {
        MapValue::Backend(Backend4Value::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 5), port),
            Protocol::TCP,
        ))
    };
    let svc = |slot| {
        MapKey::Service(Service4Key {
            frontend: frontend(),
            backend_slot: slot,
        })
    };
    let rev = |port| {
        MapValue::RevNat(RevNat4Value {
            frontend: SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), port),
        })
    };
    vec![
        (
            pkey,
            MapValue::Policy(PolicyEntry::allow()),
            MapValue::Policy(PolicyEntry {
                proxy_port: 15001,
                precedence: 7,
                cookie: 99,
                ..PolicyEntry::deny()
            }),
        ),
        (ip_key, ip_a, ip_b),
        (lxc_key, lxc_a, lxc_b),
        (
            svc(0),
            MapValue::Service(Service4Value::master(
                1,
                RevNatId::new(3),
                BackendSelection::Random,
                ServiceFlags::NONE,
            )),
            MapValue::Service(Service4Value::master(
                2,
                RevNatId::new(3),
                BackendSelection::Hash,
                ServiceFlags::ROUTABLE,
            )),
        ),
        (
            svc(1),
            MapValue::Service(Service4Value::slot(
                BackendId::new(1),
                RevNatId::new(3),
                ServiceFlags::NONE,
            )),
            MapValue::Service(Service4Value::slot(
                BackendId::new(2),
                RevNatId::new(3),
                ServiceFlags::NONE,
            )),
        ),
        (MapKey::Backend(BackendId::new(1)), be(8080), be(8081)),
        (MapKey::RevNat(RevNatId::new(3)), rev(80), rev(81)),
        (ct_key(Protocol::TCP, 40000), ct_value(100), ct_value(200)),
        (ct_key(Protocol::UDP, 40000), ct_value(100), ct_value(200)),
    ]
}

fn listed(dp: &dyn Datapath, map: MapName) -> Vec<(MapKey, MapValue)> {
    dp.list(map).unwrap_or_else(|e| panic!("list {map}: {e}"))
}

/// Every map kind: insert, read back, overwrite, delete, delete again.
pub fn update_overwrite_delete_every_map_kind(dp: &mut dyn Datapath) {
    let endpoint = EndpointId::new(11);
    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("create policy map: {e}"));
    for (key, a, b) in samples(endpoint) {
        let map = key.map();
        dp.update(&key, &a)
            .unwrap_or_else(|e| panic!("insert {key} into {map}: {e}"));
        assert_eq!(listed(dp, map), vec![(key, a)], "{map} after insert");
        dp.update(&key, &b)
            .unwrap_or_else(|e| panic!("overwrite {key} in {map}: {e}"));
        assert_eq!(listed(dp, map), vec![(key, b)], "{map} after overwrite");
        assert!(
            dp.delete(&key)
                .unwrap_or_else(|e| panic!("delete {key}: {e}")),
            "delete of present {key} in {map} reported absent"
        );
        assert!(listed(dp, map).is_empty(), "{map} after delete");
        assert!(
            !dp.delete(&key)
                .unwrap_or_else(|e| panic!("delete absent {key}: {e}")),
            "delete of absent {key} in {map} reported present"
        );
    }
}

/// `list` returns the entries of the map asked for, sorted by key, and nothing else.
pub fn list_returns_one_map_in_key_order(dp: &mut dyn Datapath) {
    let entries = [
        ipcache_entry("10.0.0.3/32", 3),
        ipcache_entry("10.0.0.1/32", 1),
        ipcache_entry("10.0.0.2/32", 2),
    ];
    for (key, value) in &entries {
        dp.update(key, value)
            .unwrap_or_else(|e| panic!("insert {key}: {e}"));
    }
    let (lxc_key, lxc_value) = lxc_entry(1);
    dp.update(&lxc_key, &lxc_value)
        .unwrap_or_else(|e| panic!("insert {lxc_key}: {e}"));
    let mut expected = entries.to_vec();
    expected.sort_by_key(|(key, _)| *key);
    assert_eq!(listed(dp, MapName::Ipcache), expected);
    assert_eq!(listed(dp, MapName::Lxc), vec![(lxc_key, lxc_value)]);
    assert!(listed(dp, MapName::Lb4Backends).is_empty());
}

/// Policy maps exist once created, keep their entries when created again, and are gone (with
/// their entries) once removed.
pub fn policy_map_lifecycle(dp: &mut dyn Datapath) {
    let endpoint = EndpointId::new(7);
    let missing = EndpointId::new(8);
    let key = policy_key(endpoint, PolicyKey::l3(identity(2), Direction::Egress));
    let value = MapValue::Policy(PolicyEntry::allow());
    assert_eq!(
        dp.policy_maps().ok(),
        Some(vec![]),
        "fresh datapath has policy maps"
    );

    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("create: {e}"));
    dp.update(&key, &value)
        .unwrap_or_else(|e| panic!("insert {key}: {e}"));
    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("create again: {e}"));
    assert_eq!(
        listed(dp, MapName::Policy(endpoint)),
        vec![(key, value)],
        "creating an existing policy map must keep its entries"
    );
    assert_eq!(dp.policy_maps().ok(), Some(vec![endpoint]));

    let stray = policy_key(missing, PolicyKey::l3(identity(2), Direction::Egress));
    assert!(
        matches!(
            dp.update(&stray, &value),
            Err(DatapathError::NoSuchMap { map: MapName::Policy(ep) }) if ep == missing
        ),
        "update into a missing policy map must fail with NoSuchMap"
    );
    assert!(
        matches!(dp.delete(&stray), Ok(false)),
        "delete from a missing policy map must report absent"
    );
    assert!(
        matches!(
            dp.list(MapName::Policy(missing)),
            Err(DatapathError::NoSuchMap { .. })
        ),
        "listing a missing policy map must fail with NoSuchMap"
    );

    assert!(matches!(dp.remove_policy_map(endpoint), Ok(true)), "remove");
    assert!(
        matches!(dp.remove_policy_map(endpoint), Ok(false)),
        "remove again"
    );
    assert_eq!(dp.policy_maps().ok(), Some(vec![]));
    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("recreate: {e}"));
    assert!(
        listed(dp, MapName::Policy(endpoint)).is_empty(),
        "a recreated policy map must start empty"
    );
}

/// The same policy key in two endpoints' maps are two entries.
pub fn policy_maps_are_independent(dp: &mut dyn Datapath) {
    let (a, b) = (EndpointId::new(1), EndpointId::new(2));
    let key = PolicyKey::protocol(identity(5000), Direction::Ingress, Protocol::UDP);
    for ep in [a, b] {
        dp.create_policy_map(ep)
            .unwrap_or_else(|e| panic!("create {ep}: {e}"));
        dp.update(
            &policy_key(ep, key),
            &MapValue::Policy(PolicyEntry::allow()),
        )
        .unwrap_or_else(|e| panic!("insert into {ep}: {e}"));
    }
    assert!(matches!(dp.delete(&policy_key(a, key)), Ok(true)));
    assert!(listed(dp, MapName::Policy(a)).is_empty());
    assert_eq!(listed(dp, MapName::Policy(b)).len(), 1);
    assert_eq!(dp.policy_maps().ok(), Some(vec![a, b]));
}

/// LPM keys that differ only in prefix length are different entries, and keys read back equal
/// the keys written (a port range is stored as its prefixes).
pub fn lpm_prefixes_are_distinct_entries(dp: &mut dyn Datapath) {
    let mut written = Vec::new();
    for (prefix, id) in [
        ("10.0.0.0/8", 1),
        ("10.0.0.0/16", 2),
        ("10.0.0.0/32", 3),
        ("0.0.0.0/0", 4),
    ] {
        let (key, value) = ipcache_entry(prefix, id);
        dp.update(&key, &value)
            .unwrap_or_else(|e| panic!("insert {key}: {e}"));
        written.push((key, value));
    }
    written.sort_by_key(|(key, _)| *key);
    assert_eq!(listed(dp, MapName::Ipcache), written);

    let endpoint = EndpointId::new(3);
    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("create: {e}"));
    let id = identity(4242);
    let mut keys = vec![
        PolicyKey::l3(id, Direction::Ingress),
        PolicyKey::l3(id, Direction::Egress),
        PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Ingress),
        PolicyKey::protocol(id, Direction::Ingress, Protocol::TCP),
    ];
    keys.extend(
        PolicyKey::port_range(id, Direction::Ingress, Protocol::TCP, 8080, 8090)
            .unwrap_or_else(|e| panic!("port range: {e}")),
    );
    let mut expected: Vec<(MapKey, MapValue)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let value = MapValue::Policy(PolicyEntry {
                cookie: i as u32,
                ..PolicyEntry::allow()
            });
            (policy_key(endpoint, *key), value)
        })
        .collect();
    for (key, value) in &expected {
        dp.update(key, value)
            .unwrap_or_else(|e| panic!("insert {key}: {e}"));
    }
    expected.sort_by_key(|(key, _)| *key);
    assert_eq!(listed(dp, MapName::Policy(endpoint)), expected);
}

/// A value of another map's kind is refused and nothing is written.
pub fn value_of_another_map_kind_is_rejected(dp: &mut dyn Datapath) {
    let (key, _) = ipcache_entry("10.0.0.1/32", 1);
    let result = dp.update(&key, &MapValue::Policy(PolicyEntry::allow()));
    assert!(
        matches!(
            result,
            Err(DatapathError::ValueKind {
                map: MapName::Ipcache,
                ..
            })
        ),
        "expected ValueKind, got {result:?}"
    );
    assert!(listed(dp, MapName::Ipcache).is_empty());
}

fn fill_then_check_full(
    dp: &mut dyn Datapath,
    map: MapName,
    entry: impl Fn(u32) -> (MapKey, MapValue),
) {
    let capacity = map.capacity();
    for n in 0..capacity {
        let (key, value) = entry(n);
        dp.update(&key, &value)
            .unwrap_or_else(|e| panic!("insert entry {n} of {capacity} into {map}: {e}"));
    }
    let (extra, extra_value) = entry(capacity);
    let result = dp.update(&extra, &extra_value);
    assert!(
        matches!(result, Err(DatapathError::MapFull { map: m, capacity: c }) if m == map && c == capacity),
        "a new key in full {map} must fail with MapFull, got {result:?}"
    );
    let (first, _) = entry(0);
    let (_, other_value) = entry(1);
    dp.update(&first, &other_value)
        .unwrap_or_else(|e| panic!("overwriting in full {map} must succeed: {e}"));
    assert!(matches!(dp.delete(&first), Ok(true)));
    dp.update(&extra, &extra_value)
        .unwrap_or_else(|e| panic!("insert after a delete in {map}: {e}"));
    assert_eq!(listed(dp, map).len(), capacity as usize);
}

/// A full policy map refuses new keys but accepts overwrites, and has room again after a delete.
pub fn full_policy_map_rejects_new_keys_only(dp: &mut dyn Datapath) {
    let endpoint = EndpointId::new(9);
    dp.create_policy_map(endpoint)
        .unwrap_or_else(|e| panic!("create: {e}"));
    fill_then_check_full(dp, MapName::Policy(endpoint), |n| {
        // Two distinct keys per identity: an L3 egress entry and an L4 ingress entry.
        let key = if n % 2 == 0 {
            PolicyKey::protocol(identity(n / 2), Direction::Ingress, Protocol::TCP)
        } else {
            PolicyKey::l3(identity(n / 2), Direction::Egress)
        };
        (
            policy_key(endpoint, key),
            MapValue::Policy(PolicyEntry {
                cookie: n,
                ..PolicyEntry::allow()
            }),
        )
    });
}

/// A full `cilium_lxc` refuses new keys but accepts overwrites.
pub fn full_endpoint_map_rejects_new_keys_only(dp: &mut dyn Datapath) {
    fill_then_check_full(dp, MapName::Lxc, lxc_entry);
}

/// Garbage collection removes entries whose lifetime is in the past, in both conntrack maps,
/// and keeps live ones.
pub fn conntrack_gc_removes_expired_entries(dp: &mut dyn Datapath) {
    let mut alive = Vec::new();
    for protocol in [Protocol::TCP, Protocol::UDP] {
        dp.update(&ct_key(protocol, 1), &ct_value(0))
            .unwrap_or_else(|e| panic!("insert expired {protocol} entry: {e}"));
        let live = (ct_key(protocol, 2), ct_value(u32::MAX));
        dp.update(&live.0, &live.1)
            .unwrap_or_else(|e| panic!("insert live {protocol} entry: {e}"));
        alive.push(live);
    }
    let stats = dp.conntrack_gc().unwrap_or_else(|e| panic!("gc: {e}"));
    assert_eq!((stats.deleted, stats.alive), (2, 2), "gc stats");
    assert_eq!(listed(dp, MapName::Ct4Global), vec![alive[0]]);
    assert_eq!(listed(dp, MapName::CtAny4Global), vec![alive[1]]);
}

/// Attaching twice replaces the first attachment; detaching is idempotent.
pub fn attach_replace_detach(
    dp: &mut dyn Datapath,
    attachment: &dyn Fn(EndpointId) -> EndpointAttachment,
) {
    let endpoint = EndpointId::new(21);
    let att = attachment(endpoint);
    dp.attach_endpoint(&att)
        .unwrap_or_else(|e| panic!("attach: {e}"));
    dp.attach_endpoint(&att)
        .unwrap_or_else(|e| panic!("attach again (replace): {e}"));
    assert!(matches!(dp.detach_endpoint(endpoint), Ok(true)), "detach");
    assert!(
        matches!(dp.detach_endpoint(endpoint), Ok(false)),
        "detach again"
    );
}
