//! Test support shared by this crate's tests and other crates' tests (feature `test-util`):
//! the backend conformance suite and a private etcd server started per test.

pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
