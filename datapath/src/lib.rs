//! The eBPF datapath: the C programs under `bpf/`, their `#[repr(C)]` map layouts and the aya
//! loader. Only this crate touches BPF maps.
//!
//! # Layout
//! - `bpf/bpf_lxc.c` (+ `bpf/lib/*.h`): `cil_from_container` and `cil_to_container`, the
//!   programs on each endpoint's host-side veth; `bpf/bench.c`: benchmark yardsticks. `build.rs`
//!   compiles them with clang.
//! - [`maps`]: one module per map family with the key/value structs and their constructors from
//!   domain values ([`model::identity::NumericIdentity`], std addresses).
//! - [`loader`]: [`BpfObjects::load`] creates or adopts the pinned maps and loads the programs.
//! - [`error`]: the [`DatapathError`] enum.
//!
//! Architecture invariant: domain types stop at this crate's boundary; the programs know only
//! the map layouts, which mirror upstream Cilium's.

pub mod api;
pub mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod loader;
pub mod maps;
pub mod reconciler;
mod sys;
#[cfg(feature = "test-util")]
pub mod testing;

pub use error::DatapathError;
pub use loader::{BpfObjects, DatapathMaps, LoadOptions, PolicyMap, PolicyMaps};
pub use maps::EndpointId;
