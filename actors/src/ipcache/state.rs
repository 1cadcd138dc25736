//! The ipcache as a pure state machine: every source's claim on every prefix, the effective
//! entry per prefix, and the effects a change has on the datapath and the kvstore.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;

use datapath::api::{IpcacheKey, RemoteEndpointInfo};
use ipnet::IpNet;
use kvstore::keys::{IpCacheEntry, IpMask, NamedPort};
use model::collections::compact_grown;
use model::identity::{ClusterId, NumericIdentity};
use serde::{Deserialize, Serialize};

use super::messages::{DumpEntry, Effective};
use super::source::Source;

/// Kubernetes metadata of the pod behind an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sMetadata {
    pub namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
}

/// What one source says about one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpEntry {
    pub identity: NumericIdentity,
    /// The node hosting the address; traffic to it is tunnelled there unless it is this node.
    pub host_ip: Option<IpAddr>,
    /// The hosting node's encryption key index, 0 for none.
    #[serde(default)]
    pub encrypt_key: u8,
    #[serde(default)]
    pub k8s: Option<K8sMetadata>,
    /// Free-form owner description (upstream writes the global endpoint id here).
    #[serde(default)]
    pub metadata: String,
}

impl IpEntry {
    /// An entry carrying only an identity.
    pub fn identity(identity: NumericIdentity) -> Self {
        IpEntry {
            identity,
            host_ip: None,
            encrypt_key: 0,
            k8s: None,
            metadata: String::new(),
        }
    }
}

/// What a change asks of the outside world, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The datapath entry of a prefix is new or different.
    Upsert(IpcacheKey, RemoteEndpointInfo),
    /// No source claims the prefix any more.
    Delete(IpcacheKey),
    /// This node's own claim to publish in the kvstore changed.
    Publish(IpCacheEntry),
    /// This node no longer claims the prefix: remove its kvstore key (the key name below the
    /// ipcache prefix).
    Unpublish(String),
}

/// Configuration the state needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpCacheSettings {
    /// This node's address: an entry hosted here needs no tunnel endpoint.
    pub node_ip: Option<IpAddr>,
    /// Whether `local` claims are published to the kvstore.
    pub publish_local: bool,
}

/// An [`IpEntry`] as the state keeps it. A node's ipcache holds one claim per address of the
/// cluster (of the mesh), so the claim is what a simulation of thousands of nodes multiplies
/// by millions: the datapath-relevant fields stay inline (they are read on every change), the
/// rest (Kubernetes metadata, the free-form owner) is packed into one byte string, absent for
/// entries without any and inline when short. 48 bytes and usually no allocation, against 144
/// bytes and three allocations for an `IpEntry` of a pod.
///
/// ClusterMesh's import keeps every remote cluster's entries in this form too, for the same
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedEntry {
    identity: NumericIdentity,
    host_ip: Option<IpAddr>,
    encrypt_key: u8,
    /// [`pack_extra`] of the k8s metadata and the owner.
    extra: Extra,
}

impl PackedEntry {
    pub fn pack(entry: IpEntry) -> Self {
        PackedEntry {
            identity: entry.identity,
            host_ip: entry.host_ip,
            encrypt_key: entry.encrypt_key,
            extra: pack_extra(entry.k8s.as_ref(), &entry.metadata),
        }
    }

    pub fn unpack(&self) -> IpEntry {
        let (k8s, metadata) = self.extra.as_bytes().map(unpack_extra).unwrap_or_default();
        IpEntry {
            identity: self.identity,
            host_ip: self.host_ip,
            encrypt_key: self.encrypt_key,
            k8s,
            metadata,
        }
    }
}

/// Bytes of an [`Extra`] kept inline: a namespace and a pod name of up to 17 characters
/// together (`default` and `pod-123456`). With the length and the tag that is 24 bytes, the
/// size of the boxed form.
const EXTRA_INLINE: usize = 22;

/// The packed extra fields of a claim: none, inline, or on the heap. Equal contents always
/// take the same form, so the derived equality compares contents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Extra {
    None,
    Inline(u8, [u8; EXTRA_INLINE]),
    Heap(Box<[u8]>),
}

