//! The Hubble gRPC API (`flow`, `observer`, `peer`, `relay`) with upstream message names and field
//! numbers, generated with tonic.
//!
//! Arrives with the Hubble issue.
