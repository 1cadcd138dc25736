//! Label selectors of the `source_label`/`destination_label` filters (`--from-label`,
//! `--to-label`).
//!
//! The syntax is Kubernetes' string form (`app=foo`, `app==foo`, `app!=foo`, `app in (a,b)`,
//! `app notin (a,b)`, `app`, `!app`, `n>1`, `n<5`, comma-separated requirements that must all
//! hold), extended as upstream Hubble extends it: a key may carry a Cilium label source
//! (`k8s:app=foo`, `reserved:host`); a key without one, or with `any:`, matches a label of any
//! source. Flow endpoints carry labels as `source:key=value` strings; they are split on the fly,
//! without allocating, each time a selector is evaluated.
//!
//! Semantics follow Kubernetes: `!=`, `notin` and `!key` hold when the key is absent; `>`/`<`
//! need the label's value to be an integer. An empty selector matches every endpoint.
//! Where several labels share a key under different sources, a source-less requirement
//! considers all of them (upstream looks only at the first).

use std::fmt;

/// Why a label selector string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorParseError {
    #[error("found {found}, expected {expected}")]
    UnexpectedToken {
        found: String,
        expected: &'static str,
    },
    #[error("unexpected end of selector, expected {expected}")]
    UnexpectedEnd { expected: &'static str },
    #[error("operator {operator} needs at least one value")]
    EmptyValueSet { operator: &'static str },
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid label source {source_name:?}: sources use only a-z, 0-9 and '-'")]
    InvalidSource { source_name: String },
    #[error("invalid label value {value:?}: {reason}")]
    InvalidValue { value: String, reason: &'static str },
    #[error("value {value:?} of operator {operator} is not an integer")]
    InvalidInteger {
        value: String,
        operator: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    Comma,
    Open,
    Close,
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Gt,
    Lt,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Token::Ident(ident) => return write!(f, "{ident:?}"),
            Token::Comma => "','",
            Token::Open => "'('",
            Token::Close => "')'",
            Token::Eq => "'='",
            Token::DoubleEq => "'=='",
            Token::NotEq => "'!='",
            Token::Bang => "'!'",
            Token::Gt => "'>'",
            Token::Lt => "'<'",
        };
        f.write_str(text)
    }
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!' | '<' | '>')
}

fn lex(input: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = input;
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            c if c.is_whitespace() => {
                rest = &rest[c.len_utf8()..];
                continue;
            }
            ',' => (Token::Comma, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            '>' => (Token::Gt, 1),
            '<' => (Token::Lt, 1),
            '=' if rest.starts_with("==") => (Token::DoubleEq, 2),
            '=' => (Token::Eq, 1),
            '!' if rest.starts_with("!=") => (Token::NotEq, 2),
            '!' => (Token::Bang, 1),
            _ => {
                let len = rest.find(is_special).unwrap_or(rest.len());
                (Token::Ident(&rest[..len]), len)
            }
        };
        tokens.push(token);
        rest = &rest[len..];
    }
    tokens
}

/// A selector key: the label source it requires (`None` for any) and the label key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    source: Option<Box<str>>,
    key: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    Exists,
    DoesNotExist,
    In(Vec<Box<str>>),
    NotIn(Vec<Box<str>>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: Key,
    operator: Operator,
}

/// A compiled label selector; all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits a flow label `source:key=value` (or `key=value`, `$key`) into its parts without
/// allocating. The source ends at a `:` before the first `=`; no source means `unspec`.
fn split_flow_label(label: &str) -> (&str, &str, &str) {
    let (head, value) = label.split_once('=').unwrap_or((label, ""));
    if let Some(key) = head.strip_prefix('$') {
        return ("reserved", key, value);
    }
    match head.split_once(':') {
        Some((source, key)) => (source, key, value),
        None => ("unspec", head, value),
    }
}

