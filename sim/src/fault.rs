//! Faults the harness injects into a node's wiring, to show that the oracle catches the bugs
//! they stand for. A fault sits between two production actors as a forwarding actor, so the
//! actors themselves stay untouched.
//!
//! Also the datapath's faults ([`DatapathFaults`]): map writes that fail some of the time,
//! through the fake datapath's own failure injection, which the production Datapath actor
//! must retry (it does, with backoff: a failed object becomes a status and a retry).

use actix::{Actor, Context, Handler, Recipient, ResponseFuture};
use actors::identity::IdentitiesChanged;
use actors::ipcache::{Effective, UpsertIp};
use datapath::api::{Datapath, MapKey, MapName};
use datapath::fake::{FakeDatapath, FaultPoint};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// Failing datapath writes, all run long.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathFaults {
    /// After every change the harness makes, each node's next write of a random kind (an
    /// ipcache, endpoint or load-balancing map update, a policy map creation, an attach)
    /// fails with this probability (0 to 1). Failures not used up by the end of a step's
    /// changes are withdrawn, so that a retry's backoff never outlasts the quiet period.
    pub error_rate: f64,
}

/// The write points [`DatapathFaults`] fails.
const FAULT_POINTS: [FaultPoint; 6] = [
    FaultPoint::Update(MapName::Ipcache),
    FaultPoint::Update(MapName::Lxc),
    FaultPoint::Update(MapName::Lb4Services),
    FaultPoint::Update(MapName::Lb4Backends),
    FaultPoint::CreatePolicyMap,
    FaultPoint::Attach,
];

impl DatapathFaults {
    /// Arms, with the configured probability, one failure of a random write point on
    /// `datapath`; returns whether it did.
    pub fn arm(&self, datapath: &FakeDatapath, rng: &mut fastrand::Rng) -> bool {
        if self.error_rate <= 0.0 || rng.f64() >= self.error_rate {
            return false;
        }
        let point = FAULT_POINTS[rng.usize(..FAULT_POINTS.len())];
        datapath.fail_next(point, 1);
        true
    }
}

/// A fault in one node's wiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum NodeFault {
    /// The `nth` (1-based) ipcache upsert the endpoint manager sends is lost: the pod's entry
    /// never reaches the ipcache, as if a message were dropped.
    DropUpsertIp { nth: u64 },
    /// The `nth` (1-based) identity announcement with new identities that the identity actor
    /// sends the policy repository is lost: the repository never learns those identities, so
    /// selectors that should select them do not.
    DropIdentitiesAdded { nth: u64 },
    /// When the node loses its kvstore (an outage, a restart, a partition), its ipcache
    /// forgets every other node's pods at once, as an agent would that took a lost connection
    /// for an empty store. The harness plays it on the node's datapath; the continuous
    /// invariant that nothing is flushed on kvstore loss must catch it.
    FlushOnKvstoreLoss,
}

/// Plays [`NodeFault::FlushOnKvstoreLoss`]: deletes from `datapath`'s ipcache every pod
/// address outside `own` (the node's pod CIDR) within `pods` (every pod CIDR). Returns how
/// many entries went.
pub fn flush_remote_pods(datapath: &FakeDatapath, own: Ipv4Net, pods: Ipv4Net) -> usize {
    let mut writer = datapath.clone();
    let mut flushed = 0;
    for (key, _) in datapath.entries(MapName::Ipcache) {
        let MapKey::Ipcache(ipcache) = &key else {
            continue;
        };
        let IpNet::V4(prefix) = ipcache.prefix() else {
            continue;
        };
        if pods.contains(&prefix.addr())
            && !own.contains(&prefix.addr())
            && matches!(writer.delete(&key), Ok(true))
        {
            flushed += 1;
        }
    }
    flushed
}

/// Forwards the endpoint manager's [`UpsertIp`] to the ipcache, except the one it drops.
#[derive(Debug)]
pub struct UpsertIpFilter {
    ipcache: Recipient<UpsertIp>,
    drop_nth: u64,
    seen: u64,
}

impl UpsertIpFilter {
    pub fn new(ipcache: Recipient<UpsertIp>, drop_nth: u64) -> Self {
        UpsertIpFilter {
            ipcache,
            drop_nth,
            seen: 0,
        }
    }
}

impl Actor for UpsertIpFilter {
    type Context = Context<Self>;
}

impl Handler<UpsertIp> for UpsertIpFilter {
    type Result = ResponseFuture<Effective>;

    fn handle(&mut self, msg: UpsertIp, _: &mut Context<Self>) -> Self::Result {
        self.seen += 1;
        if self.seen == self.drop_nth {
            tracing::debug!(key = ?msg.key, "fault: ipcache upsert dropped");
            return Box::pin(async { Effective::Applied });
        }
        let send = self.ipcache.send(msg);
        // The ipcache goes away only with its node; the answer is then read by nobody.
        Box::pin(async move { send.await.unwrap_or(Effective::Applied) })
    }
}

/// Forwards the identity actor's [`IdentitiesChanged`] to the policy repository, except the
/// one it drops (counting only announcements that add identities).
#[derive(Debug)]
pub struct IdentitiesFilter {
    policy: Recipient<IdentitiesChanged>,
    drop_nth: u64,
    seen: u64,
}

impl IdentitiesFilter {
    pub fn new(policy: Recipient<IdentitiesChanged>, drop_nth: u64) -> Self {
        IdentitiesFilter {
            policy,
            drop_nth,
            seen: 0,
        }
    }
}

impl Actor for IdentitiesFilter {
    type Context = Context<Self>;
}

impl Handler<IdentitiesChanged> for IdentitiesFilter {
    type Result = ();

    fn handle(&mut self, msg: IdentitiesChanged, _: &mut Context<Self>) {
        if !msg.added.is_empty() {
            self.seen += 1;
            if self.seen == self.drop_nth {
                tracing::debug!(
                    added = msg.added.len(),
                    "fault: identity announcement dropped"
                );
                return;
            }
        }
        self.policy.do_send(msg);
    }
}
