//! One endpoint's resolved policy: the policy-map entries, and how they follow identity
//! changes without being recomputed.
//!
//! An endpoint's policy is a list of [`Term`]s (one per peer of every section of every rule
//! that selects it, plus the entries the repository adds itself). A term contributes, for
//! every identity its peer selects, one allow or deny per protocol/port. Contributions are
//! reference-counted per (identity, direction) group, so that a selector gaining or losing an
//! identity only adds or subtracts that identity's contributions and recomputes that one
//! group: the work is proportional to what changed, never to the size of the policy.
//!
//! Deny wins over allow, and the datapath needs help with that: it looks up the most specific
//! entry of the peer's identity (LPM over protocol and port) and of "any identity" (0), and
//! prefers deny only between those two lookups. An allow entry of the same identity that is
//! more specific than a deny entry would be found first and win. So within each group an
//! allow that a deny covers is left out (upstream's deny-preferred insertion); across
//! identities the datapath's own deny preference does the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datapath::api::{Direction, PolicyEntry, PolicyKey};
use model::identity::NumericIdentity;

use super::rules::L4;
use super::selector_cache::{SelectionChange, SelectorCache, SelectorId};

/// Who a term is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// One fixed identity: 0 for "every peer", or a reserved identity the repository allows
    /// itself (the local host).
    Identity(NumericIdentity),
    /// Whatever the selector selects now.
    Selector(SelectorId),
}

/// One contribution source of an endpoint's policy.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    pub direction: Direction,
    pub deny: bool,
    pub peer: Peer,
    /// Shared by the terms of one section.
    pub l4: Arc<[L4]>,
}

/// How many terms allow and deny one protocol/port of one group.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    allow: u32,
    deny: u32,
}

type Group = (NumericIdentity, Direction);

/// How an endpoint's entries changed: keys to write (new or with a new value) and keys to
/// delete, both in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDelta {
    pub upserted: Vec<(PolicyKey, PolicyEntry)>,
    pub removed: Vec<PolicyKey>,
}

impl PolicyDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// The delta that turns `old` into `new`.
    pub(crate) fn between(
        old: &BTreeMap<PolicyKey, PolicyEntry>,
        new: &BTreeMap<PolicyKey, PolicyEntry>,
    ) -> PolicyDelta {
        let mut delta = PolicyDelta::default();
        for (key, entry) in new {
            if old.get(key) != Some(entry) {
                delta.upserted.push((*key, *entry));
            }
        }
        delta.removed = old
            .keys()
            .filter(|key| !new.contains_key(key))
            .copied()
            .collect();
        delta
    }
}

/// The resolved policy of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointPolicy {
    terms: Vec<Term>,
    /// Term indexes per selector, to find the terms an identity change touches.
    by_selector: HashMap<SelectorId, Vec<usize>>,
    groups: HashMap<Group, BTreeMap<L4, Counts>>,
    entries: BTreeMap<PolicyKey, PolicyEntry>,
}

impl EndpointPolicy {
    /// Resolves `terms` against the cache's current selections.
    pub fn new(terms: Vec<Term>, cache: &SelectorCache) -> Self {
        let mut policy = EndpointPolicy {
            terms,
            ..EndpointPolicy::default()
        };
        for index in 0..policy.terms.len() {
            let Some(term) = policy.terms.get(index) else {
                continue;
            };
            match term.peer {
                Peer::Identity(identity) => {
                    count(&mut policy.groups, identity, term, true);
                }
                Peer::Selector(selector) => {
                    policy.by_selector.entry(selector).or_default().push(index);
                    for identity in cache.selections(selector) {
                        count(&mut policy.groups, identity, term, true);
                    }
                }
            }
        }
        for (&(identity, direction), counts) in &policy.groups {
            for (l4, entry) in group_entries(counts) {
                if let Some(key) = l4.key(identity, direction) {
                    policy.entries.insert(key, entry);
                }
            }
        }
        policy
    }

    /// The policy-map entries.
    pub fn entries(&self) -> &BTreeMap<PolicyKey, PolicyEntry> {
        &self.entries
    }