impl Key {
    fn parse(raw: &str) -> Result<Self, SelectorParseError> {
        let (source, key) = match raw.split_once(':') {
            Some((source, key)) => {
                let valid = !source.is_empty()
                    && source
                        .bytes()
                        .all(|b| b == b'-' || b.is_ascii_digit() || b.is_ascii_lowercase());
                if !valid {
                    return Err(SelectorParseError::InvalidSource {
                        source_name: source.to_owned(),
                    });
                }
                (Some(source).filter(|s| *s != "any"), key)
            }
            None => (None, raw),
        };
        check_qualified_name(key)?;
        Ok(Self {
            source: source.map(Box::from),
            key: Box::from(key),
        })
    }

    /// The values of the flow labels this key refers to.
    fn values<'a>(&'a self, labels: &'a [String]) -> impl Iterator<Item = &'a str> + 'a {
        labels.iter().filter_map(move |label| {
            let (source, key, value) = split_flow_label(label);
            let source_ok = self.source.as_deref().is_none_or(|want| want == source);
            (source_ok && key == &*self.key).then_some(value)
        })
    }
}

/// A Kubernetes label name: 1 to 63 characters of `[-A-Za-z0-9_.]`, alphanumeric at both ends.
fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain, the optional prefix of a label key.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || *b == b'-')
        })
}

fn check_qualified_name(key: &str) -> Result<(), SelectorParseError> {
    let invalid = |reason| {
        Err(SelectorParseError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return invalid("the prefix before '/' must be a DNS subdomain");
            }
            name
        }
        None => key,
    };
    if is_label_name(name) {
        Ok(())
    } else {
        invalid(
            "a name must be 1 to 63 characters of a-z, A-Z, 0-9, '-', '_' or '.', \
             starting and ending with a letter or digit",
        )
    }
}

fn check_value(value: &str) -> Result<(), SelectorParseError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorParseError::InvalidValue {
            value: value.to_owned(),
            reason: "a value is empty or 1 to 63 characters of a-z, A-Z, 0-9, '-', '_' or '.', \
                     starting and ending with a letter or digit",
        })
    }
}

struct Parser<'a> {
    tokens: std::iter::Peekable<std::vec::IntoIter<Token<'a>>>,
}

