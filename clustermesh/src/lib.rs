//! ClusterMesh: one actor per remote cluster importing its nodes, identities, ipcache and
//! services; global services; clustermesh-apiserver and kvstoremesh.
//!
//! Arrives with the ClusterMesh issue.