    /// The selectors this policy depends on.
    pub fn selectors(&self) -> impl Iterator<Item = SelectorId> + '_ {
        self.by_selector.keys().copied()
    }

    /// Follows selection changes: only the (identity, direction) groups of identities that
    /// entered or left a selector this policy uses are recomputed. Returns what changed.
    pub fn apply<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a SelectorId, &'a SelectionChange)>,
    ) -> PolicyDelta {
        let mut operations: Vec<(usize, NumericIdentity, bool)> = Vec::new();
        let mut touched: BTreeSet<Group> = BTreeSet::new();
        for (selector, change) in changes {
            let Some(indexes) = self.by_selector.get(selector) else {
                continue;
            };
            for &index in indexes {
                let Some(term) = self.terms.get(index) else {
                    continue;
                };
                for &identity in &change.added {
                    operations.push((index, identity, true));
                    touched.insert((identity, term.direction));
                }
                for &identity in &change.removed {
                    operations.push((index, identity, false));
                    touched.insert((identity, term.direction));
                }
            }
        }
        if operations.is_empty() {
            return PolicyDelta::default();
        }
        let before: Vec<(Group, BTreeMap<L4, PolicyEntry>)> = touched
            .iter()
            .map(|group| {
                let entries = self
                    .groups
                    .get(group)
                    .map(group_entries)
                    .unwrap_or_default();
                (*group, entries.into_iter().collect())
            })
            .collect();
        for (index, identity, add) in operations {
            if let Some(term) = self.terms.get(index) {
                count(&mut self.groups, identity, term, add);
            }
        }
        let mut delta = PolicyDelta::default();
        for ((identity, direction), old) in before {
            let new: BTreeMap<L4, PolicyEntry> = self
                .groups
                .get(&(identity, direction))
                .map(group_entries)
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (l4, entry) in &new {
                if old.get(l4) != Some(entry)
                    && let Some(key) = l4.key(identity, direction)
                {
                    self.entries.insert(key, *entry);
                    delta.upserted.push((key, *entry));
                }
            }
            for l4 in old.keys().filter(|l4| !new.contains_key(l4)) {
                if let Some(key) = l4.key(identity, direction) {
                    self.entries.remove(&key);
                    delta.removed.push(key);
                }
            }
        }
        delta.upserted.sort_unstable();
        delta.removed.sort_unstable();
        delta
    }
}

/// Adds (or, with `add` false, removes) one term's contributions for one identity.
fn count(
    groups: &mut HashMap<Group, BTreeMap<L4, Counts>>,
    identity: NumericIdentity,
    term: &Term,
    add: bool,
) {
    let group = (identity, term.direction);
    let counts = groups.entry(group).or_default();
    for l4 in term.l4.iter() {
        let c = counts.entry(*l4).or_default();
        let slot = if term.deny { &mut c.deny } else { &mut c.allow };
        *slot = if add {
            slot.saturating_add(1)
        } else {
            slot.saturating_sub(1)
        };
        if c.allow == 0 && c.deny == 0 {
            counts.remove(l4);
        }
    }
    if counts.is_empty() {
        groups.remove(&group);
    }
}

