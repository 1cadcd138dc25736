//! Field paths in upstream's JSON spelling, built while walking a document so that validation
//! and support errors can say exactly where the problem is.

use std::fmt;

/// A path such as `spec.ingress[0].toPorts[1]`; the empty path is the document root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(String);

impl FieldPath {
    pub(crate) fn root() -> Self {
        FieldPath(String::new())
    }

    /// The path of a named field below this one.
    pub(crate) fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_owned())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// The path of a list element below this one.
    pub(crate) fn index(&self, index: usize) -> Self {
        FieldPath(format!("{}[{index}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(document)")
        } else {
            f.write_str(&self.0)
        }
    }
}