impl Extra {
    fn new(bytes: Vec<u8>) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= EXTRA_INLINE => {
                let mut inline = [0; EXTRA_INLINE];
                if let Some(head) = inline.get_mut(..bytes.len()) {
                    head.copy_from_slice(&bytes);
                }
                Extra::Inline(len, inline)
            }
            _ => Extra::Heap(bytes.into_boxed_slice()),
        }
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Extra::None => None,
            Extra::Inline(len, bytes) => bytes.get(..usize::from(*len)),
            Extra::Heap(bytes) => Some(bytes),
        }
    }
}

/// Writes a length as LEB128: one byte for the short strings of pod names and namespaces.
fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// The k8s metadata (flag, namespace, pod, service account, named ports if any) and the owner,
/// length-prefixed one after the other. [`Extra::None`] when there is nothing to keep.
fn pack_extra(k8s: Option<&K8sMetadata>, metadata: &str) -> Extra {
    if k8s.is_none() && metadata.is_empty() {
        return Extra::None;
    }
    let mut out = Vec::new();
    match k8s {
        None => out.push(0),
        Some(k8s) => {
            // 1: k8s metadata without named ports (the usual case, one byte shorter).
            let ports = !k8s.named_ports.is_empty();
            out.push(if ports { 2 } else { 1 });
            put_str(&mut out, &k8s.namespace);
            put_str(&mut out, &k8s.pod_name);
            put_str(&mut out, &k8s.service_account);
            if ports {
                put_len(&mut out, k8s.named_ports.len());
            }
            for port in &k8s.named_ports {
                put_str(&mut out, &port.name);
                out.extend_from_slice(&port.port.to_le_bytes());
                put_str(&mut out, &port.protocol);
            }
        }
    }
    put_str(&mut out, metadata);
    Extra::new(out)
}

/// Reads what [`pack_extra`] wrote.
struct Unpacker<'a>(&'a [u8]);

impl<'a> Unpacker<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }

    fn len(&mut self) -> Option<usize> {
        let mut len = 0usize;
        for shift in (0..usize::BITS).step_by(7) {
            let byte = self.byte()?;
            len |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(len);
            }
        }
        None
    }

    fn string(&mut self) -> Option<String> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]))
    }

    fn extra(&mut self) -> Option<(Option<K8sMetadata>, String)> {
        let k8s = match self.byte()? {
            0 => None,
            flag => {
                let namespace = self.string()?;
                let pod_name = self.string()?;
                let service_account = self.string()?;
                let count = if flag == 2 { self.len()? } else { 0 };
                let mut named_ports = Vec::new();
                for _ in 0..count {
                    named_ports.push(NamedPort {
                        name: self.string()?,
                        port: self.u16()?,
                        protocol: self.string()?,
                    });
                }
                Some(K8sMetadata {
                    namespace,
                    pod_name,
                    service_account,
                    named_ports,
                })
            }
        };
        Some((k8s, self.string()?))
    }
}

/// The inverse of [`pack_extra`]. The bytes never leave the state, so they always read back;
/// the fallback is for the impossible case only.
fn unpack_extra(bytes: &[u8]) -> (Option<K8sMetadata>, String) {
    Unpacker(bytes).extra().unwrap_or_default()
}

/// The claims on one prefix, in precedence order (the first is effective). Almost every
/// prefix has exactly one claim, kept inline in the map's node; several go to a sorted vector.
/// (A map per prefix showed as ~1.6 kB per entry when importing 100k entries from a remote
/// cluster; a vector per prefix still cost an allocation of ~150 bytes per entry.)
#[derive(Debug, Clone)]
enum Claims {
    One((Source, PackedEntry)),
    /// At least two claims, sorted by source.
    Many(Vec<(Source, PackedEntry)>),
}

impl Claims {
    fn new(source: Source, stored: PackedEntry) -> Self {
        Claims::One((source, stored))
    }

    fn as_slice(&self) -> &[(Source, PackedEntry)] {
        match self {
            Claims::One(claim) => std::slice::from_ref(claim),
            Claims::Many(claims) => claims,
        }
    }

    fn position(&self, source: &Source) -> Result<usize, usize> {
        self.as_slice().binary_search_by(|(s, _)| s.cmp(source))
    }

    fn get(&self, source: &Source) -> Option<&PackedEntry> {
        let i = self.position(source).ok()?;
        self.as_slice().get(i).map(|(_, stored)| stored)
    }

    fn contains_key(&self, source: &Source) -> bool {
        self.position(source).is_ok()
    }

