//! The policy repository as a state machine: rules, the selector cache, every local
//! endpoint's resolved policy, and revisions. No IO: every input is a method call that returns
//! the [`Effect`]s the actor must carry out.
//!
//! Work is proportional to what changed:
//! - an identity change updates the selectors that (de)select it, then only the endpoints
//!   whose policy uses one of those selectors, and in each only the entries of that identity;
//! - a rule change recomputes only the endpoints whose labels the changed rules' endpoint
//!   selectors (old or new) select; every other endpoint's policy is unchanged by definition
//!   and just moves to the new revision.
//!
//! Revisions: the repository revision grows with every rule change. Each endpoint records the
//! revision its entries were computed at, each update sent for it carries a sequence number,
//! and the actor acknowledges a sequence number once the datapath has taken the entries. An
//! endpoint has realized revision R once the last update sent for it is acknowledged and its
//! entries were computed at R; the node has realized R when every endpoint has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use datapath::api::{Direction, EndpointId, PolicyEntry, PolicyKey, PortPrefix, Protocol};
use ipnet::IpNet;
use model::identity::{ClusterName, NumericIdentity};
use model::labels::{Label, Labels};
use model::policy::{
    POLICY_LABEL_DERIVED_FROM, POLICY_LABEL_NAME, POLICY_LABEL_NAMESPACE, PolicyDocument, Rule,
};
use model::selector::LabelSelector;
use serde::{Deserialize, Serialize};

use super::messages::{
    CidrIdentitiesWanted, EndpointDump, EndpointPolicyWanted, NamedPort, PolicyDump, PolicyError,
    PolicySnapshot, PolicySource, Revision, RuleDump, SelectorDump,
};
use super::resolve::{EndpointPolicy, Peer, PolicyDelta, Term};
use super::rules::{L4, PlanContext, RulePlan, plan_rule};
use super::selector_cache::{SelectionChange, SelectorCache, SelectorId};

/// When endpoints are put into default deny (`--enable-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// Per direction, once some rule selects the endpoint in that direction.
    #[default]
    Default,
    /// Always, both directions, even without rules.
    Always,
    /// Never: every endpoint allows everything and rules are not applied.
    Never,
}

impl EnforcementMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Default => "default",
            EnforcementMode::Always => "always",
            EnforcementMode::Never => "never",
        }
    }
}

