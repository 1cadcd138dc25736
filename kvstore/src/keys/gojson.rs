//! Decoding and encoding JSON the way Go's `encoding/json` does, for the values upstream Cilium
//! writes into the kvstore.
//!
//! Two Go behaviours matter for wire compatibility and are not serde's defaults:
//! - Object keys match struct fields case-insensitively (exact match first, then Unicode simple
//!   case folding), and when two keys land on the same field the later one in the document wins.
//!   [`decode`] implements that with one renaming pass over the document, driven by a small
//!   [`Shape`] that names the struct fields at each level; serde then sees canonical names only.
//! - `null` for a field leaves its zero value, and unknown fields are ignored. The renaming pass
//!   drops `null` struct fields, so every field can simply be `#[serde(default)]`.
//!
//! The encoders here reproduce Go's output: [`to_vec`] escapes `<`, `>`, `&`, U+2028 and U+2029
//! in strings as Go's HTML-safe encoder does, `net.IP` is its string (`""` when nil) and
//! `net.IPMask` (a `[]byte`) standard base64 or `null`.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The struct layout of one JSON level, as far as field-name matching needs it.
#[derive(Debug)]
pub(crate) enum Shape {
    /// A scalar, or anything whose keys must be kept verbatim.
    Leaf,
    /// A Go struct (value type): `null` becomes its zero value.
    Struct(&'static [Field]),
    /// A Go pointer to a struct: `null` stays `null`.
    Nullable(&'static Shape),
    /// A value with a custom Go decoder that takes either a string or the given shape.
    OrString(&'static Shape),
    /// A Go slice whose elements have the given shape.
    List(&'static Shape),
    /// A Go map with string keys (kept verbatim) and values of the given shape.
    Map(&'static Shape),
}

/// One Go struct field: its JSON name as upstream spells it and the shape of its value.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) shape: Shape,
}

/// Shorthand for a scalar field.
pub(crate) const fn leaf(name: &'static str) -> Field {
    Field {
        name,
        shape: Shape::Leaf,
    }
}

/// Decodes `data` as Go would decode it into the struct described by `shape`, then hands the
/// canonicalised document to serde.
pub(crate) fn decode<T: DeserializeOwned>(data: &[u8], shape: &Shape) -> Result<T, String> {
    let doc: OrderedJson = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let canonical = canonicalize(doc, shape)?;
    serde_json::from_value(canonical).map_err(|e| e.to_string())
}

/// Serialises `value` byte for byte as Go's `json.Marshal` would, given serde field order that
/// matches the Go struct.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// serde_json's compact output plus Go's HTML-safe string escaping.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Go's case folding of a field name, reduced to what can match an ASCII field name: ASCII
/// letters lower-case, and the two non-ASCII characters whose simple folding reaches ASCII
/// (KELVIN SIGN to `k`, LATIN SMALL LETTER LONG S to `s`).
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn canonicalize(doc: OrderedJson, shape: &Shape) -> Result<Value, String> {
    Ok(match (shape, doc) {
        (Shape::Struct(fields), OrderedJson::Object(entries)) => {
            let mut out = Map::new();
            for (key, value) in entries {
                let field = fields.iter().find(|f| f.name == key).or_else(|| {
                    let folded = fold(&key);
                    fields.iter().find(|f| fold(f.name) == folded)
                });
                // Unknown fields are ignored and null leaves the zero value, as in Go.
                let Some(field) = field else { continue };
                if matches!(value, OrderedJson::Null) {
                    out.remove(field.name);
                    continue;
                }
                out.insert(field.name.to_owned(), canonicalize(value, &field.shape)?);
            }
            Value::Object(out)
        }
        (Shape::Struct(_), OrderedJson::Null) => Value::Object(Map::new()),
        // serde would accept a sequence for a struct; Go does not.
        (Shape::Struct(_), other) => {
            return Err(format!("cannot decode {} into an object", other.kind()));
        }
        (Shape::Nullable(_), OrderedJson::Null) => Value::Null,
        (Shape::Nullable(inner), doc) => canonicalize(doc, inner)?,
        (Shape::OrString(_), OrderedJson::String(text)) => Value::String(text),
        (Shape::OrString(inner), doc) => canonicalize(doc, inner)?,
        (Shape::List(elem), OrderedJson::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|item| canonicalize(item, elem))
                .collect::<Result<_, _>>()?,
        ),
        (Shape::Map(elem), OrderedJson::Object(entries)) => {
            let mut out = Map::new();
            for (key, value) in entries {
                out.insert(key, canonicalize(value, elem)?);
            }
            Value::Object(out)
        }
        // Any other mismatch is left for serde to report.
        (_, doc) => doc.into_value(),
    })
}

/// A JSON document that remembers the order of object keys, so that "the later key wins" can
/// be decided in document order.
enum OrderedJson {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    fn kind(&self) -> &'static str {
        match self {
            OrderedJson::Null => "null",
            OrderedJson::Bool(_) => "a boolean",
            OrderedJson::Number(_) => "a number",
            OrderedJson::String(_) => "a string",
            OrderedJson::Array(_) => "an array",
            OrderedJson::Object(_) => "an object",
        }
    }

    fn into_value(self) -> Value {
        match self {
            OrderedJson::Null => Value::Null,
            OrderedJson::Bool(b) => Value::Bool(b),
            OrderedJson::Number(n) => Value::Number(n),
            OrderedJson::String(s) => Value::String(s),
            OrderedJson::Array(items) => {
                Value::Array(items.into_iter().map(OrderedJson::into_value).collect())
            }
            OrderedJson::Object(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    map.insert(k, v.into_value());
                }
                Value::Object(map)
            }
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedJsonVisitor)
    }
}

struct OrderedJsonVisitor;

impl<'de> Visitor<'de> for OrderedJsonVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<OrderedJson, E> {
        Number::from_f64(v)
            .map(OrderedJson::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OrderedJson::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, OrderedJson>()? {
            entries.push((k, v));
        }
        Ok(OrderedJson::Object(entries))
    }
}

/// Serde adapter for a Go `net.IP` that may be nil: `None` is `""`.
pub(crate) mod opt_ip {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let text = String::deserialize(d)?;
        parse_ip_text(&text).map_err(de::Error::custom)
    }
}

