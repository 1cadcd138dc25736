//! The policy repository: the rules of the node, the selector cache, and every local
//! endpoint's policy resolved into policy-map entries.
//!
//! # What it owns
//! - the imported rules (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Kubernetes
//!   NetworkPolicy, via `model::policy`), each labelled with the policy it came from, and the
//!   repository revision;
//! - the identities known to the node (reserved, cluster, local CIDR) and, for every selector a
//!   rule uses, the identities it selects (`selector_cache`);
//! - per local endpoint: its labels and named ports, its resolved entries, and the revision
//!   the datapath has realized.
//!
//! # Messages
//! Receives [`PolicyImport`], [`PolicyDelete`], the identity actor's
//! [`IdentitiesChanged`](crate::identity::IdentitiesChanged) (subscribe the repository to it
//! directly), [`EndpointPolicyWanted`], [`EndpointRemoved`], [`PolicyWait`] (node-wide),
//! [`EndpointPolicyWait`] (one endpoint) and [`Dump`]; [`IdentityAdded`] and
//! [`IdentityRemoved`] carry one half of an identity change each, for sources that are not
//! the identity actor. Sends
//! `SetEndpointPolicy` (the endpoint's full entry set) to the Datapath actor and
//! [`CidrIdentitiesWanted`] to the identity side, each through a `Recipient`.
//!
//! # Invariants
//! - Incremental: a new identity touches only the selectors that select it, only the
//!   endpoints whose policy uses one of them, and in those only that identity's entries; a
//!   rule change recomputes only endpoints its endpoint selectors (old or new) select.
//! - Deny wins: within one peer identity no allow entry is more specific than a deny entry
//!   that covers it (the datapath prefers deny only across its two lookups).
//! - A direction that is not enforced carries the allow-all entry (identity 0, any protocol,
//!   any port), because the datapath drops what no entry allows.
//! - Import and delete are all or nothing, and persisted ([`store`]) before they apply: the
//!   repository never holds a rule set its store does not, so a restarted agent resolves
//!   every endpoint to the entries it had.
//!
//! # Layout
//! - [`state`]: the state machine ([`PolicyState`]), no IO;
//! - `rules`: rule -> selectors and protocol/port pairs (entity, CIDR, port semantics);
//! - `selector_cache`: identities and selector selections;
//! - `resolve`: one endpoint's entries and their incremental upkeep;
//! - [`store`]: where the rules survive a restart;
//! - [`messages`]: messages, errors, the dump;
//! - [`actor`]: the actix glue.

pub mod actor;
pub mod messages;
mod resolve;
mod rules;
mod selector_cache;
pub mod state;
pub mod store;

pub use actor::PolicyRepository;
pub use messages::{
    CidrIdentitiesWanted, Dump, EndpointDump, EndpointPolicyWait, EndpointPolicyWanted,
    EndpointRemoved, IdentityAdded, IdentityRemoved, NamedPort, PolicyDelete, PolicyDeleted,
    PolicyDump, PolicyError, PolicyImport, PolicySnapshot, PolicySource, PolicyWait, Revision,
    RuleDump, SelectorDump, policy_name_labels,
};
pub use resolve::PolicyDelta;
pub use selector_cache::SelectorId;
pub use state::{
    Effect, EnforcementMode, PendingChange, PolicyConfig, PolicyState, UnknownEnforcementMode,
};
pub use store::{
    FilePolicyStore, MemoryPolicyStore, POLICY_STATE_FILE, PolicyStore, PolicyStoreError,
};
