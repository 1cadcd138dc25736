//! Host-scope IPAM (`--ipam host-scope`, `--ipv4-range CIDR`): the addresses of this node's
//! pod range, who holds each, and their persistence across agent restarts.
//!
//! **Owns** the allocations of one IPv4 range. The network and broadcast addresses are never
//! allocated (upstream's CIDR range allocator excludes them), and neither is the router
//! address: the first usable address, which upstream reserves for the node's `cilium_host`
//! side (owner `router`).
//!
//! **Takes** ([`messages`]): [`AllocateIp`] (a specific or the next free address, for an
//! owner), [`ReleaseIp`], [`Dump`]. **Sends** nothing.
//!
//! Invariants:
//! - An address is never held by two owners, and never handed out while allocated.
//! - Every allocation and release is persisted (an [`IpamStore`]: a JSON file in the state
//!   directory, replaced atomically) before it is answered; one that cannot be persisted is
//!   undone and answered with an error.
//! - After a restart the allocations are restored from the store. A corrupt or inconsistent
//!   store is an error, never an empty allocator.
//!
//! Layout: [`state`] is the pure allocator (next-fit from a cursor, so a released address is
//! reused last), [`store`] the persistence, [`actor`] the actix glue.

pub mod actor;
pub mod messages;
pub mod state;
pub mod store;

pub use actor::IpamActor;
pub use messages::{AllocateIp, Dump, IpamDump, IpamError, ReleaseIp, ReservedAddress};
pub use state::{IpamSnapshot, IpamState, ROUTER_OWNER};
pub use store::{FileIpamStore, IPAM_STATE_FILE, IpamStore, IpamStoreError, MemoryIpamStore};
