//! The only reconciler code that calls the [`Datapath`]: it runs the operations the state
//! machine plans and feeds it the kernel's listings. Shared by the actor and the state tests,
//! so both exercise the same path.

use std::time::Duration;

use tracing::{debug, warn};

use super::state::{Op, ReconcilerState};
use crate::api::{Datapath, DatapathError, MapName, error_chain};

/// The outcome of one reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassStats {
    pub succeeded: usize,
    pub failed: usize,
}

/// Dependency depth of the plan (map, entries, attachment) plus one round for a policy map
/// found missing.
const MAX_ROUNDS: usize = 4;

/// Runs one operation against the datapath.
pub fn execute(dp: &mut dyn Datapath, op: &Op) -> Result<(), DatapathError> {
    match op {
        Op::CreatePolicyMap(ep) => dp.create_policy_map(*ep),
        Op::Update(key, value) => dp.update(key, value),
        Op::Attach(att) => dp.attach_endpoint(att),
        Op::Detach(ep) => dp.detach_endpoint(*ep).map(drop),
        Op::Delete(key) => dp.delete(key).map(drop),
        Op::RemovePolicyMap(ep) => dp.remove_policy_map(*ep).map(drop),
    }
}

/// Applies everything due at `now`. Operations that an earlier one in the same pass unblocks
/// (entries of a policy map just created, or a policy map found missing by a failed write) run
/// in a follow-up round. A failed operation is not planned again before its backoff ends, so
/// the rounds stop on their own; the bound only guards against a zero backoff.
pub fn reconcile(state: &mut ReconcilerState, dp: &mut dyn Datapath, now: Duration) -> PassStats {
    let mut stats = PassStats::default();
    for _ in 0..MAX_ROUNDS {
        let ops = state.plan(now);
        if ops.is_empty() {
            break;
        }
        for op in &ops {
            let result = execute(dp, op);
            match &result {
                Ok(()) => {
                    debug!(object = %op.object(), "datapath object applied");
                    stats.succeeded += 1;
                }
                Err(err) => {
                    warn!(object = %op.object(), error = %error_chain(err), "datapath operation failed, will retry");
                    stats.failed += 1;
                }
            }
            state.complete(op, result.as_ref().map(|_| ()), now);
        }
    }
    stats
}

/// Lists what the kernel holds (policy maps, their entries, and every global map the
/// reconciler writes) and records it in the state. A listing that fails leaves that map
/// unknown: writes to it are then attempted unconditionally and nothing in it is pruned.
pub fn refresh(state: &mut ReconcilerState, dp: &dyn Datapath) {
    match dp.policy_maps() {
        Ok(endpoints) => {
            state.observe_policy_maps(&endpoints);
            for endpoint in endpoints {
                list_into(state, dp, MapName::Policy(endpoint));
            }
        }
        Err(err) => warn!(error = %error_chain(&err), "cannot list policy maps"),
    }
    for map in RECONCILED_MAPS {
        list_into(state, dp, map);
    }
}

/// The global maps whose content the reconciler owns (conntrack belongs to the datapath).
const RECONCILED_MAPS: [MapName; 5] = [
    MapName::Ipcache,
    MapName::Lxc,
    MapName::Lb4Services,
    MapName::Lb4Backends,
    MapName::Lb4ReverseNat,
];

fn list_into(state: &mut ReconcilerState, dp: &dyn Datapath, map: MapName) {
    match dp.list(map) {
        Ok(entries) => state.observe_map(map, &entries),
        Err(err) => warn!(%map, error = %error_chain(&err), "cannot list map"),
    }
}
