//! The default security-relevant label filter, one test per rule.

use model::labels::{Label, LabelFilter, Labels};

fn is_identity(key: &str) -> bool {
    LabelFilter::default().is_identity_relevant(&Label::k8s(key, "v"))
}

#[test]
fn ordinary_labels_are_identity_labels() {
    assert!(is_identity("app"));
    assert!(is_identity("tier"));
    assert!(is_identity("k8s-app"));
}

#[test]
fn pod_namespace_is_kept_despite_io_kubernetes() {
    assert!(is_identity("io.kubernetes.pod.namespace"));
}

#[test]
fn other_io_kubernetes_labels_are_ignored() {
    assert!(!is_identity("io.kubernetes.pod.name"));
    assert!(!is_identity("io.kubernetes.pod.uid"));
    assert!(!is_identity("io.kubernetes.container.hash"));
}

#[test]
fn escaped_dots_are_literal() {
    // Upstream's patterns escape '.', so "ioXkubernetes" is not "io.kubernetes".
    assert!(is_identity("ioXkubernetes"));
}

#[test]
fn namespace_labels_are_kept() {
    assert!(is_identity("io.cilium.k8s.namespace.labels.team"));
    assert!(is_identity(
        "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
    ));
}

#[test]
fn app_kubernetes_io_is_kept() {
    assert!(is_identity("app.kubernetes.io/name"));
    assert!(is_identity("app.kubernetes.io/part-of"));
}

#[test]
fn kubernetes_io_prefix_is_ignored() {
    assert!(!is_identity("kubernetes.io/metadata.name"));
    assert!(!is_identity("kubernetes.io.foo"));
}

#[test]
fn statefulset_pod_name_is_ignored() {
    assert!(!is_identity("statefulset.kubernetes.io/pod-name"));
}

#[test]
fn pod_index_is_ignored() {
    assert!(!is_identity("apps.kubernetes.io/pod-index"));
}

#[test]
fn job_labels_are_ignored() {
    assert!(!is_identity("batch.kubernetes.io/job-completion-index"));
    assert!(!is_identity("batch.kubernetes.io/controller-uid"));
    assert!(!is_identity("controller-uid"));
    // The job name is stable across a job's pods and stays.
    assert!(is_identity("batch.kubernetes.io/job-name"));
}

#[test]
fn beta_kubernetes_io_is_ignored_anywhere_in_the_key() {
    assert!(!is_identity("beta.kubernetes.io/arch"));
    assert!(!is_identity("failure-domain.beta.kubernetes.io/zone"));
}

#[test]
fn k8s_io_prefix_is_ignored() {
    assert!(!is_identity("k8s.io/cluster-service"));
}

#[test]
fn pod_template_labels_are_ignored() {
    assert!(!is_identity("pod-template-generation"));
    assert!(!is_identity("pod-template-hash"));
}

#[test]
fn controller_revision_hash_is_ignored() {
    assert!(!is_identity("controller-revision-hash"));
}

#[test]
fn annotations_are_ignored() {
    assert!(!is_identity("annotation.kubernetes.io/config.seen"));
    assert!(!is_identity("annotation.hello"));
}

#[test]
fn etcd_node_is_ignored() {
    assert!(!is_identity("etcd_node"));
}

#[test]
fn patterns_are_anchored_at_the_key_start() {
    // "kubernetes.io" occurs inside these keys but not at their start.
    assert!(is_identity("topology.kubernetes.io/zone"));
    assert!(is_identity("my-pod-template-hash"));
}

#[test]
fn rules_apply_to_every_source() {
    let filter = LabelFilter::default();
    assert!(!filter.is_identity_relevant(&Label::new("container", "pod-template-hash", "x")));
    assert!(filter.is_identity_relevant(&Label::new(
        "container",
        "io.kubernetes.pod.namespace",
        "x"
    )));
}

#[test]
fn reserved_labels_are_always_kept() {
    let filter = LabelFilter::default();
    for label in [Label::host(), Label::world(), Label::reserved("annotation")] {
        assert!(filter.is_identity_relevant(&label), "{label}");
    }
}

#[test]
fn filter_splits_a_pod_label_set() {
    let labels: Labels = [
        Label::k8s("app", "web"),
        Label::k8s("io.kubernetes.pod.namespace", "default"),
        Label::k8s("io.cilium.k8s.policy.cluster", "default"),
        Label::k8s("pod-template-hash", "5d8f9c7b6"),
        Label::k8s("statefulset.kubernetes.io/pod-name", "web-0"),
        Label::host(),
    ]
    .into_iter()
    .collect();
    let (identity, info) = LabelFilter::default().filter(&labels);
    assert_eq!(
        identity.to_kvstore_string(),
        "k8s:app=web;reserved:host=;k8s:io.cilium.k8s.policy.cluster=default;\
         k8s:io.kubernetes.pod.namespace=default;"
    );
    assert_eq!(
        info.to_kvstore_string(),
        "k8s:pod-template-hash=5d8f9c7b6;k8s:statefulset.kubernetes.io/pod-name=web-0;"
    );
}
