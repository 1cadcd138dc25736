//! What `cilium connectivity test` deploys and runs: upstream's workload, the services in
//! front of it, and the scenarios (upstream tests) with their policies and probes.
//!
//! Everything here is data; the parent module applies it to a lab. Policies are upstream's
//! manifests with `namespace: cilium-test` added (the CLI applies them to that namespace).
//! Upstream's manifests mark the selectors meant to reach other clusters with an `Exists`
//! requirement on `io.cilium.k8s.policy.cluster`, since selectors without the cluster key
//! select the local cluster only; the ones here keep that mark.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::ECHO_PORT;

/// One pod of the test workload: its name, labels and where it runs (cluster and node
/// indexes; the node wraps on clusters with fewer nodes).
pub(super) struct TestPod {
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub cluster: usize,
    pub node: usize,
}

/// Upstream's workload (names and labels), plus `echo-other-cluster`, upstream's echo pod of
/// the other cluster in a multi-cluster run, deployed only when the lab has a second cluster.
pub(super) const PODS: [TestPod; 5] = [
    TestPod {
        name: "client",
        labels: &[("name", "client"), ("kind", "client")],
        cluster: 0,
        node: 0,
    },
    TestPod {
        name: "client2",
        labels: &[("name", "client2"), ("kind", "client"), ("other", "client")],
        cluster: 0,
        node: 0,
    },
    TestPod {
        name: "echo-same-node",
        labels: &[("name", "echo-same-node"), ("kind", "echo")],
        cluster: 0,
        node: 0,
    },
    TestPod {
        name: "echo-other-node",
        labels: &[("name", "echo-other-node"), ("kind", "echo")],
        cluster: 0,
        node: 1,
    },
    TestPod {
        name: "echo-other-cluster",
        labels: &[("name", "echo-other-cluster"), ("kind", "echo")],
        cluster: 1,
        node: 0,
    },
];

/// A ClusterIP service of the workload, as `cilium service apply` writes it: one record per
/// cluster that holds backends, all with the same frontend.
pub(super) struct TestService {
    pub name: &'static str,
    pub frontend: SocketAddrV4,
    /// The pods behind it, on [`ECHO_PORT`].
    pub backends: &'static [&'static str],
    /// A global service (upstream `service.cilium.io/global`): every cluster's record shares
    /// its backends with the others.
    pub global: bool,
}

const fn frontend(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 96, 1, last), ECHO_PORT)
}

/// Upstream's `echo-same-node` and `echo-other-node` services, and the global service a
/// multi-cluster run reaches both clusters through. A service is deployed only when every
/// one of its backends is.
pub(super) const SERVICES: [TestService; 3] = [
    TestService {
        name: "echo-same-node",
        frontend: frontend(1),
        backends: &["echo-same-node"],
        global: false,
    },
    TestService {
        name: "echo-other-node",
        frontend: frontend(2),
        backends: &["echo-other-node"],
        global: false,
    },
    TestService {
        name: "echo-global",
        frontend: frontend(3),
        backends: &["echo-same-node", "echo-other-cluster"],
        global: true,
    },
];

/// Whether a probe gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        })
    }
}

/// Where a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// A test pod, by name, on [`ECHO_PORT`]; it must answer itself.
    Pod(&'static str),
    /// A service's frontend, by service name; one of its backends must answer.
    Service(&'static str),
    /// A service's frontend, probed until every one of its backends has answered.
    EveryBackend(&'static str),
    /// The lab's external echo server.
    World,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    pub from: &'static str,
    pub to: Peer,
    pub expect: Verdict,
}

const fn probe(from: &'static str, to: Peer, expect: Verdict) -> Probe {
    Probe { from, to, expect }
}

use Peer::{EveryBackend, Pod, Service, World};
use Verdict::{Allowed, Denied};

/// Which clusters' kvstores a scenario's policy goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PolicyClusters {
    /// One cluster, by index.
    One(usize),
    /// Every cluster of the lab, as upstream applies a test's policies to every cluster of a
    /// multi-cluster run.
    Every,
}

/// One scenario: upstream's test name, its policy (YAML documents) and where it goes, how
/// many clusters it needs, and its probes, in groups (upstream's `PodToPod` and the like, and
/// single probes) so the table names what it reuses.
pub(super) struct Scenario {
    pub name: &'static str,
    pub policy: Option<&'static str>,
    pub policy_clusters: PolicyClusters,
    pub clusters: usize,
    probes: &'static [&'static [Probe]],
    /// Probes to the other cluster's workload, run when the lab has a second cluster and
    /// skipped otherwise: upstream probes every echo pod it deployed, the other cluster's too.
    cross_cluster: &'static [&'static [Probe]],
}

