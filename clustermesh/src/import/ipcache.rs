//! The imported ipcache entries in the compact form an agent keeps them in. Every agent of a
//! mesh imports every remote cluster's addresses, so a simulation of many nodes multiplies each
//! byte kept here by every (node, remote pod) pair:
//! - an entry is validated once, packed as the ipcache actor packs its claims
//!   ([`PackedEntry`]), and shared ([`SharedIp`]) by the import's mirror of its cluster and by
//!   the [`IpcacheClaims`] of all clusters;
//! - a key name is almost always the address (or CIDR) itself and is then kept as that
//!   address ([`IpName`]), not as a string;
//! - a prefix almost always has one owner, kept inline in the map's node ([`Owners`]), and an
//!   owner names its cluster through one shared copy of the name.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use actors::ipcache::{IpEntry, PackedEntry};
use datapath::api::IpcacheKey;
use ipnet::IpNet;
use model::collections::compact_grown;
use model::identity::ClusterName;

/// A validated ipcache entry of a remote cluster and the local key it goes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ImportedIp {
    pub key: IpcacheKey,
    pub entry: PackedEntry,
}

/// One imported entry, shared by the mirror of its cluster and the claims.
pub(crate) type SharedIp = Arc<ImportedIp>;

/// A key name below the ipcache prefix. Upstream names an entry by its prefix string (the
/// address of a host entry, `address/length` of a CIDR), so almost every name is kept as the
/// prefix it spells, without an allocation; any other name is kept as it is. The form is a
/// function of the name (a prefix only when it spells the name back exactly), so equal names
/// are equal values; the order is not the names' order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum IpName {
    Prefix(IpNet),
    Other(Box<str>),
}

impl IpName {
    pub(crate) fn new(name: &str) -> Self {
        match spelled_prefix(name) {
            Some(net) => IpName::Prefix(net),
            None => IpName::Other(name.into()),
        }
    }

    /// Compares with the name `other` as strings compare.
    fn cmp_name(&self, other: &str) -> Ordering {
        match self {
            IpName::Prefix(_) => self.to_string().as_str().cmp(other),
            IpName::Other(name) => (**name).cmp(other),
        }
    }
}

impl fmt::Display for IpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpName::Prefix(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            IpName::Prefix(net) => write!(f, "{}/{}", net.addr(), net.prefix_len()),
            IpName::Other(name) => f.write_str(name),
        }
    }
}

/// The prefix `name` spells in upstream's prefix-string form, if it does exactly.
fn spelled_prefix(name: &str) -> Option<IpNet> {
    let net = if name.contains('/') {
        name.parse::<IpNet>().ok()?
    } else {
        IpNet::from(name.parse::<IpAddr>().ok()?)
    };
    (IpName::Prefix(net).to_string() == name).then_some(net)
}

/// One remote cluster's claim on a prefix: the owner (cluster, key name) and its entry.
#[derive(Debug)]
struct Claim {
    cluster: Arc<ClusterName>,
    name: IpName,
    ip: SharedIp,
}

impl Claim {
    /// The owners' order: by cluster, then by key name.
    fn cmp_owner(&self, cluster: &ClusterName, name: &str) -> Ordering {
        (*self.cluster)
            .cmp(cluster)
            .then_with(|| self.name.cmp_name(name))
    }
}

/// The claims on one prefix, in owner order (the first is effective). Almost every prefix has
/// one, kept inline in the map's node (as the ipcache actor keeps its claims); several go to a
/// sorted vector.
#[derive(Debug)]
enum Owners {
    One(Claim),
    /// At least two claims.
    Many(Vec<Claim>),
}

impl Owners {
    fn as_slice(&self) -> &[Claim] {
        match self {
            Owners::One(claim) => std::slice::from_ref(claim),
            Owners::Many(claims) => claims,
        }
    }

    fn first_entry(&self) -> Option<&PackedEntry> {
        self.as_slice().first().map(|claim| &claim.ip.entry)
    }

    fn position(&self, cluster: &ClusterName, name: &str) -> Result<usize, usize> {
        self.as_slice()
            .binary_search_by(|claim| claim.cmp_owner(cluster, name))
    }

    /// Replaces the claim at `at` (from [`Owners::position`]) or inserts `claim` there.
    fn put(&mut self, at: Result<usize, usize>, claim: Claim) {
        match (self, at) {
            (Owners::One(slot), Ok(_)) => *slot = claim,
            (Owners::Many(claims), Ok(i)) => {
                if let Some(slot) = claims.get_mut(i) {
                    *slot = claim;
                }
            }
            (this @ Owners::One(_), Err(i)) => {
                let Owners::One(first) = std::mem::replace(this, Owners::Many(Vec::new())) else {
                    return;
                };
                let mut claims = Vec::with_capacity(2);
                claims.push(first);
                claims.insert(i.min(1), claim);
                *this = Owners::Many(claims);
            }
            (Owners::Many(claims), Err(i)) => claims.insert(i, claim),
        }
    }