/// Serde adapter for a Go `net.IP` that must be set.
pub(crate) mod req_ip {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let text = String::deserialize(d)?;
        parse_ip_text(&text)
            .map_err(de::Error::custom)?
            .ok_or_else(|| de::Error::custom("IP address is empty"))
    }
}

/// `net.IP.UnmarshalText`: the empty string is a nil IP, anything else must parse.
pub(crate) fn parse_ip_text(text: &str) -> Result<Option<IpAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| format!("invalid IP address {text:?}"))
}

/// A Go `net.IPMask`: raw mask bytes, on the wire as standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpMask(Vec<u8>);

impl IpMask {
    /// The canonical mask of `prefix_len` leading ones for an address of `bits` bits (32 or
    /// 128); `None` if the length does not fit.
    pub fn from_prefix_len(prefix_len: u8, bits: u8) -> Option<Self> {
        if (bits != 32 && bits != 128) || prefix_len > bits {
            return None;
        }
        let mut bytes = vec![0u8; usize::from(bits / 8)];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let ones = usize::from(prefix_len).saturating_sub(i * 8).min(8);
            // `ones` is at most 8, so the shift stays within a u16.
            *byte = (0xFF00u16 >> ones) as u8;
        }
        Some(IpMask(bytes))
    }

    /// Wraps raw mask bytes as read from the wire.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        IpMask(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Go's `IPMask.Size`: the number of leading ones, if the mask is canonical (ones followed
    /// by zeros, 4 or 16 bytes long).
    pub fn prefix_len(&self) -> Option<u8> {
        if self.0.len() != 4 && self.0.len() != 16 {
            return None;
        }
        let mut ones: u8 = 0;
        let mut seen_zero = false;
        for &byte in &self.0 {
            for bit in (0..8).rev() {
                let set = byte & (1 << bit) != 0;
                match (set, seen_zero) {
                    (true, true) => return None,
                    (true, false) => ones += 1,
                    (false, _) => seen_zero = true,
                }
            }
        }
        Some(ones)
    }
}

