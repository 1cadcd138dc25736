//! The ipcache as a pure state machine: every source's claim on every prefix, the effective
//! entry per prefix, and the effects a change has on the datapath and the kvstore.

use std::collections::BTreeMap;
use std::net::IpAddr;

use datapath::api::{IpcacheKey, RemoteEndpointInfo};
use ipnet::IpNet;
use kvstore::keys::{IpCacheEntry, IpMask, NamedPort};
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

/// The claims on one prefix, in precedence order (the first is effective). Almost every
/// prefix has exactly one claim: a sorted vector costs one small allocation per prefix where a
/// map would allocate a whole tree node (which showed as ~1.6 kB per entry when importing 100k
/// entries from a remote cluster).
#[derive(Debug, Clone, Default)]
struct Claims(Vec<(Source, IpEntry)>);

impl Claims {
    fn position(&self, source: &Source) -> Result<usize, usize> {
        self.0.binary_search_by(|(s, _)| s.cmp(source))
    }

    fn get(&self, source: &Source) -> Option<&IpEntry> {
        self.position(source).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, source: &Source) -> bool {
        self.position(source).is_ok()
    }

    fn insert(&mut self, source: Source, entry: IpEntry) {
        match self.position(&source) {
            Ok(i) => self.0[i].1 = entry,
            Err(i) => {
                // Grow one slot at a time: a first insert would otherwise reserve four.
                self.0.reserve_exact(1);
                self.0.insert(i, (source, entry));
            }
        }
    }

    fn remove(&mut self, source: &Source) -> Option<IpEntry> {
        let i = self.position(source).ok()?;
        Some(self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &Source> {
        self.0.iter().map(|(source, _)| source)
    }

    fn iter(&self) -> impl Iterator<Item = (&Source, &IpEntry)> {
        self.0.iter().map(|(source, entry)| (source, entry))
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
    /// Bumped by every change of a claim, so readers of a full copy (Hubble's enrichment)
    /// copy again only after something changed.
    generation: u64,
}

impl IpCacheState {
    pub fn new(settings: IpCacheSettings) -> Self {
        IpCacheState {
            settings,
            claims: BTreeMap::new(),
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
        if source == Source::Local && self.settings.publish_local {
            let unchanged = self
                .claims
                .get(&key)
                .and_then(|claims| claims.get(&Source::Local))
                == Some(&entry);
            if !unchanged {
                effects.push(Effect::Publish(kvstore_entry(
                    &key,
                    &entry,
                    self.settings.node_ip,
                )));
            }
        }
        let claims = self.claims.entry(key).or_default();
        if claims.get(&source) != Some(&entry) {
            self.generation += 1;
        }
        claims.insert(source, entry);
        let effective = match claims.keys().next() {
            Some(top) if *top != source => Effective::ShadowedBy(*top),
            _ => Effective::Applied,
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
        if claims.remove(&source).is_none() {
            return Vec::new();
        }
        self.generation += 1;
        if claims.is_empty() {
            self.claims.remove(&key);
        }
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
    pub fn get(&self, key: &IpcacheKey) -> Option<(Source, &IpEntry)> {
        self.claims
            .get(key)
            .and_then(|claims| claims.iter().next())
            .map(|(source, entry)| (*source, entry))
    }

    /// The effective claim on the longest prefix of the local cluster containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpcacheKey, Source, &IpEntry)> {
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
                    .map(|entry| kvstore_entry(key, entry, self.settings.node_ip))
            })
            .collect()
    }

    /// Every prefix with its effective claim and the claims it shadows.
    pub fn dump(&self) -> Vec<DumpEntry> {
        self.claims
            .iter()
            .filter_map(|(key, claims)| {
                let mut iter = claims.iter();
                let (source, entry) = iter.next()?;
                Some(DumpEntry {
                    key: *key,
                    source: *source,
                    entry: entry.clone(),
                    datapath: self.to_datapath(key, entry),
                    shadowed: iter.map(|(source, _)| *source).collect(),
                })
            })
            .collect()
    }

    /// The datapath form of an entry.
    fn to_datapath(&self, key: &IpcacheKey, entry: &IpEntry) -> RemoteEndpointInfo {
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
        self.get(key).map(|(_, entry)| self.to_datapath(key, entry))
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
