//! The security-relevant label filter: which labels of an endpoint make up its identity.
//!
//! Many Kubernetes labels are unique per pod (`pod-template-hash`, a StatefulSet's pod name, a
//! Job's controller uid); if they counted, every pod would get its own identity and the identity
//! space (65k per cluster) would churn. Upstream's `pkg/labelsfilter` therefore splits labels
//! into identity labels and informational labels with a list of include and ignore patterns. This
//! is its default configuration.
//!
//! Decision rule, as upstream: every pattern is anchored at the start of the key. Among the
//! include patterns that match, the longest match counts; among the ignore patterns, the shortest.
//! A label is an identity label when no ignore pattern matches, or when the include match is
//! longer than the ignore match: `io.kubernetes.pod.namespace` is kept although `io.kubernetes`
//! is ignored. Reserved labels are always identity labels (upstream's `reserved:.*` include
//! pattern spans the whole key).

use super::{Label, Labels, keys};

/// The part of a key a pattern matches, anchored at the key's start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A literal prefix (upstream's escaped regexps such as `io\.kubernetes`).
    Prefix(&'static str),
    /// A literal prefix followed by anything (`annotation.*`): the match spans the whole key.
    PrefixThenRest(&'static str),
    /// Anything, then a literal (`.*beta\.kubernetes\.io`): the greedy match ends after the
    /// literal's last occurrence.
    AnyThenLiteral(&'static str),
}

impl Pattern {
    /// The length of the match at the start of `key`, if the pattern matches.
    fn match_len(&self, key: &str) -> Option<usize> {
        match self {
            Pattern::Prefix(prefix) => key.starts_with(prefix).then_some(prefix.len()),
            Pattern::PrefixThenRest(prefix) => key.starts_with(prefix).then_some(key.len()),
            Pattern::AnyThenLiteral(literal) => key.rfind(literal).map(|at| at + literal.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    ignore: bool,
    pattern: Pattern,
}

const fn include(pattern: Pattern) -> Rule {
    Rule {
        ignore: false,
        pattern,
    }
}

const fn ignore(pattern: Pattern) -> Rule {
    Rule {
        ignore: true,
        pattern,
    }
}

/// Upstream's default list, in upstream's order; none of these rules names a source, so they
/// apply to labels of every source.
const DEFAULT_RULES: &[Rule] = &[
    include(Pattern::Prefix(keys::POD_NAMESPACE)),
    include(Pattern::Prefix(keys::NAMESPACE_LABELS)),
    include(Pattern::Prefix("app.kubernetes.io")),
    ignore(Pattern::Prefix("io.kubernetes")),
    ignore(Pattern::Prefix("kubernetes.io")),
    ignore(Pattern::Prefix("statefulset.kubernetes.io/pod-name")),
    ignore(Pattern::Prefix("apps.kubernetes.io/pod-index")),
    ignore(Pattern::Prefix("batch.kubernetes.io/job-completion-index")),
    ignore(Pattern::Prefix("batch.kubernetes.io/controller-uid")),
    ignore(Pattern::AnyThenLiteral("beta.kubernetes.io")),
    ignore(Pattern::Prefix("k8s.io")),
    ignore(Pattern::Prefix("pod-template-generation")),
    ignore(Pattern::Prefix("pod-template-hash")),
    ignore(Pattern::Prefix("controller-revision-hash")),
    ignore(Pattern::PrefixThenRest("annotation")),
    ignore(Pattern::Prefix("controller-uid")),
    ignore(Pattern::Prefix("etcd_node")),
];

/// Splits labels into identity labels and informational labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    rules: &'static [Rule],
}

/// Upstream's default configuration (no `--label` flags, no prefix file).
impl Default for LabelFilter {
    fn default() -> Self {
        Self {
            rules: DEFAULT_RULES,
        }
    }
}

impl LabelFilter {
    /// Returns `(identity_labels, info_labels)`; every input label lands in exactly one of them.
    pub fn filter(&self, labels: &Labels) -> (Labels, Labels) {
        let mut identity = Labels::new();
        let mut info = Labels::new();
        for label in labels {
            if self.is_identity_relevant(label) {
                identity.insert(label.clone());
            } else {
                info.insert(label.clone());
            }
        }
        (identity, info)
    }

    /// Whether the label counts towards the endpoint's identity.
    pub fn is_identity_relevant(&self, label: &Label) -> bool {
        if label.is_reserved() {
            return true;
        }
        let mut included = 0;
        let mut ignored: Option<usize> = None;
        for rule in self.rules {
            let Some(len) = rule.pattern.match_len(&label.key) else {
                continue;
            };
            if rule.ignore {
                ignored = Some(ignored.map_or(len, |shortest| shortest.min(len)));
            } else {
                included = included.max(len);
            }
        }
        match ignored {
            None => true,
            Some(ignored) => included > ignored,
        }
    }
}