    /// Removes the claim at `i`; `true` when none is left (the caller drops the prefix).
    fn remove(&mut self, i: usize) -> bool {
        match self {
            Owners::One(_) => true,
            Owners::Many(claims) => {
                if i < claims.len() {
                    claims.remove(i);
                }
                if claims.len() == 1
                    && let Some(last) = claims.pop()
                {
                    *self = Owners::One(last);
                    return false;
                }
                claims.is_empty()
            }
        }
    }
}

/// Which remote cluster's claim on an ipcache prefix is sent to the ipcache. The ipcache holds
/// one `clustermesh` claim per prefix; when two remote clusters (or two keys of one) claim the
/// same prefix, the first owner in `(cluster, key name)` order is effective, and removing it
/// hands the prefix to the next one instead of deleting it.
#[derive(Debug, Default)]
pub(crate) struct IpcacheClaims {
    by_prefix: BTreeMap<IpcacheKey, Owners>,
    /// The number of prefixes when `by_prefix` was last rebuilt (see [`compact_grown`]).
    built: usize,
    /// One copy of the name of every cluster that holds a claim, shared by its claims.
    clusters: Vec<Arc<ClusterName>>,
}

/// What to send to the ipcache after a claim changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IpcacheChange {
    Upsert(IpcacheKey, IpEntry),
    Delete(IpcacheKey),
}

impl IpcacheClaims {
    pub(crate) fn upsert(
        &mut self,
        prefix: IpcacheKey,
        owner: (ClusterName, String),
        ip: SharedIp,
    ) -> Option<IpcacheChange> {
        let (cluster, name) = owner;
        let before = self
            .by_prefix
            .get(&prefix)
            .and_then(Owners::first_entry)
            .cloned();
        let claim = Claim {
            cluster: self.intern(cluster),
            name: IpName::new(&name),
            ip,
        };
        let after = match self.by_prefix.get_mut(&prefix) {
            Some(owners) => {
                let at = owners.position(&claim.cluster, &name);
                owners.put(at, claim);
                owners.first_entry().cloned()
            }
            None => {
                let entry = claim.ip.entry.clone();
                self.by_prefix.insert(prefix, Owners::One(claim));
                compact_grown(&mut self.by_prefix, &mut self.built);
                Some(entry)
            }
        };
        match after {
            Some(entry) if before.as_ref() != Some(&entry) => {
                Some(IpcacheChange::Upsert(prefix, entry.unpack()))
            }
            _ => None,
        }
    }

    pub(crate) fn remove(
        &mut self,
        prefix: IpcacheKey,
        owner: &(ClusterName, String),
    ) -> Option<IpcacheChange> {
        let (cluster, name) = owner;
        let owners = self.by_prefix.get_mut(&prefix)?;
        let before = owners.first_entry().cloned();
        let i = owners.position(cluster, name).ok()?;
        let after = if owners.remove(i) {
            self.by_prefix.remove(&prefix);
            None
        } else {
            owners.first_entry().cloned()
        };
        // The last claim of a cluster releases the shared copy of its name.
        self.clusters.retain(|c| Arc::strong_count(c) > 1);
        match after {
            None => Some(IpcacheChange::Delete(prefix)),
            Some(entry) if before.as_ref() != Some(&entry) => {
                Some(IpcacheChange::Upsert(prefix, entry.unpack()))
            }
            Some(_) => None,
        }
    }

