//! The agent control plane as actors: endpoint manager and endpoints, identity allocator, policy
//! repository with its selector cache, service manager, ipcache, node manager and IPAM.
//!
//! Arrives with the agent issue. Architecture invariant: this crate talks to the datapath and the
//! kvstore only through traits (`Datapath`, `kvstore::Backend`), never to aya or etcd-client.
