//! The eBPF datapath: C programs under `bpf/`, their `#[repr(C)]` map layouts, the aya loader and
//! the Datapath actor, which is the only writer of BPF maps.
//!
//! Arrives with the datapath issue.