impl Scenario {
    /// The probes the scenario runs on every lab it runs on.
    pub fn probes(&self) -> impl Iterator<Item = &'static Probe> + use<> {
        self.probes.iter().flat_map(|group| group.iter())
    }

    /// The probes to the other cluster, for a lab that has one.
    pub fn cross_cluster_probes(&self) -> impl Iterator<Item = &'static Probe> + use<> {
        self.cross_cluster.iter().flat_map(|group| group.iter())
    }
}

/// Upstream `client-egress-to-echo.yaml`: clients may talk to echo pods on 8080 only, those of
/// every cluster (the cluster key's `Exists` lifts the local-cluster default of selectors).
const CLIENT_EGRESS_TO_ECHO: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEndpoints:
    - matchLabels:
        kind: echo
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `client-egress-to-echo-expression.yaml`: `client-egress` with set-based selectors.
const CLIENT_EGRESS_TO_ECHO_EXPRESSION: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo-expression
  namespace: cilium-test
spec:
  endpointSelector:
    matchExpressions:
    - { key: kind, operator: In, values: [ "client" ] }
  egress:
  - toEndpoints:
    - matchExpressions:
      - { key: kind, operator: In, values: [ "echo" ] }
      - { key: other, operator: DoesNotExist }
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `client-egress-to-echo-port-range.yaml`: as above, through the range 4096-8191.
const CLIENT_EGRESS_TO_ECHO_PORT_RANGE: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo-port-range
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEndpoints:
    - matchLabels:
        kind: echo
    toPorts:
    - ports:
      - port: "4096"
        endPort: 8191
        protocol: TCP
"#;

/// Upstream `client-ingress-from-client2.yaml`: clients accept only `other=client`.
const CLIENT_INGRESS_FROM_CLIENT2: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-ingress-from-client2
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  ingress:
  - fromEndpoints:
    - matchLabels:
        other: client
"#;

/// Upstream `echo-ingress-from-other-client.yaml`: echo pods accept only `other=client`, of any
/// cluster, on 8080.
const ECHO_INGRESS_FROM_OTHER_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: echo
  ingress:
  - fromEndpoints:
    - matchLabels:
        other: client
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `echo-ingress-from-other-client-deny.yaml` with the allow-all ingress it is tested
/// against: everything may reach the echo pods except `other=client` of any cluster.
const ECHO_INGRESS_FROM_OTHER_CLIENT_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: cilium-test
spec:
  endpointSelector: {}
  ingress:
  - fromEntities:
    - all
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client-deny
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: echo
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        other: client
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"#;

/// Upstream `deny-all-ingress.yaml`: an empty ingress rule selects default deny, allows nothing.
const ALL_INGRESS_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-ingress-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  ingress:
  - {}
"#;

/// Upstream `deny-all-egress.yaml`.
const ALL_EGRESS_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-egress-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  egress:
  - {}
"#;

/// Upstream `deny-all-entities.yaml`: deny rules for every entity both ways.
const ALL_ENTITIES_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-entities-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  egressDeny:
  - toEntities:
    - all
  ingressDeny:
  - fromEntities:
    - all
"#;

/// Upstream `client-egress-to-entities-world.yaml`: clients may reach the world on port 80.
const CLIENT_EGRESS_TO_ENTITIES_WORLD: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-entities-world
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEntities:
    - world
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

