//! Name patterns of the `node_name` and `source_fqdn`/`destination_fqdn` filters.
//!
//! Upstream Hubble turns these patterns into regular expressions; we compile them into a small
//! glob automaton instead, with the same language: a pattern is trimmed, loses at most one
//! trailing dot and is lower-cased; it may hold ASCII letters, digits, `-`, `_` and `.`, and `*`
//! stands for any run of `[-.0-9a-z]` (note: not `_`). A node-name pattern is `cluster/node`,
//! where either side may be empty to mean "any name"; without a `/` it is a node pattern for
//! every cluster. Matching is case-sensitive on the flow's side, as upstream's regex is.
//!
//! Matching runs a bit-parallel NFA over the pattern positions, so it never backtracks and never
//! allocates: patterns are limited to [`MAX_PATTERN_LEN`] characters, which covers every DNS
//! name (at most 253).

/// Longest pattern element we accept, in characters after canonicalisation.
pub const MAX_PATTERN_LEN: usize = 255;

/// Cluster name upstream assumes for a flow whose `node_name` has no `cluster/` part.
const DEFAULT_CLUSTER: &str = "default";

/// Why a name pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern")]
    Empty,
    #[error("multiple trailing dots in pattern")]
    MultipleTrailingDots,
    #[error("too many slashes in pattern, expected at most one (cluster/node)")]
    TooManySlashes,
    #[error(
        "invalid character {ch:?} in pattern: only a-z, 0-9, '-', '_', '.' and '*' are allowed"
    )]
    InvalidChar { ch: char },
    #[error("pattern is longer than {MAX_PATTERN_LEN} characters")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Star,
}

/// One compiled FQDN-style glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

/// The characters `*` may stand for.
fn star_class(b: u8) -> bool {
    b == b'-' || b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()
}

/// A fixed-size set of NFA states (pattern positions `0..=MAX_PATTERN_LEN`).
#[derive(Clone, Copy, Default)]
struct States([u64; 4]);

impl States {
    fn insert(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }
}

impl Glob {
    /// Compiles one FQDN pattern element (no `/`).
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let trimmed = raw.trim();
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(PatternError::Empty);
        }
        if trimmed.ends_with('.') {
            return Err(PatternError::MultipleTrailingDots);
        }
        let tokens = trimmed
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                match c {
                    '*' => Ok(Token::Star),
                    'a'..='z' | '0'..='9' | '-' | '_' | '.' => Ok(Token::Byte(c as u8)),
                    _ => Err(PatternError::InvalidChar { ch: c }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if tokens.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        Ok(Self { tokens })
    }

    /// Adds `state` and, because `*` may match nothing, every state reachable over stars.
    fn close(&self, states: &mut States, mut state: usize) {
        states.insert(state);
        while let Some(Token::Star) = self.tokens.get(state) {
            state += 1;
            states.insert(state);
        }
    }

    /// Whether the whole of `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        let mut current = States::default();
        self.close(&mut current, 0);
        for &b in name.as_bytes() {
            let mut next = States::default();
            for (i, token) in self.tokens.iter().enumerate() {
                if !current.contains(i) {
                    continue;
                }
                match *token {
                    Token::Byte(want) if want == b => self.close(&mut next, i + 1),
                    Token::Star if star_class(b) => self.close(&mut next, i),
                    _ => {}
                }
            }
            if next.is_empty() {
                return false;
            }
            current = next;
        }
        current.contains(self.tokens.len())
    }
}

/// Whether `name` is a non-empty dot-separated sequence of non-empty `[-0-9_a-z]` labels: what
/// an empty side of a node-name pattern matches.
fn is_any_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b == b'-' || b == b'_' || b.is_ascii_digit() || b.is_ascii_lowercase())
        })
}

/// One side of a node-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePart {
    Any,
    Glob(Glob),
}

impl NamePart {
    fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            Ok(Self::Any)
        } else {
            Glob::parse(raw).map(Self::Glob)
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => is_any_name(name),
            Self::Glob(glob) => glob.matches(name),
        }
    }
}

/// A compiled `node_name` pattern: `[cluster/]node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNamePattern {
    cluster: NamePart,
    node: NamePart,
}

impl NodeNamePattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut parts = raw.split('/');
        let (cluster, node) = match (parts.next(), parts.next(), parts.next()) {
            (Some(node), None, _) => ("", node),
            (Some(cluster), Some(node), None) => (cluster, node),
            _ => return Err(PatternError::TooManySlashes),
        };
        Ok(Self {
            cluster: NamePart::parse(cluster)?,
            node: NamePart::parse(node)?,
        })
    }

    /// Matches a flow's `node_name`; a name without `cluster/` belongs to the default cluster,
    /// and an empty name matches nothing.
    pub fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            return false;
        }
        let (cluster, node) = node_name
            .split_once('/')
            .unwrap_or((DEFAULT_CLUSTER, node_name));
        self.cluster.matches(cluster) && self.node.matches(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_match_underscore_or_slash() {
        let glob = Glob::parse("a*b").unwrap();
        assert!(glob.matches("ab"));
        assert!(glob.matches("a-x.yb"));
        assert!(!glob.matches("a_b"));
        assert!(!glob.matches("a/b"));
    }

    #[test]
    fn literal_underscore_after_star_still_matches() {
        // A backtracking matcher that remembers only the last star gets this wrong.
        let glob = Glob::parse("*x_*x").unwrap();
        assert!(glob.matches("ax_bx"));
        assert!(glob.matches("x_x"));
        assert!(!glob.matches("axbx"));
    }
}
