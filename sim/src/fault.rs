//! Faults the harness injects into a node's wiring, to show that the oracle catches the bugs
//! they stand for. A fault sits between two production actors as a forwarding actor, so the
//! actors themselves stay untouched.

use actix::{Actor, Context, Handler, Recipient, ResponseFuture};
use actors::identity::IdentitiesChanged;
use actors::ipcache::{Effective, UpsertIp};
use serde::{Deserialize, Serialize};

/// A fault in one node's wiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeFault {
    /// The `nth` (1-based) ipcache upsert the endpoint manager sends is lost: the pod's entry
    /// never reaches the ipcache, as if a message were dropped.
    DropUpsertIp { nth: u64 },
    /// The `nth` (1-based) identity announcement with new identities that the identity actor
    /// sends the policy repository is lost: the repository never learns those identities, so
    /// selectors that should select them do not.
    DropIdentitiesAdded { nth: u64 },
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