    /// The shared copy of `cluster`'s name. A mesh has a handful of clusters: a scan is enough.
    fn intern(&mut self, cluster: ClusterName) -> Arc<ClusterName> {
        if let Some(shared) = self.clusters.iter().find(|c| ***c == cluster) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(cluster);
        self.clusters.push(Arc::clone(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::identity::{ClusterId, NumericIdentity};

    fn shared(key: IpcacheKey, n: u32) -> SharedIp {
        Arc::new(ImportedIp {
            key,
            entry: PackedEntry::pack(IpEntry::identity(NumericIdentity::new(n))),
        })
    }

    fn entry(n: u32) -> IpEntry {
        IpEntry::identity(NumericIdentity::new(n))
    }

    #[test]
    fn names_spelling_a_prefix_are_kept_as_the_prefix() {
        // Whether the name spells a prefix: names that parse but are not spelled the
        // canonical way, and names that are no prefix at all, are kept as they are.
        let names = [
            ("10.0.0.1", true),
            ("10.0.0.0/24", true),
            ("10.0.0.1/24", true),
            ("0.0.0.0/0", true),
            ("f00d::1", true),
            ("f00d::/64", true),
            ("::", true),
            ("10.0.0.1/32", false),
            ("f00d::1/128", false),
            ("010.0.0.1", false),
            ("F00D::1", false),
            ("f00d:0::1", false),
            ("10.0.0.0/33", false),
            ("10.0.0.1/", false),
            ("node/10.0.0.1", false),
            ("", false),
            ("10.0.0.1 ", false),
        ];
        for (name, spelled) in names {
            let kept = IpName::new(name);
            assert_eq!(
                matches!(kept, IpName::Prefix(_)),
                spelled,
                "{name}: {kept:?}"
            );
            assert_eq!(kept.to_string(), name);
        }
        // Distinct names stay distinct, equal names equal.
        assert_ne!(IpName::new("10.0.0.1"), IpName::new("10.0.0.1/32"));
        assert_eq!(IpName::new("10.0.0.1"), IpName::new("10.0.0.1"));
    }

    #[test]
    fn names_compare_as_strings() {
        let names = [
            "10.0.0.10",
            "10.0.0.2",
            "10.0.0.1/32",
            "a/10.0.0.1",
            "f00d::1",
        ];
        for a in names {
            for b in names {
                assert_eq!(IpName::new(a).cmp_name(b), a.cmp(b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_compact_forms_stay_small() {
        use std::mem::size_of;
        assert!(size_of::<IpName>() <= 24);
        assert!(size_of::<Claim>() <= 40);
        assert!(size_of::<Owners>() <= 48);
    }

    #[test]
    fn ipcache_claims_hand_a_prefix_to_the_next_owner() {
        let key = IpcacheKey::new(ClusterId::UNSET, "10.0.0.1/32".parse().unwrap());
        let a = (ClusterName::new("a").unwrap(), "10.0.0.1".to_owned());
        let b = (ClusterName::new("b").unwrap(), "10.0.0.1".to_owned());
        let mut claims = IpcacheClaims::default();
        assert_eq!(
            claims.upsert(key, b.clone(), shared(key, 2)),
            Some(IpcacheChange::Upsert(key, entry(2)))
        );
        // `a` sorts first and takes over; re-sending the same entry changes nothing.
        assert_eq!(
            claims.upsert(key, a.clone(), shared(key, 1)),
            Some(IpcacheChange::Upsert(key, entry(1)))
        );
        assert_eq!(claims.upsert(key, a.clone(), shared(key, 1)), None);
        assert_eq!(claims.upsert(key, b.clone(), shared(key, 3)), None);
        assert_eq!(claims.clusters.len(), 2);
        assert_eq!(
            claims.remove(key, &a),
            Some(IpcacheChange::Upsert(key, entry(3)))
        );
        assert_eq!(claims.remove(key, &a), None);
        assert_eq!(claims.clusters.len(), 1, "a's name is released");
        assert_eq!(claims.remove(key, &b), Some(IpcacheChange::Delete(key)));
        assert!(claims.by_prefix.is_empty());
        assert!(claims.clusters.is_empty());
    }

    #[test]
    fn owners_of_one_cluster_are_ordered_by_key_name() {
        // As strings, the address sorts before its `/32` form, and both before a name with a
        // path.
        let key = IpcacheKey::new(ClusterId::UNSET, "10.0.0.1/32".parse().unwrap());
        let c = ClusterName::new("c").unwrap();
        let owner = |name: &str| (c.clone(), name.to_owned());
        let mut claims = IpcacheClaims::default();
        assert_eq!(
            claims.upsert(key, owner("node/10.0.0.1"), shared(key, 3)),
            Some(IpcacheChange::Upsert(key, entry(3)))
        );
        assert_eq!(
            claims.upsert(key, owner("10.0.0.1/32"), shared(key, 2)),
            Some(IpcacheChange::Upsert(key, entry(2)))
        );
        assert_eq!(
            claims.upsert(key, owner("10.0.0.1"), shared(key, 1)),
            Some(IpcacheChange::Upsert(key, entry(1)))
        );
        assert_eq!(claims.remove(key, &owner("10.0.0.1/32")), None);
        assert_eq!(
            claims.remove(key, &owner("10.0.0.1")),
            Some(IpcacheChange::Upsert(key, entry(3)))
        );
        assert_eq!(
            claims.remove(key, &owner("node/10.0.0.1")),
            Some(IpcacheChange::Delete(key))
        );
    }
}