impl fmt::Display for EnforcementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`EnforcementMode::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy enforcement mode {mode:?}, expected default, always or never")]
pub struct UnknownEnforcementMode {
    pub mode: String,
}

impl FromStr for EnforcementMode {
    type Err = UnknownEnforcementMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            EnforcementMode::Default,
            EnforcementMode::Always,
            EnforcementMode::Never,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| UnknownEnforcementMode { mode: s.to_owned() })
    }
}

/// Node facts the repository needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub enforcement: EnforcementMode,
    /// Peer selectors without a cluster requirement select only this cluster.
    pub cluster_name: ClusterName,
    /// Let the local host reach endpoints whatever their ingress policy says, as upstream's
    /// `--allow-localhost` resolves by default (kubelet probes must keep working).
    pub allow_localhost: bool,
    /// Both address families on: `world` is split into `world-ipv4` and `world-ipv6`, as
    /// CIDR identities are labelled (see `Labels::for_cidr`).
    pub dual_stack: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enforcement: EnforcementMode::Default,
            cluster_name: ClusterName::default(),
            allow_localhost: true,
            dual_stack: false,
        }
    }
}

/// What the actor has to do after a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The endpoint's entries changed (or it is new): write its full entry set
    /// ([`PolicyState::entries`]) to the datapath, then acknowledge `seq` with
    /// [`PolicyState::acknowledge`]. `delta` is what changed, for logs and tests.
    EndpointPolicy {
        endpoint: EndpointId,
        seq: u64,
        revision: Revision,
        delta: PolicyDelta,
    },
    /// The CIDR prefixes named by rules changed: ask the identity side for (or release) their
    /// local identities.
    CidrIdentities(CidrIdentitiesWanted),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RuleId(u64);

/// A validated rule change, planned but not applied ([`PolicyState::prepare_import`],
/// [`PolicyState::prepare_delete`]); [`PolicyState::commit`] applies it. Valid only for the
/// state that prepared it, before any other change.
#[derive(Debug)]
pub struct PendingChange {
    remove: Vec<RuleId>,
    add: Vec<(Rule, RulePlan)>,
    is_delete: bool,
}

/// One section of a stored rule, with interned peers.
#[derive(Debug)]
struct Section {
    direction: Direction,
    deny: bool,
    peers: Vec<Peer>,
    fixed: Arc<[L4]>,
    named: Vec<(Protocol, String)>,
}

#[derive(Debug)]
struct StoredRule {
    rule: Rule,
    subject: LabelSelector,
    default_deny_ingress: bool,
    default_deny_egress: bool,
    sections: Vec<Section>,
    cidr_prefixes: BTreeSet<IpNet>,
}

/// An update sent for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    seq: u64,
    revision: Revision,
}

#[derive(Debug)]
struct EndpointState {
    identity: NumericIdentity,
    labels: Labels,
    named_ports: Vec<NamedPort>,
    policy: EndpointPolicy,
    ingress_enforced: bool,
    egress_enforced: bool,
    /// Whether an egress rule names a port, so that the node's named ports matter.
    uses_egress_named_ports: bool,
    revision: Revision,
    sent: Sent,
    acked: Option<Sent>,
}

impl EndpointState {
    fn realized(&self) -> Option<Revision> {
        match self.acked {
            Some(acked) if acked.seq == self.sent.seq => Some(self.revision),
            Some(acked) => Some(acked.revision),
            None => None,
        }
    }
}

/// Named ports of every local endpoint, by lower-cased name: what egress rules' port names
/// resolve to.
type NamedPortTable = BTreeMap<String, BTreeSet<(Protocol, u16)>>;

/// The policy repository's state.
#[derive(Debug)]
pub struct PolicyState {
    config: PolicyConfig,
    revision: Revision,
    cache: SelectorCache,
    rules: BTreeMap<RuleId, StoredRule>,
    next_rule: u64,
    cidr_refs: BTreeMap<IpNet, usize>,
    endpoints: BTreeMap<EndpointId, EndpointState>,
    selector_users: HashMap<SelectorId, BTreeSet<EndpointId>>,
    egress_named_ports: NamedPortTable,
}

impl PolicyState {
    /// An empty repository at [`Revision::INITIAL`] that knows only the reserved identities.
    pub fn new(config: PolicyConfig) -> Self {
        PolicyState {
            config,
            revision: Revision::INITIAL,
            cache: SelectorCache::new(),
            rules: BTreeMap::new(),
            next_rule: 1,
            cidr_refs: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            selector_users: HashMap::new(),
            egress_named_ports: NamedPortTable::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The current repository revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The entries the endpoint's policy map must hold.
    pub fn entries(&self, endpoint: EndpointId) -> Option<&BTreeMap<PolicyKey, PolicyEntry>> {
        self.endpoints.get(&endpoint).map(|ep| ep.policy.entries())
    }

    /// The lowest revision every endpoint has realized; the current revision when there is no
    /// endpoint, 0 while some endpoint has never been acknowledged.
    pub fn realized_revision(&self) -> Revision {
        self.endpoints
            .values()
            .map(|ep| ep.realized().unwrap_or_default())
            .min()
            .unwrap_or(self.revision)
    }

    /// The revision one endpoint has realized (0 before its first acknowledgement); `None`
    /// for an endpoint the repository does not know.
    pub fn endpoint_realized_revision(&self, endpoint: EndpointId) -> Option<Revision> {
        self.endpoints
            .get(&endpoint)
            .map(|ep| ep.realized().unwrap_or_default())
    }

    /// Imports rules, replacing earlier rules of the same policy (see [`PolicySource`]).
    /// All or nothing: on error the repository is unchanged.
    pub fn import(&mut self, source: PolicySource) -> Result<(Revision, Vec<Effect>), PolicyError> {
        let change = self.prepare_import(source)?;
        let (revision, _, effects) = self.commit(change);
        Ok((revision, effects))
    }

    /// Deletes every rule that has all of `labels` (every rule for no labels). Returns the new
    /// revision and how many rules went; deleting nothing is [`PolicyError::NotFound`].
    pub fn delete(
        &mut self,
        labels: &[Label],
    ) -> Result<(Revision, usize, Vec<Effect>), PolicyError> {
        let change = self.prepare_delete(labels)?;
        Ok(self.commit(change))
    }

    /// Validates and plans an import without applying it, so the caller can persist the
    /// outcome ([`Self::rules_after`]) before the repository changes.
    pub fn prepare_import(&self, source: PolicySource) -> Result<PendingChange, PolicyError> {
        let ctx = PlanContext {
            cluster: &self.config.cluster_name,
            dual_stack: self.config.dual_stack,
        };
        let mut planned = Vec::new();
        let replaced: Vec<RuleId> = match source {
            PolicySource::Documents(documents) => {
                let mut origins = Vec::new();
                for (index, document) in documents.iter().enumerate() {
                    let in_document = |source: PolicyError| PolicyError::Document {
                        index,
                        name: document.name().to_owned(),
                        error: Box::new(source),
                    };
                    document
                        .check_supported()
                        .map_err(|e| in_document(e.into()))?;
                    let rules = document.to_rules().map_err(|e| in_document(e.into()))?;
                    for (i, rule) in rules.into_iter().enumerate() {
                        let plan = plan_rule(&rule, ctx).map_err(|e| {
                            in_document(PolicyError::Rule {
                                index: i,
                                error: Box::new(e),
                            })
                        })?;
                        planned.push((rule, plan));
                    }
                    origins.push(origin_labels(document));
                }
                self.rules
                    .iter()
                    .filter(|(_, stored)| {
                        origins
                            .iter()
                            .any(|origin| origin.iter().all(|l| stored.rule.labels.contains(l)))
                    })
                    .map(|(id, _)| *id)
                    .collect()
            }
            PolicySource::Rules(rules) => {
                for (index, rule) in rules.into_iter().enumerate() {
                    let in_rule = |source: PolicyError| PolicyError::Rule {
                        index,
                        error: Box::new(source),
                    };
                    rule.validate().map_err(|e| in_rule(e.into()))?;
                    rule.check_supported().map_err(|e| in_rule(e.into()))?;
                    let plan = plan_rule(&rule, ctx).map_err(in_rule)?;
                    planned.push((rule, plan));
                }
                let label_sets: Vec<BTreeSet<&Label>> = planned
                    .iter()
                    .map(|(rule, _)| rule.labels.iter().collect())
                    .collect();
                self.rules
                    .iter()
                    .filter(|(_, stored)| {
                        let labels: BTreeSet<&Label> = stored.rule.labels.iter().collect();
                        label_sets.contains(&labels)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            }
        };
        Ok(PendingChange {
            remove: replaced,
            add: planned,
            is_delete: false,
        })
    }

    /// Finds the rules a delete would remove, without removing them; deleting nothing is
    /// [`PolicyError::NotFound`].
    pub fn prepare_delete(&self, labels: &[Label]) -> Result<PendingChange, PolicyError> {
        let doomed: Vec<RuleId> = self
            .rules
            .iter()
            .filter(|(_, stored)| labels.iter().all(|l| stored.rule.labels.contains(l)))
            .map(|(id, _)| *id)
            .collect();
        if doomed.is_empty() {
            return Err(PolicyError::NotFound {
                labels: labels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(PendingChange {
            remove: doomed,
            add: Vec::new(),
            is_delete: true,
        })
    }

    /// The rules, in import order, as they will be once `change` is committed.
    pub fn rules_after(&self, change: &PendingChange) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|(id, _)| !change.remove.contains(id))
            .map(|(_, stored)| stored.rule.clone())
            .chain(change.add.iter().map(|(rule, _)| rule.clone()))
            .collect()
    }

    /// Applies a prepared change as one revision. Returns the new revision, how many rules
    /// were removed, and the effects.
    pub fn commit(&mut self, change: PendingChange) -> (Revision, usize, Vec<Effect>) {
        let PendingChange {
            remove,
            add,
            is_delete,
        } = change;
        let removed = remove.len();
        let added = add.len();
        let effects = self.change_rules(remove, add);
        if is_delete {
            tracing::info!(revision = %self.revision, deleted = removed, "policy rules deleted");
        } else {
            tracing::info!(
                revision = %self.revision,
                added,
                replaced = removed,
                "policy rules imported"
            );
        }
        (self.revision, removed, effects)
    }

    /// Loads persisted rules into a repository that has none yet, as one change, and moves
    /// to the persisted revision (if it is ahead), so revisions keep growing across agent
    /// restarts and a restored repository answers with the revision it had.
    pub fn restore(&mut self, snapshot: PolicySnapshot) -> Result<Vec<Effect>, PolicyError> {
        let change = self.prepare_import(PolicySource::Rules(snapshot.rules))?;
        let (_, _, effects) = self.commit(change);
        if snapshot.revision > self.revision {
            self.revision = snapshot.revision;
            for ep in self.endpoints.values_mut() {
                ep.revision = snapshot.revision;
            }
        }
        Ok(effects)
    }

    /// Identities appeared or changed labels.
    pub fn upsert_identities(
        &mut self,
        identities: impl IntoIterator<Item = (NumericIdentity, Labels)>,
    ) -> Vec<Effect> {
        let changes = self.cache.upsert_identities(identities);
        self.follow_selections(&changes)
    }

    /// Identities are gone.
    pub fn remove_identities(
        &mut self,
        identities: impl IntoIterator<Item = NumericIdentity>,
    ) -> Vec<Effect> {
        let changes = self.cache.remove_identities(identities);
        self.follow_selections(&changes)
    }

    /// Adds an endpoint or updates its labels and named ports. A new endpoint always gets an
    /// update (its policy map must be created even when empty); a known one only when its
    /// entries change.
    pub fn upsert_endpoint(&mut self, wanted: EndpointPolicyWanted) -> Vec<Effect> {
        let EndpointPolicyWanted {
            endpoint,
            identity,
            labels,
            named_ports,
        } = wanted;
        let is_new = match self.endpoints.get_mut(&endpoint) {
            Some(ep) => {
                ep.identity = identity;
                ep.labels = labels;
                ep.named_ports = named_ports;
                false
            }
            None => {
                self.endpoints.insert(
                    endpoint,
                    EndpointState {
                        identity,
                        labels,
                        named_ports,
                        policy: EndpointPolicy::default(),
                        ingress_enforced: false,
                        egress_enforced: false,
                        uses_egress_named_ports: false,
                        revision: self.revision,
                        sent: Sent {
                            seq: 0,
                            revision: self.revision,
                        },
                        acked: None,
                    },
                );
                true
            }
        };
        let mut effects = self.refresh_named_ports(Some(endpoint));
        effects.extend(self.recompute(endpoint, is_new));
        effects
    }

    /// Forgets an endpoint. Other endpoints change only if their egress rules used one of its
    /// named ports.
    pub fn remove_endpoint(&mut self, endpoint: EndpointId) -> Vec<Effect> {
        let Some(ep) = self.endpoints.remove(&endpoint) else {
            return Vec::new();
        };
        for selector in ep.policy.selectors() {
            self.unuse(selector, endpoint);
        }
        self.refresh_named_ports(None)
    }

    /// The datapath has taken update `seq` of the endpoint (computed at `revision`).
    pub fn acknowledge(&mut self, endpoint: EndpointId, seq: u64, revision: Revision) {
        if let Some(ep) = self.endpoints.get_mut(&endpoint)
            && ep.acked.is_none_or(|acked| acked.seq < seq)
            && seq <= ep.sent.seq
        {
            ep.acked = Some(Sent { seq, revision });
        }
    }

    /// A serialisable snapshot.
    pub fn dump(&self) -> PolicyDump {
        PolicyDump {
            revision: self.revision,
            realized_revision: self.realized_revision(),
            enforcement: self.config.enforcement,
            rules: self
                .rules
                .values()
                .map(|stored| RuleDump {
                    labels: stored.rule.labels.iter().map(ToString::to_string).collect(),
                    rule: stored.rule.clone(),
                })
                .collect(),
            selectors: self
                .cache
                .iter()
                .map(|(id, selector, selections, users)| SelectorDump {
                    id,
                    selector: selector.to_string(),
                    identities: selections.iter().copied().collect(),
                    users,
                })
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(id, ep)| EndpointDump {
                    endpoint: *id,
                    identity: ep.identity,
                    revision: ep.revision,
                    realized_revision: ep.realized(),
                    ingress_enforced: ep.ingress_enforced,
                    egress_enforced: ep.egress_enforced,
                    entries: ep.policy.entries().len(),
                })
                .collect(),
            cidr_prefixes: self.cidr_refs.keys().copied().collect(),
            identities: self.cache.identities().len(),
        }
    }

    /// Removes `remove` and adds `add` as one change: one revision, and every affected
    /// endpoint recomputed once against the final rule set.
    fn change_rules(&mut self, remove: Vec<RuleId>, add: Vec<(Rule, RulePlan)>) -> Vec<Effect> {
        let cidrs_before: BTreeSet<IpNet> = self.cidr_refs.keys().copied().collect();
        let mut subjects: Vec<LabelSelector> = Vec::new();
        let mut removed = Vec::new();
        for id in remove {
            if let Some(stored) = self.rules.remove(&id) {
                for prefix in &stored.cidr_prefixes {
                    if let Some(refs) = self.cidr_refs.get_mut(prefix) {
                        *refs = refs.saturating_sub(1);
                        if *refs == 0 {
                            self.cidr_refs.remove(prefix);
                        }
                    }
                }
                subjects.push(stored.subject.clone());
                removed.push(stored);
            }
        }
        for (rule, plan) in add {
            for prefix in &plan.cidr_prefixes {
                *self.cidr_refs.entry(*prefix).or_default() += 1;
            }
            subjects.push(plan.subject.clone());
            let stored = self.intern(rule, plan);
            self.rules.insert(RuleId(self.next_rule), stored);
            self.next_rule += 1;
        }
        self.revision = self.revision.next();

        let mut effects = Vec::new();
        let cidrs_after: BTreeSet<IpNet> = self.cidr_refs.keys().copied().collect();
        if cidrs_before != cidrs_after {
            effects.push(Effect::CidrIdentities(CidrIdentitiesWanted {
                added: cidrs_after.difference(&cidrs_before).copied().collect(),
                removed: cidrs_before.difference(&cidrs_after).copied().collect(),
            }));
        }
        let endpoints: Vec<EndpointId> = self.endpoints.keys().copied().collect();
        for endpoint in endpoints {
            let affected = self
                .endpoints
                .get(&endpoint)
                .is_some_and(|ep| subjects.iter().any(|s| s.matches(&ep.labels)));
            if affected {
                effects.extend(self.recompute(endpoint, false));
            } else if let Some(ep) = self.endpoints.get_mut(&endpoint) {
                ep.revision = self.revision;
            }
        }
        // Released last: recomputed endpoints no longer use these selectors, and a selector
        // shared with a remaining rule keeps its cached selections.
        for stored in removed {
            for peer in stored.sections.iter().flat_map(|s| &s.peers) {
                if let Peer::Selector(id) = peer {
                    self.cache.release(*id);
                }
            }
        }
        effects
    }

    fn intern(&mut self, rule: Rule, plan: RulePlan) -> StoredRule {
        let sections = plan
            .sections
            .into_iter()
            .map(|section| Section {
                direction: section.direction,
                deny: section.deny,
                peers: section
                    .peers
                    .into_iter()
                    .map(|peer| match peer {
                        super::rules::PeerPlan::Wildcard => {
                            Peer::Identity(NumericIdentity::UNKNOWN)
                        }
                        super::rules::PeerPlan::Selector(selector) => {
                            Peer::Selector(self.cache.acquire(selector))
                        }
                    })
                    .collect(),
                fixed: section.ports.fixed.into(),
                named: section.ports.named,
            })
            .collect();
        StoredRule {
            rule,
            subject: plan.subject,
            default_deny_ingress: plan.default_deny_ingress,
            default_deny_egress: plan.default_deny_egress,
            sections,
            cidr_prefixes: plan.cidr_prefixes,
        }
    }

    /// Recomputes one endpoint from the rules; emits an update when its entries changed (or
    /// always, with `force`).
    fn recompute(&mut self, endpoint: EndpointId, force: bool) -> Option<Effect> {
        let ep = self.endpoints.get(&endpoint)?;
        let resolution = endpoint_terms(
            &self.rules,
            &self.config,
            &self.egress_named_ports,
            &ep.labels,
            &ep.named_ports,
        );
        let policy = EndpointPolicy::new(resolution.terms, &self.cache);
        let delta = PolicyDelta::between(ep.policy.entries(), policy.entries());
        let old: BTreeSet<SelectorId> = ep.policy.selectors().collect();
        let new: BTreeSet<SelectorId> = policy.selectors().collect();
        for selector in old.difference(&new) {
            self.unuse(*selector, endpoint);
        }
        for selector in new.difference(&old) {
            self.selector_users
                .entry(*selector)
                .or_default()
                .insert(endpoint);
        }
        let revision = self.revision;
        let ep = self.endpoints.get_mut(&endpoint)?;
        ep.policy = policy;
        ep.ingress_enforced = resolution.ingress_enforced;
        ep.egress_enforced = resolution.egress_enforced;
        ep.uses_egress_named_ports = resolution.uses_egress_named_ports;
        ep.revision = revision;
        if delta.is_empty() && !force {
            return None;
        }
        Some(send(endpoint, ep, delta))
    }

    fn unuse(&mut self, selector: SelectorId, endpoint: EndpointId) {
        if let Some(users) = self.selector_users.get_mut(&selector) {
            users.remove(&endpoint);
            if users.is_empty() {
                self.selector_users.remove(&selector);
            }
        }
    }

    /// Hands selection changes to exactly the endpoints that use a changed selector.
    fn follow_selections(
        &mut self,
        changes: &BTreeMap<SelectorId, SelectionChange>,
    ) -> Vec<Effect> {
        let mut per_endpoint: BTreeMap<EndpointId, Vec<(&SelectorId, &SelectionChange)>> =
            BTreeMap::new();
        for (selector, change) in changes {
            for endpoint in self.selector_users.get(selector).into_iter().flatten() {
                per_endpoint
                    .entry(*endpoint)
                    .or_default()
                    .push((selector, change));
            }
        }
        let mut effects = Vec::new();
        for (endpoint, relevant) in per_endpoint {
            let Some(ep) = self.endpoints.get_mut(&endpoint) else {
                continue;
            };
            let delta = ep.policy.apply(relevant);
            if !delta.is_empty() {
                effects.push(send(endpoint, ep, delta));
            }
        }
        effects
    }

    /// Rebuilds the node's named-port table; when it changed, endpoints whose egress rules
    /// name ports are recomputed (except `skip`, which the caller recomputes anyway).
    fn refresh_named_ports(&mut self, skip: Option<EndpointId>) -> Vec<Effect> {
        let mut table = NamedPortTable::new();
        for ep in self.endpoints.values() {
            for port in &ep.named_ports {
                table
                    .entry(port.name.to_ascii_lowercase())
                    .or_default()
                    .insert((port.protocol, port.port));
            }
        }
        if table == self.egress_named_ports {
            return Vec::new();
        }
        self.egress_named_ports = table;
        let users: Vec<EndpointId> = self
            .endpoints
            .iter()
            .filter(|(id, ep)| ep.uses_egress_named_ports && Some(**id) != skip)
            .map(|(id, _)| *id)
            .collect();
        users
            .into_iter()
            .filter_map(|endpoint| self.recompute(endpoint, false))
            .collect()
    }
}

/// Records an update for the endpoint and describes it.
fn send(endpoint: EndpointId, ep: &mut EndpointState, delta: PolicyDelta) -> Effect {
    ep.sent = Sent {
        seq: ep.sent.seq + 1,
        revision: ep.revision,
    };
    Effect::EndpointPolicy {
        endpoint,
        seq: ep.sent.seq,
        revision: ep.revision,
        delta,
    }
}

/// The labels naming the policy object a document's rules come from: replacing a document
/// replaces every rule that has all of them (the uid is left out, so that a re-created
/// object replaces its predecessor).
fn origin_labels(document: &PolicyDocument) -> Vec<Label> {
    let mut labels = vec![
        Label::k8s(POLICY_LABEL_DERIVED_FROM, document.kind().as_str()),
        Label::k8s(POLICY_LABEL_NAME, document.name()),
    ];
    if let Some(namespace) = document.effective_namespace() {
        labels.push(Label::k8s(POLICY_LABEL_NAMESPACE, namespace));
    }
    labels
}

/// What the rules say about one endpoint.
struct Resolution {
    terms: Vec<Term>,
    ingress_enforced: bool,
    egress_enforced: bool,
    uses_egress_named_ports: bool,
}

/// The terms of an endpoint: the sections of every rule that selects it, then the entries
/// the repository adds itself: allow-all for a direction that is not enforced (the datapath
/// denies what no entry allows) and the local host at ingress when `allow_localhost` is on.
fn endpoint_terms(
    rules: &BTreeMap<RuleId, StoredRule>,
    config: &PolicyConfig,
    egress_named_ports: &NamedPortTable,
    labels: &Labels,
    named_ports: &[NamedPort],
) -> Resolution {
    let mut resolution = Resolution {
        terms: Vec::new(),
        ingress_enforced: config.enforcement == EnforcementMode::Always,
        egress_enforced: config.enforcement == EnforcementMode::Always,
        uses_egress_named_ports: false,
    };
    if config.enforcement != EnforcementMode::Never {
        for rule in rules.values().filter(|r| r.subject.matches(labels)) {
            resolution.ingress_enforced |= rule.default_deny_ingress;
            resolution.egress_enforced |= rule.default_deny_egress;
            for section in &rule.sections {
                let l4 = if section.named.is_empty() {
                    section.fixed.clone()
                } else {
                    if section.direction == Direction::Egress {
                        resolution.uses_egress_named_ports = true;
                    }
                    resolve_named(section, named_ports, egress_named_ports)
                };
                if l4.is_empty() {
                    continue;
                }
                for peer in &section.peers {
                    resolution.terms.push(Term {
                        direction: section.direction,
                        deny: section.deny,
                        peer: *peer,
                        l4: l4.clone(),
                    });
                }
            }
        }
    }
    let any: Arc<[L4]> = Arc::new([L4::ANY]);
    let allow = |direction, identity| Term {
        direction,
        deny: false,
        peer: Peer::Identity(identity),
        l4: any.clone(),
    };
    if !resolution.ingress_enforced {
        resolution
            .terms
            .push(allow(Direction::Ingress, NumericIdentity::UNKNOWN));
    } else if config.allow_localhost {
        resolution
            .terms
            .push(allow(Direction::Ingress, NumericIdentity::HOST));
    }
    if !resolution.egress_enforced {
        resolution
            .terms
            .push(allow(Direction::Egress, NumericIdentity::UNKNOWN));
    }
    resolution
}

/// The section's ports with its named ports resolved: at ingress against the endpoint's own
/// ports; at egress against the named ports of every local endpoint. Upstream resolves egress
/// names against the ports of every pod it knows through the ipcache; remote pods' ports are
/// not known here yet, so only local pods' names resolve. A name that resolves to nothing
/// allows nothing, as upstream.
fn resolve_named(section: &Section, own: &[NamedPort], node: &NamedPortTable) -> Arc<[L4]> {
    let mut l4: Vec<L4> = section.fixed.to_vec();
    for (protocol, name) in &section.named {
        let ports: Vec<u16> = match section.direction {
            Direction::Ingress => own
                .iter()
                .filter(|p| p.protocol == *protocol && p.name.eq_ignore_ascii_case(name))
                .map(|p| p.port)
                .collect(),
            Direction::Egress => node
                .get(name)
                .into_iter()
                .flatten()
                .filter(|(p, _)| p == protocol)
                .map(|(_, port)| *port)
                .collect(),
        };
        l4.extend(
            ports
                .into_iter()
                .filter_map(|port| L4::new(*protocol, PortPrefix::exact(port)).ok()),
        );
    }
    l4.sort_unstable();
    l4.dedup();
    l4.into()
}

#[cfg(test)]
mod tests;