    fn insert(&mut self, source: Source, stored: PackedEntry) {
        match self {
            Claims::One((s, existing)) if *s == source => *existing = stored,
            Claims::One(_) => {
                let Claims::One(first) = std::mem::replace(self, Claims::Many(Vec::new())) else {
                    return;
                };
                let mut claims = Vec::with_capacity(2);
                claims.push(first);
                let at = usize::from(claims.iter().any(|(s, _)| *s < source));
                claims.insert(at, (source, stored));
                *self = Claims::Many(claims);
            }
            Claims::Many(claims) => match claims.binary_search_by(|(s, _)| s.cmp(&source)) {
                Ok(i) => {
                    if let Some(slot) = claims.get_mut(i) {
                        slot.1 = stored;
                    }
                }
                Err(i) => claims.insert(i, (source, stored)),
            },
        }
    }

    /// Removes `source`'s claim; `true` when no claim is left (the caller drops the prefix).
    fn remove(&mut self, source: &Source) -> (Option<PackedEntry>, bool) {
        match self {
            Claims::One((s, _)) if s == source => {
                let Claims::One((_, stored)) = std::mem::replace(self, Claims::Many(Vec::new()))
                else {
                    return (None, false);
                };
                (Some(stored), true)
            }
            Claims::One(_) => (None, false),
            Claims::Many(claims) => {
                let Ok(i) = claims.binary_search_by(|(s, _)| s.cmp(source)) else {
                    return (None, claims.is_empty());
                };
                let (_, removed) = claims.remove(i);
                if claims.len() == 1
                    && let Some(last) = claims.pop()
                {
                    *self = Claims::One(last);
                }
                (Some(removed), false)
            }
        }
    }

    /// The effective claim.
    fn first(&self) -> Option<&(Source, PackedEntry)> {
        self.as_slice().first()
    }

    fn iter(&self) -> impl Iterator<Item = &(Source, PackedEntry)> {
        self.as_slice().iter()
    }
}

/// All claims, by prefix and source.
///
/// Invariant: the datapath holds, for every prefix with at least one claim, the datapath form
/// of its highest-precedence claim, and nothing for prefixes without claims.
#[derive(Debug, Clone, Default)]
pub struct IpCacheState {
    settings: IpCacheSettings,
    claims: BTreeMap<IpcacheKey, Claims>,
    /// The number of prefixes when `claims` was last rebuilt (see [`compact_grown`]).
    built: usize,
    /// Bumped by every change of a claim, so readers of a full copy (Hubble's enrichment)
    /// copy again only after something changed.
    generation: u64,
}

impl IpCacheState {
    pub fn new(settings: IpCacheSettings) -> Self {
        IpCacheState {
            settings,
            claims: BTreeMap::new(),
            built: 0,
            generation: 0,
        }
    }

