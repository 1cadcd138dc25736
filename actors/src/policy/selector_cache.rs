//! The selector cache: every distinct peer selector that some rule uses, with the set of
//! identities it selects right now (upstream's `SelectorCache`).
//!
//! Rules never look at identities directly. They name selectors; the cache keeps, for each
//! selector, the identities known to the node that it selects, and updates those sets when an
//! identity appears, changes its labels or goes away. Each update reports exactly which
//! selectors changed and how, which is what lets the repository touch only the endpoints whose
//! policy uses one of them.
//!
//! The cache also owns the node's view of identities (id -> labels): the reserved identities
//! from the start, then cluster identities from the allocator (and remote clusters later) and
//! local CIDR identities, as the identity side announces them.
//!
//! Selectors are interned: two rules that spell the same selector differently
//! (`app: web` and `any:app In [web]`) share one entry and one id. Ids are never reused, so a
//! stale id can only miss, never alias another selector.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;
use model::identity::{NumericIdentity, ReservedIdentity};
use model::labels::{Label, Labels};
use model::selector::LabelSelector;
use serde::{Deserialize, Serialize};

/// The id of a cached selector; stable for as long as some rule uses the selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SelectorId(u64);

impl fmt::Display for SelectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A peer selector as the cache evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Identities whose labels satisfy a label selector: endpoint selectors (already scoped to
    /// a namespace and cluster) and entities (mapped to their reserved labels).
    Labels(LabelSelector),
    /// CIDR identities whose `cidr:` prefix lies inside `prefix` and outside every `except`
    /// prefix. This is upstream's CIDR-aware label match: a selector for `cidr:10.0.0.0/8`
    /// selects the identity labelled `cidr:10.1.2.3/32`, because identities carry only their
    /// own prefix label, not every broader one.
    ///
    /// A `/0` prefix also selects the world identity of its family: addresses without a more specific ipcache entry
    /// resolve to world, and they lie inside `/0` and outside every exception (exceptions
    /// have identities of their own). It is done here rather than with a `reserved:world`
    /// label selector because CIDR identities carry that label too, and a label selector
    /// would select the excepted ones.
    Cidr {
        prefix: IpNet,
        except: Vec<IpNet>,
        /// The world label a `/0` selects (see [`Selector::cidr`]).
        world: Label,
    },
}

impl Selector {
    /// A CIDR selector with host bits cleared and exceptions sorted, so equal sets of
    /// addresses intern to one entry. With both address families on (`dual_stack`), a `/0`
    /// selects its family's world identity (`reserved:world-ipv4` or `-ipv6`), otherwise
    /// `reserved:world`, as CIDR identities are labelled.
    pub fn cidr(prefix: IpNet, except: impl IntoIterator<Item = IpNet>, dual_stack: bool) -> Self {
        let mut except: Vec<IpNet> = except.into_iter().map(|p| p.trunc()).collect();
        except.sort_unstable();
        except.dedup();
        let world = match (dual_stack, prefix) {
            (false, _) => Label::world(),
            (true, IpNet::V4(_)) => Label::world_ipv4(),
            (true, IpNet::V6(_)) => Label::world_ipv6(),
        };
        Selector::Cidr {
            prefix: prefix.trunc(),
            except,
            world,
        }
    }

    /// Whether an identity with these labels is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Labels(selector) => selector.matches(labels),
            Selector::Cidr {
                prefix,
                except,
                world,
            } => {
                let mut prefixes = labels
                    .iter()
                    .filter_map(|label| label.cidr_prefix())
                    .peekable();
                if prefixes.peek().is_none() {
                    return prefix.prefix_len() == 0 && labels.contains(world);
                }
                prefixes
                    .any(|own| contains(prefix, &own) && !except.iter().any(|e| contains(e, &own)))
            }
        }
    }

    fn key(&self) -> SelectorKey {
        match self {
            Selector::Labels(selector) => SelectorKey::Labels(selector.to_string()),
            Selector::Cidr {
                prefix,
                except,
                world,
            } => SelectorKey::Cidr(*prefix, except.clone(), world.key.clone()),
        }
    }
}

