//! The eBPF datapath: the C programs under `bpf/`, their `#[repr(C)]` map layouts and the aya
//! loader. Only this crate touches BPF maps.
//!
//! # Layout
//! - `bpf/bpf_lxc.c` (+ `bpf/lib/*.h`): `cil_from_container` and `cil_to_container`, the
//!   programs on each endpoint's host-side veth; `bpf/bench.c`: benchmark yardsticks. `build.rs`
//!   compiles them with clang.
//! - [`api`]: the boundary the control plane uses: the object-safe [`Datapath`] trait, the
//!   domain keys and values of every map ([`api::MapKey`], [`api::MapValue`]), ids such as
//!   [`EndpointId`], and [`DatapathError`].
//! - [`maps`]: one module per map family with the `#[repr(C)]` key/value structs mirroring
//!   `bpf/lib/maps.h`, and the map names and specs.
//! - [`loader`]: [`BpfObjects::load`] creates or adopts the pinned maps and loads the programs;
//!   its failures are [`BpfError`]s ([`error`]).
//! - [`kernel`]: [`KernelDatapath`], the [`Datapath`] over the loaded objects: domain <->
//!   layout conversion ([`kernel::convert`]), errno -> [`DatapathError`], conntrack GC, metrics.
//! - [`attach`]: TCX attachment of the programs to an endpoint's veth inside the node's network
//!   namespace, and the pinned links that keep enforcing while no agent runs.
//! - [`link`]: [`link::NetlinkLinks`], the [`api::EndpointLinks`] over rtnetlink: each
//!   endpoint's veth pair, pod address and routes, the node's route and neighbour entry.
//! - [`routes`]: the [`routes::NodeRoutes`] to other nodes' pod CIDRs (native routes over
//!   the underlay or VXLAN through `cilium_vxlan`): kernel routing state, not BPF maps, driven
//!   by the node manager; netlink under `kernel`, a recording fake under `test-util`.
//! - [`monitor`]: the event reader: `cilium_events` ring-buffer records -> typed
//!   [`monitor::MonitorEvent`]s, `cilium-dbg monitor`-style lines and type filters.
//! - [`reconciler`]: the Datapath actor, the single writer of every map (desired state,
//!   idempotent apply, prune, retry with backoff).
//! - `fake` and `testing` (feature `test-util`): the recording in-memory [`Datapath`] and the
//!   behavioural suite every implementation passes; `fake_link`: the in-memory endpoint links.
//! - `sys`: the one bpf syscall aya does not expose.
//!
//! The kernel side (`maps`, `loader`, `kernel`, `attach`, `monitor`, the C programs) is the
//! default feature `kernel`; without it the crate is the pure control-plane boundary (`api`,
//! `reconciler`, and with `test-util` the fake), which is all `actors` and `sim` link.
//!
//! Architecture invariant: domain types stop at this crate's boundary; the programs know only
//! the map layouts, which mirror upstream Cilium's.

pub mod api;
#[cfg(feature = "kernel")]
pub mod attach;
#[cfg(feature = "kernel")]
pub mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
#[cfg(any(test, feature = "test-util"))]
pub mod fake_link;
#[cfg(feature = "kernel")]
pub mod kernel;
#[cfg(feature = "kernel")]
pub mod link;
#[cfg(feature = "kernel")]
pub mod loader;
#[cfg(feature = "kernel")]
pub mod maps;
pub mod monitor;
pub mod reconciler;
pub mod routes;
#[cfg(feature = "kernel")]
mod sys;
#[cfg(feature = "test-util")]
pub mod testing;

pub use api::{Datapath, DatapathError, EndpointId};
#[cfg(feature = "kernel")]
pub use error::BpfError;
#[cfg(feature = "kernel")]
pub use kernel::KernelDatapath;
#[cfg(feature = "kernel")]
pub use loader::{BpfObjects, DatapathMaps, LoadOptions, PolicyMap, PolicyMaps};