/// The entries of one group: every denied protocol/port as a deny entry, every allowed one
/// that no deny of the group covers as an allow entry.
fn group_entries(counts: &BTreeMap<L4, Counts>) -> Vec<(L4, PolicyEntry)> {
    let denies: Vec<L4> = counts
        .iter()
        .filter(|(_, c)| c.deny > 0)
        .map(|(l4, _)| *l4)
        .collect();
    counts
        .iter()
        .filter_map(|(l4, c)| {
            if c.deny > 0 {
                Some((*l4, PolicyEntry::deny()))
            } else if c.allow > 0 && !denies.iter().any(|d| d.covers(*l4)) {
                Some((*l4, PolicyEntry::allow()))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use datapath::api::{PortPrefix, Protocol};
    use model::labels::{Label, Labels};
    use model::selector::LabelSelector;

    use super::super::selector_cache::Selector;
    use super::*;

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    fn tcp(port: u16) -> L4 {
        L4 {
            protocol: Protocol::TCP,
            port: PortPrefix::exact(port),
        }
    }

    fn app(cache: &mut SelectorCache, app: &str) -> SelectorId {
        let labels: Labels = std::iter::once(Label::k8s("app", app)).collect();
        cache.acquire(Selector::Labels(LabelSelector::from_labels(&labels)))
    }

    fn term(direction: Direction, deny: bool, peer: Peer, l4: &[L4]) -> Term {
        Term {
            direction,
            deny,
            peer,
            l4: l4.into(),
        }
    }

    fn show(entries: &BTreeMap<PolicyKey, PolicyEntry>) -> Vec<String> {
        entries
            .iter()
            .map(|(k, e)| format!("{k} {}", if e.deny { "deny" } else { "allow" }))
            .collect()
    }

    #[test]
    fn deny_removes_the_allows_it_covers_within_the_identity() {
        let mut cache = SelectorCache::new();
        let web = app(&mut cache, "web");
        cache.upsert_identities([(
            id(1000),
            std::iter::once(Label::k8s("app", "web")).collect(),
        )]);
        let policy = EndpointPolicy::new(
            vec![
                term(Direction::Ingress, false, Peer::Selector(web), &[tcp(80)]),
                term(Direction::Ingress, false, Peer::Selector(web), &[L4::ANY]),
                term(
                    Direction::Ingress,
                    true,
                    Peer::Selector(web),
                    &[L4::protocol(Protocol::TCP)],
                ),
                term(Direction::Ingress, false, Peer::Identity(id(0)), &[tcp(80)]),
            ],
            &cache,
        );
        // TCP/80 of identity 1000 is covered by the TCP deny and left out; the L3 allow stays
        // because the deny covers only TCP. Identity 0 is another group.
        assert_eq!(
            show(policy.entries()),
            [
                "ingress identity 0 TCP/80 allow",
                "ingress identity 1000 ANY/* allow",
                "ingress identity 1000 TCP/* deny",
            ]
        );
    }

    #[test]
    fn identity_changes_touch_only_their_group_and_undo_exactly() {
        let mut cache = SelectorCache::new();
        let web = app(&mut cache, "web");
        let db = app(&mut cache, "db");
        let web_labels: Labels = std::iter::once(Label::k8s("app", "web")).collect();
        cache.upsert_identities([(id(1000), web_labels.clone())]);
        let mut policy = EndpointPolicy::new(
            vec![
                term(
                    Direction::Ingress,
                    false,
                    Peer::Selector(web),
                    &[tcp(80), tcp(443)],
                ),
                term(Direction::Egress, true, Peer::Selector(web), &[tcp(22)]),
                term(Direction::Ingress, false, Peer::Selector(db), &[tcp(5432)]),
            ],
            &cache,
        );
        let initial = policy.entries().clone();
        assert_eq!(initial.len(), 3);

        let changes = cache.upsert_identities([(id(1001), web_labels)]);
        let delta = policy.apply(&changes);
        assert!(delta.removed.is_empty());
        let added: Vec<String> = delta.upserted.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            added,
            [
                "ingress identity 1001 TCP/80",
                "ingress identity 1001 TCP/443",
                "egress identity 1001 TCP/22",
            ]
        );
        assert_eq!(policy.entries().len(), 6);

        let changes = cache.remove_identities([id(1001)]);
        let delta = policy.apply(&changes);
        assert!(delta.upserted.is_empty());
        assert_eq!(delta.removed.len(), 3);
        assert_eq!(policy.entries(), &initial);

        // A change of a selector the policy does not use produces nothing.
        let unrelated = cache.acquire(Selector::Labels(LabelSelector::from_labels(
            &std::iter::once(Label::k8s("app", "other")).collect(),
        )));
        let changes = cache.upsert_identities([(
            id(1002),
            std::iter::once(Label::k8s("app", "other")).collect(),
        )]);
        assert!(changes.contains_key(&unrelated));
        assert!(policy.apply(&changes).is_empty());
    }

    #[test]
    fn two_terms_for_the_same_key_keep_it_until_both_are_gone() {
        let mut cache = SelectorCache::new();
        let web = app(&mut cache, "web");
        let web_and_front = cache.acquire(Selector::Labels(LabelSelector::from_labels(
            &[Label::k8s("app", "web"), Label::k8s("tier", "front")]
                .into_iter()
                .collect(),
        )));
        let mut policy = EndpointPolicy::new(
            vec![
                term(Direction::Ingress, false, Peer::Selector(web), &[tcp(80)]),
                term(
                    Direction::Ingress,
                    false,
                    Peer::Selector(web_and_front),
                    &[tcp(80)],
                ),
            ],
            &cache,
        );
        let both: Labels = [Label::k8s("app", "web"), Label::k8s("tier", "front")]
            .into_iter()
            .collect();
        let delta = policy.apply(&cache.upsert_identities([(id(1000), both)]));
        assert_eq!(delta.upserted.len(), 1);
        // The identity drops out of one selector only: the entry stays, nothing is written.
        let web_only: Labels = std::iter::once(Label::k8s("app", "web")).collect();
        let delta = policy.apply(&cache.upsert_identities([(id(1000), web_only)]));
        assert!(delta.is_empty());
        assert_eq!(policy.entries().len(), 1);
    }

    #[test]
    fn a_new_deny_identity_turns_its_allows_into_one_deny() {
        let mut cache = SelectorCache::new();
        let web = app(&mut cache, "web");
        let bad = app(&mut cache, "bad");
        let mut policy = EndpointPolicy::new(
            vec![
                term(Direction::Ingress, false, Peer::Selector(web), &[tcp(80)]),
                term(Direction::Ingress, true, Peer::Selector(bad), &[L4::ANY]),
            ],
            &cache,
        );
        let both: Labels = [Label::k8s("app", "web")].into_iter().collect();
        policy.apply(&cache.upsert_identities([(id(1000), both)]));
        let delta = policy.apply(
            &cache
                .upsert_identities([(id(1000), [Label::k8s("app", "bad")].into_iter().collect())]),
        );
        assert_eq!(show(policy.entries()), ["ingress identity 1000 ANY/* deny"]);
        assert_eq!(delta.removed.len(), 1);
        assert_eq!(delta.upserted.len(), 1);
    }

    #[test]
    fn delta_between_maps() {
        let key = |n| PolicyKey::l3(id(n), Direction::Ingress);
        let old: BTreeMap<_, _> = [
            (key(1), PolicyEntry::allow()),
            (key(2), PolicyEntry::allow()),
        ]
        .into_iter()
        .collect();
        let new: BTreeMap<_, _> = [
            (key(2), PolicyEntry::deny()),
            (key(3), PolicyEntry::allow()),
        ]
        .into_iter()
        .collect();
        let delta = PolicyDelta::between(&old, &new);
        assert_eq!(
            delta.upserted,
            [
                (key(2), PolicyEntry::deny()),
                (key(3), PolicyEntry::allow())
            ]
        );
        assert_eq!(delta.removed, [key(1)]);
        assert!(PolicyDelta::between(&new, &new).is_empty());
    }
}