/// Upstream `client-egress-to-cidr-external.yaml`, aimed at the lab's external echo server
/// instead of `1.1.1.1`.
const CLIENT_EGRESS_TO_CIDR_EXTERNAL: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-cidr
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toCIDRSet:
    - cidr: 192.168.100.200/32
"#;

/// Upstream `allow-cluster-entity.yaml` (`entity-cluster`): clients may reach their own
/// cluster only.
const ALLOW_CLUSTER_ENTITY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: entity-cluster
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEntities:
    - cluster
"#;

/// Upstream `PodToPod`: every client to every echo pod of cluster 1.
const fn pod_to_pod(client: Verdict, client2: Verdict) -> [Probe; 4] {
    [
        probe("client", Pod("echo-same-node"), client),
        probe("client", Pod("echo-other-node"), client),
        probe("client2", Pod("echo-same-node"), client2),
        probe("client2", Pod("echo-other-node"), client2),
    ]
}

/// Upstream `PodToPod` towards the other cluster's echo pod, from each client.
const fn pod_to_other_cluster(client: Verdict, client2: Verdict) -> [Probe; 2] {
    [
        probe("client", Pod("echo-other-cluster"), client),
        probe("client2", Pod("echo-other-cluster"), client2),
    ]
}

/// Upstream `PodToService`: every client to both echo services.
const fn pod_to_service(client: Verdict, client2: Verdict) -> [Probe; 4] {
    [
        probe("client", Service("echo-same-node"), client),
        probe("client", Service("echo-other-node"), client),
        probe("client2", Service("echo-same-node"), client2),
        probe("client2", Service("echo-other-node"), client2),
    ]
}

/// The scenario that reads the agents' drop counters; it runs after every other one.
pub(super) const NO_UNEXPECTED_PACKET_DROPS: &str = "no-unexpected-packet-drops";

