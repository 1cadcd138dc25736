//! actix glue of the IPAM actor: every mutation is persisted before it is answered, and undone
//! if it cannot be.

use std::net::Ipv4Addr;

use actix::{Actor, Context, Handler};
use ipnet::Ipv4Net;

use super::messages::{AllocateIp, Dump, IpamError, ReleaseIp};
use super::state::IpamState;
use super::store::IpamStore;

/// The host-scope IPAM actor of one node.
#[derive(Debug)]
pub struct IpamActor {
    state: IpamState,
    store: Box<dyn IpamStore>,
}

impl IpamActor {
    /// Restores the allocations of `range` from `store` (empty if nothing was saved). A
    /// snapshot that cannot be read or does not fit the range is an error: the agent must not
    /// start handing out addresses that may be in use.
    pub fn new(range: Ipv4Net, mut store: Box<dyn IpamStore>) -> Result<Self, IpamError> {
        let state = match store.load()? {
            Some(snapshot) => {
                let state = IpamState::restore(range, snapshot)?;
                tracing::info!(
                    range = %state.range(),
                    restored = state.dump().allocations.len(),
                    "restored ipam allocations"
                );
                state
            }
            None => IpamState::new(range)?,
        };
        Ok(IpamActor { state, store })
    }

    pub fn router(&self) -> Ipv4Addr {
        self.state.router()
    }
}

impl Actor for IpamActor {
    type Context = Context<Self>;
}

impl Handler<AllocateIp> for IpamActor {
    type Result = Result<Ipv4Addr, IpamError>;

    fn handle(&mut self, msg: AllocateIp, _: &mut Context<Self>) -> Self::Result {
        let held_before = msg.ip.is_some_and(|ip| self.state.owner(ip).is_some());
        let ip = self.state.allocate(&msg.owner, msg.ip)?;
        if held_before {
            // The owner claimed an address it already held: nothing changed.
            return Ok(ip);
        }
        if let Err(err) = self.store.save(&self.state.snapshot()) {
            // Only the address just allocated can be undone; release cannot fail for it.
            let _ = self.state.release(ip);
            tracing::warn!(%ip, owner = %msg.owner, error = %err, "ipam allocation not persisted");
            return Err(err.into());
        }
        tracing::debug!(%ip, owner = %msg.owner, "allocated address");
        Ok(ip)
    }
}

impl Handler<ReleaseIp> for IpamActor {
    type Result = Result<(), IpamError>;

    fn handle(&mut self, msg: ReleaseIp, _: &mut Context<Self>) -> Self::Result {
        let owner = self.state.release(msg.ip)?;
        if let Err(err) = self.store.save(&self.state.snapshot()) {
            tracing::warn!(ip = %msg.ip, %owner, error = %err, "ipam release not persisted");
            self.state.reinstate(msg.ip, owner);
            return Err(err.into());
        }
        tracing::debug!(ip = %msg.ip, %owner, "released address");
        Ok(())
    }
}

impl Handler<Dump> for IpamActor {
    type Result = actix::MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.state.dump())
    }
}