/// Whether `outer` covers every address of `inner` (same family, no longer prefix).
fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// Label selectors in their canonical rendering; CIDR selectors as prefixes.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Labels(selector) => write!(f, "{selector}"),
            Selector::Cidr { prefix, except, .. } => {
                write!(f, "cidr:{prefix}")?;
                if !except.is_empty() {
                    let except: Vec<String> = except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", except.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// The interning key: the canonical text of a label selector (so spelling variants collapse),
/// or the normalised CIDR set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SelectorKey {
    Labels(String),
    Cidr(IpNet, Vec<IpNet>, String),
}

/// How one selector's selections changed in one update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectionChange {
    pub added: Vec<NumericIdentity>,
    pub removed: Vec<NumericIdentity>,
}

#[derive(Debug)]
struct CachedSelector {
    selector: Selector,
    selections: BTreeSet<NumericIdentity>,
    /// How many rule peers use the selector; it leaves the cache at zero.
    users: usize,
}

/// The identities known to the node and the selections of every selector in use.
#[derive(Debug)]
pub struct SelectorCache {
    identities: BTreeMap<NumericIdentity, Labels>,
    selectors: BTreeMap<SelectorId, CachedSelector>,
    by_key: HashMap<SelectorKey, SelectorId>,
    next_id: u64,
}

impl Default for SelectorCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SelectorCache {
    /// A cache that knows the reserved identities (host, world, ..., with their reserved
    /// labels) and no selector. `unknown` (0) is not an identity a peer can have.
    pub fn new() -> Self {
        let identities = ReservedIdentity::ALL
            .into_iter()
            .filter(|r| *r != ReservedIdentity::Unknown)
            .map(|r| (r.id(), r.labels()))
            .collect();
        SelectorCache {
            identities,
            selectors: BTreeMap::new(),
            by_key: HashMap::new(),
            next_id: 1,
        }
    }

    /// The identities known to the node.
    pub fn identities(&self) -> &BTreeMap<NumericIdentity, Labels> {
        &self.identities
    }

    /// Takes a reference to `selector`, adding it (and computing its selections) on first use.
    pub fn acquire(&mut self, selector: Selector) -> SelectorId {
        let key = selector.key();
        if let Some(id) = self.by_key.get(&key) {
            if let Some(cached) = self.selectors.get_mut(id) {
                cached.users += 1;
            }
            return *id;
        }
        let id = SelectorId(self.next_id);
        self.next_id += 1;
        let selections = self
            .identities
            .iter()
            .filter(|(_, labels)| selector.matches(labels))
            .map(|(id, _)| *id)
            .collect();
        self.selectors.insert(
            id,
            CachedSelector {
                selector,
                selections,
                users: 1,
            },
        );
        self.by_key.insert(key, id);
        id
    }

    /// Drops one reference; the selector leaves the cache with its last user.
    pub fn release(&mut self, id: SelectorId) {
        let Some(cached) = self.selectors.get_mut(&id) else {
            return;
        };
        cached.users = cached.users.saturating_sub(1);
        if cached.users == 0 {
            let key = cached.selector.key();
            self.selectors.remove(&id);
            self.by_key.remove(&key);
        }
    }

    /// The identities `id` selects now; empty for an unknown id.
    pub fn selections(&self, id: SelectorId) -> impl Iterator<Item = NumericIdentity> + '_ {
        self.selectors
            .get(&id)
            .into_iter()
            .flat_map(|cached| cached.selections.iter().copied())
    }

    /// Every cached selector with its selections and user count, in id order.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = (SelectorId, &Selector, &BTreeSet<NumericIdentity>, usize)> {
        self.selectors
            .iter()
            .map(|(id, c)| (*id, &c.selector, &c.selections, c.users))
    }

    /// Adds identities or replaces their labels, and returns the selectors whose selections
    /// changed. An identity announced again with the same labels changes nothing; `unknown`
    /// (0) is ignored because no traffic carries it as a peer.
    pub fn upsert_identities(
        &mut self,
        batch: impl IntoIterator<Item = (NumericIdentity, Labels)>,
    ) -> BTreeMap<SelectorId, SelectionChange> {
        let mut changes: BTreeMap<SelectorId, SelectionChange> = BTreeMap::new();
        for (identity, labels) in batch {
            if identity == NumericIdentity::UNKNOWN {
                tracing::warn!("ignoring identity 0 (unknown) announced with labels {labels}");
                continue;
            }
            if self.identities.get(&identity) == Some(&labels) {
                continue;
            }
            for (id, cached) in &mut self.selectors {
                let now = cached.selector.matches(&labels);
                let changed = if now {
                    cached.selections.insert(identity)
                } else {
                    cached.selections.remove(&identity)
                };
                if changed {
                    let change = changes.entry(*id).or_default();
                    if now {
                        change.added.push(identity);
                    } else {
                        change.removed.push(identity);
                    }
                }
            }
            self.identities.insert(identity, labels);
        }
        normalise(changes)
    }

    /// Forgets identities and returns the selectors that selected them. Unknown ids are
    /// ignored, so a repeated removal is harmless.
    pub fn remove_identities(
        &mut self,
        ids: impl IntoIterator<Item = NumericIdentity>,
    ) -> BTreeMap<SelectorId, SelectionChange> {
        let mut changes: BTreeMap<SelectorId, SelectionChange> = BTreeMap::new();
        for identity in ids {
            if self.identities.remove(&identity).is_none() {
                continue;
            }
            for (id, cached) in &mut self.selectors {
                if cached.selections.remove(&identity) {
                    changes.entry(*id).or_default().removed.push(identity);
                }
            }
        }
        normalise(changes)
    }
}

