//! `cidr:` labels for IP prefixes.
//!
//! Upstream writes the masked prefix as the key, with every `:` of an IPv6 address replaced by
//! `-` because selector keys cannot hold a `:` (it separates the source). A key may not start or
//! end with `-` either, so a leading or trailing `:` becomes `0-` or `-0`: `::/0` is `0--0/0`.

use ipnet::IpNet;

use super::{Label, source};

impl Label {
    /// The `cidr:` label of a prefix, e.g. `cidr:10.0.0.0/8` or `cidr:2001-db8--0/32`. Host bits
    /// are cleared first, so `10.1.2.3/8` gives `cidr:10.0.0.0/8`.
    pub fn cidr(prefix: IpNet) -> Label {
        let address = prefix.trunc().addr().to_string();
        let last = address.len().saturating_sub(1);
        let mut key = String::with_capacity(address.len() + 6);
        for (i, ch) in address.char_indices() {
            match ch {
                ':' if i == 0 => key.push_str("0-"),
                ':' if i == last => key.push_str("-0"),
                ':' => key.push('-'),
                other => key.push(other),
            }
        }
        key.push('/');
        key.push_str(&prefix.prefix_len().to_string());
        Label::new(source::CIDR, key, "")
    }

    /// The prefix of a `cidr:` label without a value; `None` for any other label.
    pub fn cidr_prefix(&self) -> Option<IpNet> {
        if self.source != source::CIDR || !self.value.is_empty() {
            return None;
        }
        prefix_from_key(&self.key)
    }
}

/// Reads a `cidr:` label key back into a prefix (upstream's `LabelToPrefix`).
pub(crate) fn prefix_from_key(key: &str) -> Option<IpNet> {
    key.replace('-', ":").parse().ok()
}