    /// Changes so far; equal numbers mean equal claims.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records `source`'s claim on `key`. A claim of lower precedence than an existing one is
    /// kept (it takes over when the higher one goes) but changes nothing now.
    pub fn upsert(
        &mut self,
        key: IpcacheKey,
        source: Source,
        entry: IpEntry,
    ) -> (Effective, Vec<Effect>) {
        let before = self.datapath_value(&key);
        let mut effects = Vec::new();
        let publish = (source == Source::Local && self.settings.publish_local)
            .then(|| kvstore_entry(&key, &entry, self.settings.node_ip));
        let stored = PackedEntry::pack(entry);
        let previous = self.claims.get(&key).and_then(|claims| claims.get(&source));
        let changed = previous != Some(&stored);
        if let Some(published) = publish
            && changed
        {
            effects.push(Effect::Publish(published));
        }
        if changed {
            self.generation += 1;
        }
        let top = match self.claims.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(Claims::new(source, stored));
                compact_grown(&mut self.claims, &mut self.built);
                source
            }
            Entry::Occupied(mut slot) => {
                let claims = slot.get_mut();
                claims.insert(source, stored);
                claims.first().map_or(source, |(top, _)| *top)
            }
        };
        let effective = if top == source {
            Effective::Applied
        } else {
            Effective::ShadowedBy(top)
        };
        effects.extend(self.datapath_effect(key, before));
        (effective, effects)
    }

    /// Removes `source`'s claim on `key`; the next claim in precedence takes over. Removing a
    /// claim that does not exist changes nothing.
    pub fn delete(&mut self, key: IpcacheKey, source: Source) -> Vec<Effect> {
        let before = self.datapath_value(&key);
        let Some(claims) = self.claims.get_mut(&key) else {
            return Vec::new();
        };
        let (removed, empty) = claims.remove(&source);
        if empty {
            self.claims.remove(&key);
        }
        if removed.is_none() {
            return Vec::new();
        }
        self.generation += 1;
        let mut effects = Vec::new();
        if source == Source::Local && self.settings.publish_local {
            effects.push(Effect::Unpublish(prefix_name(&key)));
        }
        effects.extend(self.datapath_effect(key, before));
        effects
    }

    /// Removes every claim of `source` that `keep` rejects (a re-listed source dropping what it
    /// no longer has).
    pub fn retain_source(
        &mut self,
        source: Source,
        mut keep: impl FnMut(&IpcacheKey) -> bool,
    ) -> Vec<Effect> {
        let stale: Vec<IpcacheKey> = self
            .claims
            .iter()
            .filter(|(key, claims)| claims.contains_key(&source) && !keep(key))
            .map(|(key, _)| *key)
            .collect();
        stale
            .into_iter()
            .flat_map(|key| self.delete(key, source))
            .collect()
    }

    /// The effective claim on exactly `key`.
    pub fn get(&self, key: &IpcacheKey) -> Option<(Source, IpEntry)> {
        self.top(key)
            .map(|(source, stored)| (source, stored.unpack()))
    }

    fn top(&self, key: &IpcacheKey) -> Option<(Source, &PackedEntry)> {
        self.claims
            .get(key)
            .and_then(Claims::first)
            .map(|(source, stored)| (*source, stored))
    }

    /// The effective claim on the longest prefix of the local cluster containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpcacheKey, Source, IpEntry)> {
        let max_len = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=max_len).rev().find_map(|len| {
            let prefix = IpNet::new(ip, len).ok()?;
            let key = IpcacheKey::new(ClusterId::UNSET, prefix);
            self.get(&key).map(|(source, entry)| (key, source, entry))
        })
    }

    /// Every `local` claim in its kvstore form (to publish again after the lease changed).
    pub fn local_entries(&self) -> Vec<IpCacheEntry> {
        self.claims
            .iter()
            .filter_map(|(key, claims)| {
                claims
                    .get(&Source::Local)
                    .map(|stored| kvstore_entry(key, &stored.unpack(), self.settings.node_ip))
            })
            .collect()
    }

    /// Every prefix with its effective claim and the claims it shadows.
    pub fn dump(&self) -> Vec<DumpEntry> {
        self.claims
            .iter()
            .filter_map(|(key, claims)| {
                let mut iter = claims.iter();
                let (source, stored) = iter.next()?;
                Some(DumpEntry {
                    key: *key,
                    source: *source,
                    entry: stored.unpack(),
                    datapath: self.to_datapath(key, stored),
                    shadowed: iter.map(|(source, _)| *source).collect(),
                })
            })
            .collect()
    }

    /// The datapath form of an entry.
    fn to_datapath(&self, key: &IpcacheKey, entry: &PackedEntry) -> RemoteEndpointInfo {
        RemoteEndpointInfo {
            identity: entry.identity,
            tunnel_endpoint: entry
                .host_ip
                .filter(|ip| Some(*ip) != self.settings.node_ip),
            encrypt_key: entry.encrypt_key,
            skip_tunnel: false,
            remote_cluster: key.cluster_id() != ClusterId::UNSET,
        }
    }

    fn datapath_value(&self, key: &IpcacheKey) -> Option<RemoteEndpointInfo> {
        self.top(key)
            .map(|(_, stored)| self.to_datapath(key, stored))
    }

    /// The datapath effect of a change of `key`, if its datapath form changed.
    fn datapath_effect(
        &self,
        key: IpcacheKey,
        before: Option<RemoteEndpointInfo>,
    ) -> Option<Effect> {
        let after = self.datapath_value(&key);
        if after == before {
            return None;
        }
        Some(match after {
            Some(info) => Effect::Upsert(key, info),
            None => Effect::Delete(key),
        })
    }
}

/// The key name upstream uses below the ipcache prefix: the address for a host prefix,
/// `addr/len` otherwise.
pub fn prefix_name(key: &IpcacheKey) -> String {
    let prefix = key.prefix();
    if prefix.prefix_len() == prefix.max_prefix_len() {
        prefix.addr().to_string()
    } else {
        prefix.to_string()
    }
}