/// The probing scenarios, in upstream's order; the multi-cluster ones last.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no-policies",
        policy: None,
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[
            &pod_to_pod(Allowed, Allowed),
            &[
                probe("client", Pod("client2"), Allowed),
                probe("client2", Pod("client"), Allowed),
            ],
            &pod_to_service(Allowed, Allowed),
            &[
                probe("client", World, Allowed),
                probe("client2", World, Allowed),
            ],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "all-ingress-deny",
        policy: Some(ALL_INGRESS_DENY),
        policy_clusters: PolicyClusters::Every,
        clusters: 1,
        probes: &[
            &pod_to_pod(Denied, Denied),
            &[
                probe("client", Pod("client2"), Denied),
                probe("client2", Pod("client"), Denied),
                // The ingress policy is the backend's: a service changes nothing.
                probe("client", Service("echo-same-node"), Denied),
                probe("client", Service("echo-other-node"), Denied),
                // Replies from the world are not ingress connections.
                probe("client", World, Allowed),
            ],
        ],
        cross_cluster: &[
            &pod_to_other_cluster(Denied, Denied),
            &[probe("client", Service("echo-global"), Denied)],
        ],
    },
    Scenario {
        name: "all-egress-deny",
        policy: Some(ALL_EGRESS_DENY),
        policy_clusters: PolicyClusters::Every,
        clusters: 1,
        probes: &[
            &pod_to_pod(Denied, Denied),
            &[
                probe("client", Pod("client2"), Denied),
                probe("client", Service("echo-other-node"), Denied),
                probe("client", World, Denied),
            ],
        ],
        cross_cluster: &[
            &pod_to_other_cluster(Denied, Denied),
            &[probe("client", Service("echo-global"), Denied)],
        ],
    },
    Scenario {
        name: "all-entities-deny",
        policy: Some(ALL_ENTITIES_DENY),
        policy_clusters: PolicyClusters::Every,
        clusters: 1,
        probes: &[
            &pod_to_pod(Denied, Denied),
            &[probe("client", World, Denied)],
        ],
        cross_cluster: &[&pod_to_other_cluster(Denied, Denied)],
    },
    Scenario {
        name: "client-ingress",
        policy: Some(CLIENT_INGRESS_FROM_CLIENT2),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[&[
            probe("client2", Pod("client"), Allowed),
            probe("client", Pod("client2"), Denied),
        ]],
        cross_cluster: &[],
    },
    Scenario {
        name: "echo-ingress",
        policy: Some(ECHO_INGRESS_FROM_OTHER_CLIENT),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[
            &pod_to_pod(Denied, Allowed),
            &pod_to_service(Denied, Allowed),
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "echo-ingress-from-other-client-deny",
        policy: Some(ECHO_INGRESS_FROM_OTHER_CLIENT_DENY),
        policy_clusters: PolicyClusters::Every,
        clusters: 1,
        probes: &[&pod_to_pod(Allowed, Denied)],
        // The other cluster's copy of the policy denies this cluster's `other=client` too.
        cross_cluster: &[&pod_to_other_cluster(Allowed, Denied)],
    },
    Scenario {
        name: "client-egress",
        policy: Some(CLIENT_EGRESS_TO_ECHO),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[
            &pod_to_pod(Allowed, Allowed),
            &[
                // Egress policy sees the backend a service picked, not the frontend.
                probe("client", Service("echo-same-node"), Allowed),
                probe("client", Service("echo-other-node"), Allowed),
                probe("client", World, Denied),
            ],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "client-egress-expression",
        policy: Some(CLIENT_EGRESS_TO_ECHO_EXPRESSION),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[
            &pod_to_pod(Allowed, Allowed),
            &[probe("client2", World, Denied)],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "client-egress-to-echo-port-range",
        policy: Some(CLIENT_EGRESS_TO_ECHO_PORT_RANGE),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[
            &pod_to_pod(Allowed, Allowed),
            &[probe("client", World, Denied)],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "to-entities-world",
        policy: Some(CLIENT_EGRESS_TO_ENTITIES_WORLD),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[&[
            probe("client", World, Allowed),
            probe("client2", World, Allowed),
            probe("client", Pod("echo-same-node"), Denied),
            probe("client", Pod("echo-other-node"), Denied),
            // A ClusterIP is not the world: the backend behind it is a pod.
            probe("client", Service("echo-other-node"), Denied),
        ]],
        cross_cluster: &[],
    },
    Scenario {
        name: "to-cidr-external",
        policy: Some(CLIENT_EGRESS_TO_CIDR_EXTERNAL),
        policy_clusters: PolicyClusters::One(0),
        clusters: 1,
        probes: &[&[
            probe("client", World, Allowed),
            probe("client2", World, Allowed),
            probe("client", Pod("echo-same-node"), Denied),
            probe("client2", Pod("echo-other-node"), Denied),
        ]],
        cross_cluster: &[],
    },
    Scenario {
        name: "no-policies-cross-cluster",
        policy: None,
        policy_clusters: PolicyClusters::One(0),
        clusters: 2,
        probes: &[
            &pod_to_other_cluster(Allowed, Allowed),
            &[probe("client", EveryBackend("echo-global"), Allowed)],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "clustermesh-policy-cnp-ingress",
        policy: Some(ECHO_INGRESS_FROM_OTHER_CLIENT),
        policy_clusters: PolicyClusters::Every,
        clusters: 2,
        probes: &[&pod_to_other_cluster(Denied, Allowed)],
        cross_cluster: &[],
    },
    Scenario {
        name: "clustermesh-policy-cnp-egress",
        policy: Some(CLIENT_EGRESS_TO_ECHO),
        policy_clusters: PolicyClusters::Every,
        clusters: 2,
        probes: &[
            &pod_to_other_cluster(Allowed, Allowed),
            // Upstream probes the other cluster only; the world shows the policy is in force.
            &[probe("client", World, Denied)],
        ],
        cross_cluster: &[],
    },
    Scenario {
        name: "cluster-entity-multi-cluster",
        policy: Some(ALLOW_CLUSTER_ENTITY),
        policy_clusters: PolicyClusters::One(0),
        clusters: 2,
        probes: &[&[
            probe("client", Pod("echo-same-node"), Allowed),
            probe("client", Pod("echo-other-node"), Allowed),
            probe("client", Pod("echo-other-cluster"), Denied),
            probe("client", World, Denied),
        ]],
        cross_cluster: &[],
    },
];