/// Within one batch an identity can be added and removed again (or the reverse) for the same
/// selector; what matters to the endpoints is only the net change.
fn normalise(
    changes: BTreeMap<SelectorId, SelectionChange>,
) -> BTreeMap<SelectorId, SelectionChange> {
    changes
        .into_iter()
        .filter_map(|(id, change)| {
            let mut net: BTreeMap<NumericIdentity, i32> = BTreeMap::new();
            for identity in &change.added {
                *net.entry(*identity).or_default() += 1;
            }
            for identity in &change.removed {
                *net.entry(*identity).or_default() -= 1;
            }
            let added: Vec<_> = net
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(i, _)| *i)
                .collect();
            let removed: Vec<_> = net
                .iter()
                .filter(|(_, n)| **n < 0)
                .map(|(i, _)| *i)
                .collect();
            (!added.is_empty() || !removed.is_empty())
                .then_some((id, SelectionChange { added, removed }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use model::labels::Label;

    use super::*;

    fn labels(list: &[&str]) -> Labels {
        list.iter().map(|l| Label::parse(l).unwrap()).collect()
    }

    fn selector(match_labels: &[(&str, &str)]) -> Selector {
        Selector::Labels(LabelSelector {
            match_labels: match_labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        })
    }

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    fn cidr(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_identities_are_known_from_the_start() {
        let mut cache = SelectorCache::new();
        assert!(!cache.identities().contains_key(&NumericIdentity::UNKNOWN));
        assert_eq!(cache.identities().len(), 10);
        let host = cache.acquire(selector(&[("reserved:host", "")]));
        assert_eq!(
            cache.selections(host).collect::<Vec<_>>(),
            [NumericIdentity::HOST]
        );
        // kube-apiserver carries reserved:remote-node too, as upstream.
        let remote = cache.acquire(selector(&[("reserved:remote-node", "")]));
        assert_eq!(
            cache.selections(remote).collect::<Vec<_>>(),
            [
                NumericIdentity::REMOTE_NODE,
                NumericIdentity::KUBE_APISERVER
            ]
        );
    }

    #[test]
    fn equal_selectors_share_one_entry_until_the_last_release() {
        let mut cache = SelectorCache::new();
        let a = cache.acquire(selector(&[("app", "web")]));
        let b = cache.acquire(Selector::Labels(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![model::selector::LabelSelectorRequirement {
                key: "any:app".into(),
                operator: model::selector::SelectorOperator::In,
                values: vec!["web".into()],
            }],
        }));
        assert_eq!(a, b);
        assert_eq!(cache.iter().count(), 1);
        cache.release(a);
        assert!(cache.iter().any(|(id, ..)| id == a));
        cache.release(a);
        assert!(cache.iter().next().is_none());
        // A new acquisition gets a fresh id: stale ids never alias.
        let c = cache.acquire(selector(&[("app", "web")]));
        assert_ne!(a, c);
    }

    #[test]
    fn a_new_identity_changes_only_the_selectors_that_select_it() {
        let mut cache = SelectorCache::new();
        let web = cache.acquire(selector(&[("k8s:app", "web")]));
        let db = cache.acquire(selector(&[("k8s:app", "db")]));
        let changes = cache.upsert_identities([(id(1000), labels(&["k8s:app=web"]))]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[&web].added, [id(1000)]);
        assert!(cache.selections(db).next().is_none());
        // The same labels again change nothing.
        assert!(
            cache
                .upsert_identities([(id(1000), labels(&["k8s:app=web"]))])
                .is_empty()
        );
        // New labels move the identity from one selector to the other.
        let changes = cache.upsert_identities([(id(1000), labels(&["k8s:app=db"]))]);
        assert_eq!(changes[&web].removed, [id(1000)]);
        assert_eq!(changes[&db].added, [id(1000)]);
        let changes = cache.remove_identities([id(1000), id(1000)]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[&db].removed, [id(1000)]);
    }

    #[test]
    fn a_batch_reports_the_net_change() {
        let mut cache = SelectorCache::new();
        let web = cache.acquire(selector(&[("k8s:app", "web")]));
        let changes = cache.upsert_identities([
            (id(1000), labels(&["k8s:app=web"])),
            (id(1000), labels(&["k8s:app=db"])),
            (id(1001), labels(&["k8s:app=web"])),
        ]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[&web].added, [id(1001)]);
        assert!(changes[&web].removed.is_empty());
    }

    #[test]
    fn identity_zero_is_ignored() {
        let mut cache = SelectorCache::new();
        let all = cache.acquire(selector(&[]));
        let changes = cache.upsert_identities([(NumericIdentity::UNKNOWN, labels(&["k8s:a=b"]))]);
        assert!(changes.is_empty());
        assert!(!cache.selections(all).any(|i| i == NumericIdentity::UNKNOWN));
    }

    #[test]
    fn cidr_selectors_match_by_prefix_containment_minus_exceptions() {
        let mut cache = SelectorCache::new();
        let ten = cache.acquire(Selector::cidr(cidr("10.0.0.0/8"), [], false));
        let ten_except = cache.acquire(Selector::cidr(
            cidr("10.1.2.3/8"),
            [cidr("10.96.0.0/12")],
            false,
        ));
        let host = |s: &str| Labels::for_cidr(cidr(s), false);
        let changes = cache.upsert_identities([
            (id(0x0100_0001), host("10.1.2.3/32")),
            (id(0x0100_0002), host("10.0.0.0/8")),
            (id(0x0100_0003), host("10.96.0.0/12")),
            (id(0x0100_0004), host("10.100.0.1/32")),
            (id(0x0100_0005), host("0.0.0.0/4")),
            (id(0x0100_0006), host("192.168.0.0/16")),
            (
                id(0x0100_0007),
                Labels::for_cidr(cidr("2001:db8::/32"), false),
            ),
        ]);
        assert_eq!(
            changes[&ten].added,
            [
                id(0x0100_0001),
                id(0x0100_0002),
                id(0x0100_0003),
                id(0x0100_0004)
            ]
        );
        // The /12 exception removes itself and everything inside it; host bits of the
        // selector's prefix do not matter.
        assert_eq!(
            changes[&ten_except].added,
            [id(0x0100_0001), id(0x0100_0002)]
        );
        // Non-CIDR identities (world itself included) are not selected by a narrower prefix.
        assert!(!cache.selections(ten).any(|i| i == NumericIdentity::WORLD));
        // A /0 selects the world of its stack mode but still honours its exceptions.
        let all_v4 = cache.acquire(Selector::cidr(
            cidr("0.0.0.0/0"),
            [cidr("10.0.0.0/8")],
            false,
        ));
        assert_eq!(
            cache.selections(all_v4).collect::<Vec<_>>(),
            [NumericIdentity::WORLD, id(0x0100_0005), id(0x0100_0006)]
        );
        let dual = cache.acquire(Selector::cidr(cidr("0.0.0.0/0"), [], true));
        assert!(
            cache
                .selections(dual)
                .any(|i| i == NumericIdentity::WORLD_IPV4)
        );
        assert!(!cache.selections(dual).any(|i| i == NumericIdentity::WORLD));
        let dual_v6 = cache.acquire(Selector::cidr(cidr("::/0"), [], true));
        assert_eq!(
            cache.selections(dual_v6).collect::<Vec<_>>(),
            [NumericIdentity::WORLD_IPV6, id(0x0100_0007)]
        );
    }
}
