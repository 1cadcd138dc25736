//! Errors of loading the BPF objects and of operating on their maps through aya ([`BpfError`]).
//! They stop at the [`Datapath`](crate::api::Datapath) boundary, where the kernel
//! implementation turns them into [`crate::api::DatapathError`] with the map or endpoint named.

use std::io;
use std::path::PathBuf;

use aya::EbpfError;
use aya::maps::MapError;
use aya::pin::PinError;
use aya::programs::ProgramError;

/// Errors of loading the BPF objects and of operating on their maps.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The embedded object could not be loaded (parse, BTF, map creation).
    #[error("failed to load bpf object {object}")]
    Load {
        object: &'static str,
        #[source]
        source: EbpfError,
    },
    /// A program the loader expects is not in the object.
    #[error("program {name} missing from bpf object {object}")]
    MissingProgram {
        object: &'static str,
        name: &'static str,
    },
    /// The kernel rejected a program (verifier) or the program has the wrong type.
    #[error("failed to load program {name} into the kernel")]
    ProgramLoad {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A map the loader expects is not in the object.
    #[error("map {name} missing from bpf object {object}")]
    MissingMap {
        object: &'static str,
        name: &'static str,
    },
    /// A map exists but its type or key/value sizes differ from the Rust layout.
    #[error("map {name} does not have the expected type or layout")]
    MapLayout {
        name: String,
        #[source]
        source: MapError,
    },
    /// A map operation (lookup, update, delete, create) failed.
    #[error("{op} on map {name} failed")]
    Map {
        op: &'static str,
        name: String,
        #[source]
        source: MapError,
    },
    /// The pin directory could not be created.
    #[error("failed to create pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A map could not be pinned.
    #[error("failed to pin map {name} at {path}")]
    Pin {
        name: String,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    /// A pinned map with an incompatible layout could not be removed.
    #[error("failed to remove incompatible pinned map {path}")]
    StalePin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