impl Serialize for IpMask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for IpMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        decode_go_bytes(&text)
            .map(IpMask)
            .map_err(de::Error::custom)
    }
}

/// Go decodes a JSON string into `[]byte` with standard base64, ignoring line breaks.
fn decode_go_bytes(text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    BASE64
        .decode(cleaned.as_bytes())
        .map_err(|e| format!("invalid base64 {text:?}: {e}"))
}

/// Serde adapter for Go maps that are written as `null` when empty (a nil map).
pub(crate) mod nil_map {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn serialize<S: Serializer, V: Serialize>(
        map: &BTreeMap<String, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if map.is_empty() {
            s.serialize_none()
        } else {
            map.serialize(s)
        }
    }
}

/// Serde adapter for Go slices that are written as `null` when empty (a nil slice).
pub(crate) mod nil_vec {
    use super::*;

    pub(crate) fn serialize<S: Serializer, V: Serialize>(
        items: &[V],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if items.is_empty() {
            s.serialize_none()
        } else {
            items.serialize(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct Probe {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Inner")]
        inner: Vec<InnerProbe>,
        #[serde(rename = "Labels")]
        labels: std::collections::BTreeMap<String, String>,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct InnerProbe {
        #[serde(rename = "Key")]
        key: u8,
    }

    const INNER: Shape = Shape::Struct(&[leaf("Key")]);
    const PROBE: Shape = Shape::Struct(&[
        leaf("Name"),
        Field {
            name: "Inner",
            shape: Shape::List(&INNER),
        },
        Field {
            name: "Labels",
            shape: Shape::Map(&Shape::Leaf),
        },
    ]);

    #[test]
    fn field_names_fold_but_map_keys_do_not() {
        let probe: Probe = decode(
            br#"{"nAmE":"a","inner":[{"KEY":1},null],"labels":{"Name":"x","name":"y"}}"#,
            &PROBE,
        )
        .expect("decodes");
        assert_eq!(probe.name, "a");
        assert_eq!(
            probe.inner,
            vec![InnerProbe { key: 1 }, InnerProbe { key: 0 }]
        );
        assert_eq!(probe.labels.len(), 2);
    }

    #[test]
    fn later_key_wins_and_null_resets() {
        let probe: Probe = decode(br#"{"name":"first","NAME":"second"}"#, &PROBE).expect("ok");
        assert_eq!(probe.name, "second");
        let probe: Probe = decode(br#"{"Name":"first","name":null}"#, &PROBE).expect("ok");
        assert_eq!(probe.name, "");
    }

    #[test]
    fn kelvin_sign_folds_to_k() {
        let inner: InnerProbe = decode("{\"\u{212A}ey\":7}".as_bytes(), &INNER).expect("ok");
        assert_eq!(inner.key, 7);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let probe: Probe = decode(br#"{"Other":{"deep":[1,2]},"Name":"n"}"#, &PROBE).expect("ok");
        assert_eq!(probe.name, "n");
    }

    #[test]
    fn strings_are_escaped_like_go() {
        let out = to_vec(&"a<b>&c\u{2028}\"d\n").expect("serialises");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#""a\u003cb\u003e\u0026c\u2028\"d\n""#
        );
    }

    #[test]
    fn mask_prefix_lengths() {
        let mask = IpMask::from_prefix_len(24, 32).expect("valid");
        assert_eq!(mask.as_bytes(), &[255, 255, 255, 0]);
        assert_eq!(mask.prefix_len(), Some(24));
        assert_eq!(
            IpMask::from_prefix_len(0, 128).and_then(|m| m.prefix_len()),
            Some(0)
        );
        assert_eq!(IpMask::from_bytes(vec![255, 0, 255, 0]).prefix_len(), None);
        assert_eq!(IpMask::from_bytes(vec![255, 255]).prefix_len(), None);
        assert_eq!(IpMask::from_prefix_len(33, 32), None);
    }
}
