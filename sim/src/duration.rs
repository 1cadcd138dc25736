//! Durations in scenario files as people write them (`30s`, `1m 30s`, `250ms`), through
//! `humantime`: `#[serde(with = "crate::duration")]` on a `Duration` field.

use std::time::Duration;

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(HumanDuration)
}

/// Reads a humantime string, and refuses a bare number with a hint rather than serde's
/// "expected a string".
struct HumanDuration;

impl Visitor<'_> for HumanDuration {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 30s, 5m or 250ms")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|error| {
            E::custom(format!(
                "{text:?} is not a duration (write it as 30s, 5m, 250ms): {error}"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "the duration {number} has no unit (write it as {number}s, {number}ms, ...)"
        )))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
        self.visit_u64(number.unsigned_abs())
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "the duration {number} has no unit (write it as {number}s, ...)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn durations_read_and_write_as_humantime() {
        let holder: Holder = serde_yaml_ng::from_str("d: 1m 30s").unwrap();
        assert_eq!(holder.d, Duration::from_secs(90));
        let text = serde_yaml_ng::to_string(&holder).unwrap();
        assert_eq!(text.trim(), "d: 1m 30s");
        let back: Holder = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, holder);
    }

    #[test]
    fn a_number_without_unit_is_refused_with_a_hint() {
        let error = serde_yaml_ng::from_str::<Holder>("d: \"30\"").unwrap_err();
        assert!(error.to_string().contains("write it as 30s"), "{error}");
        let error = serde_yaml_ng::from_str::<Holder>("d: 30").unwrap_err();
        assert!(error.to_string().contains("30 has no unit"), "{error}");
        let error = serde_yaml_ng::from_str::<Holder>("d: [1]").unwrap_err();
        assert!(error.to_string().contains("such as 30s"), "{error}");
    }
}