/// Parses a key name written by [`prefix_name`] (or by upstream) back into a prefix.
pub fn parse_prefix_name(name: &str) -> Option<IpNet> {
    if name.contains('/') {
        name.parse::<IpNet>().ok()
    } else {
        name.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// The kvstore form of this node's claim on `key`.
/// The kvstore form of a local claim. Endpoints hosted here carry no host IP of their own;
/// the published entry names this node as their host (upstream's `HostIP`), which is how
/// other nodes find the tunnel endpoint and ignore their own entries.
fn kvstore_entry(key: &IpcacheKey, entry: &IpEntry, node_ip: Option<IpAddr>) -> IpCacheEntry {
    let prefix = key.prefix();
    let host = prefix.prefix_len() == prefix.max_prefix_len();
    let k8s = entry.k8s.clone().unwrap_or_default();
    IpCacheEntry {
        ip: prefix.addr(),
        mask: (!host)
            .then(|| IpMask::from_prefix_len(prefix.prefix_len(), prefix.max_prefix_len()))
            .flatten(),
        host_ip: entry.host_ip.or(node_ip),
        id: entry.identity,
        encrypt_key: entry.encrypt_key,
        metadata: entry.metadata.clone(),
        k8s_namespace: k8s.namespace,
        k8s_pod_name: k8s.pod_name,
        k8s_service_account: k8s.service_account,
        named_ports: k8s.named_ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IpcacheKey {
        IpcacheKey::new(ClusterId::UNSET, s.parse().unwrap())
    }

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    fn state() -> IpCacheState {
        IpCacheState::new(IpCacheSettings {
            node_ip: Some("192.168.0.1".parse().unwrap()),
            publish_local: false,
        })
    }

    #[test]
    fn a_lower_source_never_overrides_and_takes_over_on_delete() {
        let mut state = state();
        let k = key("10.0.0.5/32");
        let (eff, effects) = state.upsert(k, Source::Local, IpEntry::identity(id(300)));
        assert_eq!(eff, Effective::Applied);
        assert_eq!(
            effects,
            [Effect::Upsert(k, RemoteEndpointInfo::identity(id(300)))]
        );
        let (eff, effects) = state.upsert(k, Source::KvStore, IpEntry::identity(id(400)));
        assert_eq!(eff, Effective::ShadowedBy(Source::Local));
        assert!(effects.is_empty());
        assert_eq!(
            state.get(&k).map(|(s, e)| (s, e.identity)),
            Some((Source::Local, id(300)))
        );

        let effects = state.delete(k, Source::Local);
        assert_eq!(
            effects,
            [Effect::Upsert(k, RemoteEndpointInfo::identity(id(400)))]
        );
        assert_eq!(state.delete(k, Source::KvStore), [Effect::Delete(k)]);
        assert!(state.delete(k, Source::KvStore).is_empty());
        assert!(state.dump().is_empty());
    }

    #[test]
    fn a_higher_source_replaces_and_deleting_a_shadowed_claim_changes_nothing() {
        let mut state = state();
        let k = key("10.0.0.0/24");
        state.upsert(k, Source::Generated, IpEntry::identity(id(16_777_217)));
        let (eff, effects) = state.upsert(k, Source::KubeApiServer, IpEntry::identity(id(7)));
        assert_eq!(eff, Effective::Applied);
        assert_eq!(
            effects,
            [Effect::Upsert(k, RemoteEndpointInfo::identity(id(7)))]
        );
        assert!(state.delete(k, Source::Generated).is_empty());
        let dump = state.dump();
        assert_eq!(dump.len(), 1);
        assert_eq!(dump[0].source, Source::KubeApiServer);
        assert!(dump[0].shadowed.is_empty());
    }

    #[test]
    fn only_datapath_visible_changes_reach_the_datapath() {
        let mut state = state();
        let k = key("10.0.0.7/32");
        let mut entry = IpEntry::identity(id(300));
        state.upsert(k, Source::Local, entry.clone());
        entry.k8s = Some(K8sMetadata {
            namespace: "default".into(),
            pod_name: "a".into(),
            ..K8sMetadata::default()
        });
        let (_, effects) = state.upsert(k, Source::Local, entry.clone());
        assert!(effects.is_empty(), "{effects:?}");
        // Hosted on this node: still no tunnel endpoint.
        entry.host_ip = Some("192.168.0.1".parse().unwrap());
        assert!(state.upsert(k, Source::Local, entry.clone()).1.is_empty());
        entry.host_ip = Some("192.168.0.2".parse().unwrap());
        let (_, effects) = state.upsert(k, Source::Local, entry);
        let Some(Effect::Upsert(_, info)) = effects.first() else {
            panic!("{effects:?}");
        };
        assert_eq!(info.tunnel_endpoint, Some("192.168.0.2".parse().unwrap()));
    }

    #[test]
    fn the_generation_moves_with_every_change_and_only_then() {
        let mut state = IpCacheState::new(IpCacheSettings::default());
        let k = key("10.0.0.9/32");
        let g0 = state.generation();
        state.upsert(k, Source::KvStore, IpEntry::identity(id(300)));
        let g1 = state.generation();
        assert!(g1 > g0);
        state.upsert(k, Source::KvStore, IpEntry::identity(id(300)));
        assert_eq!(
            state.generation(),
            g1,
            "the same claim again changes nothing"
        );
        state.delete(k, Source::Local);
        assert_eq!(
            state.generation(),
            g1,
            "deleting a claim that does not exist"
        );
        state.delete(k, Source::KvStore);
        assert!(state.generation() > g1);
    }

    #[test]
    fn published_local_claims_name_this_node_as_host() {
        let node: IpAddr = "192.168.0.1".parse().unwrap();
        let mut state = IpCacheState::new(IpCacheSettings {
            node_ip: Some(node),
            publish_local: true,
        });
        let (_, effects) = state.upsert(
            key("10.0.0.9/32"),
            Source::Local,
            IpEntry::identity(id(300)),
        );
        let Some(Effect::Publish(published)) = effects.first() else {
            panic!("{effects:?}");
        };
        assert_eq!(published.host_ip, Some(node));
        assert_eq!(state.local_entries()[0].host_ip, Some(node));
        // The datapath entry of a pod of this node still has no tunnel endpoint.
        let Some(Effect::Upsert(_, info)) = effects.get(1) else {
            panic!("{effects:?}");
        };
        assert_eq!(info.tunnel_endpoint, None);
    }

    #[test]
    fn local_claims_are_published_and_unpublished() {
        let mut state = IpCacheState::new(IpCacheSettings {
            node_ip: None,
            publish_local: true,
        });
        let host = key("10.0.0.9/32");
        let (_, effects) = state.upsert(host, Source::Local, IpEntry::identity(id(300)));
        assert!(matches!(&effects[0], Effect::Publish(e) if e.prefix_string() == "10.0.0.9"));
        // Same claim again: nothing to publish or apply.
        assert!(
            state
                .upsert(host, Source::Local, IpEntry::identity(id(300)))
                .1
                .is_empty()
        );
        let cidr = key("10.1.0.0/16");
        let (_, effects) = state.upsert(cidr, Source::Local, IpEntry::identity(id(301)));
        assert!(matches!(&effects[0], Effect::Publish(e) if e.prefix_string() == "10.1.0.0/16"));
        // Other sources are not published.
        let (_, effects) = state.upsert(
            key("10.2.0.1/32"),
            Source::KvStore,
            IpEntry::identity(id(302)),
        );
        assert!(effects.iter().all(|e| matches!(e, Effect::Upsert(..))));
        assert_eq!(state.local_entries().len(), 2);
        assert_eq!(
            state.delete(host, Source::Local),
            [Effect::Unpublish("10.0.0.9".into()), Effect::Delete(host)]
        );
    }

    #[test]
    fn lookup_finds_the_longest_prefix() {
        let mut state = state();
        state.upsert(
            key("10.0.0.0/8"),
            Source::Generated,
            IpEntry::identity(id(1 << 24 | 1)),
        );
        state.upsert(
            key("10.1.2.3/32"),
            Source::Local,
            IpEntry::identity(id(300)),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            state.lookup(ip("10.1.2.3")).map(|(_, _, e)| e.identity),
            Some(id(300))
        );
        assert_eq!(
            state.lookup(ip("10.9.9.9")).map(|(k, _, _)| k),
            Some(key("10.0.0.0/8"))
        );
        assert!(state.lookup(ip("11.0.0.1")).is_none());
    }

    #[test]
    fn retain_source_drops_stale_claims_of_one_source() {
        let mut state = state();
        let a = key("10.0.0.1/32");
        let b = key("10.0.0.2/32");
        state.upsert(a, Source::KvStore, IpEntry::identity(id(300)));
        state.upsert(b, Source::KvStore, IpEntry::identity(id(301)));
        state.upsert(b, Source::Local, IpEntry::identity(id(302)));
        let effects = state.retain_source(Source::KvStore, |k| *k == a);
        assert!(
            effects.is_empty(),
            "b's kvstore claim was shadowed: {effects:?}"
        );
        let effects = state.retain_source(Source::KvStore, |_| false);
        assert_eq!(effects, [Effect::Delete(a)]);
    }

    #[test]
    fn claims_are_kept_compact() {
        // One claim per address of the cluster on every node: what a simulation of 1000
        // nodes multiplies by 30 000. Growing these undoes that work.
        assert!(std::mem::size_of::<Extra>() <= 24);
        assert!(std::mem::size_of::<PackedEntry>() <= 48);
        assert!(std::mem::size_of::<Claims>() <= 56);
    }

    #[test]
    fn stored_entries_read_back_whole() {
        let full = IpEntry {
            identity: id(300),
            host_ip: Some("192.168.0.9".parse().unwrap()),
            encrypt_key: 3,
            k8s: Some(K8sMetadata {
                namespace: "default".into(),
                pod_name: "p".repeat(200),
                service_account: "sa".into(),
                named_ports: vec![
                    NamedPort {
                        name: "http".into(),
                        port: 8080,
                        protocol: "TCP".into(),
                    },
                    NamedPort::default(),
                ],
            }),
            metadata: "owner".into(),
        };
        let empty_k8s = IpEntry {
            k8s: Some(K8sMetadata::default()),
            ..IpEntry::identity(id(5))
        };
        let owner_only = IpEntry {
            metadata: "x".into(),
            ..IpEntry::identity(id(6))
        };
        for entry in [full, empty_k8s, owner_only, IpEntry::identity(id(7))] {
            let stored = PackedEntry::pack(entry.clone());
            assert_eq!(stored.unpack(), entry);
        }
        assert_eq!(
            PackedEntry::pack(IpEntry::identity(id(7))).extra,
            Extra::None
        );
        let pod = IpEntry {
            k8s: Some(K8sMetadata {
                namespace: "default".into(),
                pod_name: "pod-123456".into(),
                ..K8sMetadata::default()
            }),
            ..IpEntry::identity(id(8))
        };
        assert!(matches!(PackedEntry::pack(pod).extra, Extra::Inline(..)));
        assert_ne!(
            PackedEntry::pack(IpEntry::identity(id(5))),
            PackedEntry::pack(IpEntry {
                k8s: Some(K8sMetadata::default()),
                ..IpEntry::identity(id(5))
            }),
            "no k8s metadata differs from empty k8s metadata"
        );
        assert_eq!(unpack_extra(&[1, 200]), (None, String::new()));
    }

    #[test]
    fn claims_go_from_one_to_many_and_back_in_precedence_order() {
        let mut state = state();
        let k = key("10.0.0.8/32");
        state.upsert(k, Source::Generated, IpEntry::identity(id(1)));
        state.upsert(k, Source::KubeApiServer, IpEntry::identity(id(2)));
        state.upsert(k, Source::KvStore, IpEntry::identity(id(3)));
        let dump = state.dump();
        assert_eq!(dump[0].source, Source::KubeApiServer);
        assert_eq!(dump[0].shadowed, [Source::KvStore, Source::Generated]);
        state.delete(k, Source::KubeApiServer);
        state.delete(k, Source::Generated);
        assert_eq!(
            state.get(&k).map(|(s, e)| (s, e.identity)),
            Some((Source::KvStore, id(3)))
        );
        assert!(state.dump()[0].shadowed.is_empty());
        assert_eq!(state.delete(k, Source::KvStore), [Effect::Delete(k)]);
        assert!(state.get(&k).is_none());
        assert!(state.dump().is_empty());
    }

    #[test]
    fn prefix_names_round_trip() {
        for (k, name) in [
            ("10.0.0.1/32", "10.0.0.1"),
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("fd00::1/128", "fd00::1"),
        ] {
            assert_eq!(prefix_name(&key(k)), name);
            assert_eq!(parse_prefix_name(name), Some(k.parse().unwrap()));
        }
        assert_eq!(parse_prefix_name("nope"), None);
    }
}