impl<'a> Parser<'a> {
    fn next(&mut self, expected: &'static str) -> Result<Token<'a>, SelectorParseError> {
        self.tokens
            .next()
            .ok_or(SelectorParseError::UnexpectedEnd { expected })
    }

    fn unexpected<T>(found: Token<'_>, expected: &'static str) -> Result<T, SelectorParseError> {
        Err(SelectorParseError::UnexpectedToken {
            found: found.to_string(),
            expected,
        })
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorParseError> {
        const KEY: &str = "a label key or '!'";
        let token = self.next(KEY)?;
        if token == Token::Bang {
            return match self.next("a label key")? {
                Token::Ident(key) => Ok(Requirement {
                    key: Key::parse(key)?,
                    operator: Operator::DoesNotExist,
                }),
                other => Self::unexpected(other, "a label key"),
            };
        }
        let Token::Ident(key) = token else {
            return Self::unexpected(token, KEY);
        };
        let key = Key::parse(key)?;
        const OPERATOR: &str = "',', '=', '==', '!=', 'in', 'notin', '>' or '<'";
        let operator = match self.tokens.peek().copied() {
            None | Some(Token::Comma) => Operator::Exists,
            Some(token) => {
                self.tokens.next();
                match token {
                    Token::Eq | Token::DoubleEq => Operator::In(vec![self.exact_value()?]),
                    Token::NotEq => Operator::NotIn(vec![self.exact_value()?]),
                    Token::Ident("in") => Operator::In(self.value_set("in")?),
                    Token::Ident("notin") => Operator::NotIn(self.value_set("notin")?),
                    Token::Gt => Operator::GreaterThan(self.integer(">")?),
                    Token::Lt => Operator::LessThan(self.integer("<")?),
                    other => return Self::unexpected(other, OPERATOR),
                }
            }
        };
        Ok(Requirement { key, operator })
    }

    /// The value after `=`, `==` or `!=`; nothing before a `,` or the end is the empty value.
    fn exact_value(&mut self) -> Result<Box<str>, SelectorParseError> {
        match self.tokens.peek().copied() {
            None | Some(Token::Comma) => Ok(Box::from("")),
            Some(Token::Ident(value)) => {
                self.tokens.next();
                check_value(value)?;
                Ok(Box::from(value))
            }
            Some(other) => Self::unexpected(other, "a label value"),
        }
    }

    /// `(v1, v2, ...)`; an element left out between commas is the empty value, as in
    /// Kubernetes.
    fn value_set(&mut self, operator: &'static str) -> Result<Vec<Box<str>>, SelectorParseError> {
        match self.next("'('")? {
            Token::Open => {}
            other => return Self::unexpected(other, "'('"),
        }
        if self.tokens.peek() == Some(&Token::Close) {
            return Err(SelectorParseError::EmptyValueSet { operator });
        }
        let mut values = Vec::new();
        loop {
            let value = match self.tokens.peek().copied() {
                Some(Token::Ident(value)) => {
                    self.tokens.next();
                    check_value(value)?;
                    value
                }
                _ => "",
            };
            values.push(Box::from(value));
            match self.next("',' or ')'")? {
                Token::Comma => {}
                Token::Close => return Ok(values),
                other => return Self::unexpected(other, "',' or ')'"),
            }
        }
    }

    fn integer(&mut self, operator: &'static str) -> Result<i64, SelectorParseError> {
        match self.next("an integer")? {
            Token::Ident(value) => value
                .parse()
                .map_err(|_| SelectorParseError::InvalidInteger {
                    value: value.to_owned(),
                    operator,
                }),
            other => Self::unexpected(other, "an integer"),
        }
    }
}

impl LabelSelector {
    /// Parses a selector string; see the module docs for the syntax.
    pub fn parse(input: &str) -> Result<Self, SelectorParseError> {
        let mut parser = Parser {
            tokens: lex(input).into_iter().peekable(),
        };
        let mut requirements = Vec::new();
        if parser.tokens.peek().is_none() {
            return Ok(Self { requirements });
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.tokens.next() {
                None => return Ok(Self { requirements }),
                Some(Token::Comma) => {}
                Some(other) => return Parser::unexpected(other, "',' or the end"),
            }
        }
    }

    /// Whether an endpoint with these `source:key=value` labels is selected.
    pub fn matches(&self, labels: &[String]) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &[String]) -> bool {
        let mut values = self.key.values(labels);
        match &self.operator {
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
            Operator::In(set) => values.any(|v| set.iter().any(|s| **s == *v)),
            Operator::NotIn(set) => !values.any(|v| set.iter().any(|s| **s == *v)),
            Operator::GreaterThan(n) => values.any(|v| v.parse::<i64>().is_ok_and(|v| v > *n)),
            Operator::LessThan(n) => values.any(|v| v.parse::<i64>().is_ok_and(|v| v < *n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flow_label_split() {
        assert_eq!(split_flow_label("k8s:app=web"), ("k8s", "app", "web"));
        assert_eq!(split_flow_label("reserved:host"), ("reserved", "host", ""));
        assert_eq!(split_flow_label("app=a:b"), ("unspec", "app", "a:b"));
        assert_eq!(split_flow_label("$world"), ("reserved", "world", ""));
    }

    #[test]
    fn source_restricts_and_any_does_not() {
        let flow = labels(&["container:app=web", "k8s:tier=db"]);
        assert!(!LabelSelector::parse("k8s:app=web").unwrap().matches(&flow));
        assert!(
            LabelSelector::parse("container:app=web")
                .unwrap()
                .matches(&flow)
        );
        assert!(LabelSelector::parse("any:app=web").unwrap().matches(&flow));
        assert!(
            LabelSelector::parse("app=web, k8s:tier")
                .unwrap()
                .matches(&flow)
        );
    }

    #[test]
    fn value_sets_with_empty_elements() {
        let selector = LabelSelector::parse("app in (web,)").unwrap();
        assert!(selector.matches(&labels(&["k8s:app"])));
        assert!(selector.matches(&labels(&["k8s:app=web"])));
        assert!(!selector.matches(&labels(&["k8s:app=db"])));
    }
}
