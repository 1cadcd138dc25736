//! Timestamps as the `hubble` CLI shows and reads them: Go's `time.StampMilli` for flows, RFC 3339
//! for protojson, and upstream's `--since`/`--until` syntax (a Go duration meaning "that long
//! ago", or an absolute RFC 3339 / `YYYY-MM-DD` time).
//!
//! Everything is UTC, as upstream (`Timestamp.AsTime()` is UTC). The civil-date arithmetic is
//! done here rather than through a date crate because these three conversions are all the CLI
//! needs and the workspace carries none.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range protobuf allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Why a `--since`/`--until` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error(
        "failed to convert {input:?} to time: expected a duration such as 5m or 1h30m, or an RFC 3339 time such as 2026-11-27T12:00:00Z"
    )]
    Unrecognized { input: String },
    #[error("time {input:?} is out of range")]
    OutOfRange { input: String },
}

fn valid(ts: &Timestamp) -> bool {
    (MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
}

fn civil(seconds: i64) -> Civil {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
    }
}

/// Go's `time.StampMilli` (`Jan _2 15:04:05.000`) in UTC; `N/A` for an invalid timestamp, as
/// upstream prints it.
pub fn format_stamp_milli(ts: Option<&Timestamp>) -> String {
    let Some(ts) = ts.filter(|ts| valid(ts)) else {
        return "N/A".to_owned();
    };
    let c = civil(ts.seconds);
    let month = MONTHS.get(c.month as usize - 1).copied().unwrap_or("???");
    format!(
        "{month} {:>2} {:02}:{:02}:{:02}.{:03}",
        c.day,
        c.hour,
        c.minute,
        c.second,
        ts.nanos / 1_000_000
    )
}

/// protojson's timestamp text: RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits; `None` when
/// the timestamp is outside what protobuf allows (protojson refuses those too).
pub fn format_rfc3339(ts: &Timestamp) -> Option<String> {
    if !valid(ts) {
        return None;
    }
    let c = civil(ts.seconds);
    let frac = match ts.nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    ))
}

/// Upstream's `hubtime.FromString`: a Go duration (`5m`, `1h30m`, `1.5h`, `300ms`) means that
/// long before `now`; otherwise an absolute time in RFC 3339 (any fraction, `Z` or `±hh:mm`),
/// or the coarser `YYYY-MM-DD`, `YYYY-MM-DDThhZ`, `YYYY-MM-DDThh:mmZ` forms (with an offset in
/// place of `Z` too).
pub fn parse_time(input: &str, now: SystemTime) -> Result<Timestamp, TimeParseError> {
    let unrecognized = || TimeParseError::Unrecognized {
        input: input.to_owned(),
    };
    let out_of_range = || TimeParseError::OutOfRange {
        input: input.to_owned(),
    };
    if let Some(ago) = parse_go_duration(input) {
        let now_ns = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).map_err(|_| out_of_range())?,
            Err(e) => -i128::try_from(e.duration().as_nanos()).map_err(|_| out_of_range())?,
        };
        let at = now_ns - ago;
        let seconds = i64::try_from(at.div_euclid(1_000_000_000)).map_err(|_| out_of_range())?;
        // rem_euclid of 1e9 fits in i32.
        let nanos = at.rem_euclid(1_000_000_000) as i32;
        let ts = Timestamp { seconds, nanos };
        return if valid(&ts) {
            Ok(ts)
        } else {
            Err(out_of_range())
        };
    }
    let ts = parse_absolute(input).ok_or_else(unrecognized)?;
    if valid(&ts) {
        Ok(ts)
    } else {
        Err(out_of_range())
    }
}

/// Go's `time.ParseDuration`, in nanoseconds (signed: `-5m` is five minutes in the future).
fn parse_go_duration(input: &str) -> Option<i128> {
    let (negative, mut rest) = match input.as_bytes().first()? {
        b'-' => (true, &input[1..]),
        b'+' => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    // Go rejects durations beyond ~292 years; so does this (a tenth of i64's range is plenty).
    if !total.is_finite() || total > 9.2e18 {
        return None;
    }
    let ns = total.round() as i128;
    Some(if negative { -ns } else { ns })
}

fn digits(s: &str, n: usize) -> Option<(i64, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

fn expect(s: &str, c: char) -> Option<&str> {
    s.strip_prefix(c)
}

fn parse_absolute(input: &str) -> Option<Timestamp> {
    let (year, rest) = digits(input, 4)?;
    let (month, rest) = digits(expect(rest, '-')?, 2)?;
    let (day, rest) = digits(expect(rest, '-')?, 2)?;
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let day = u32::try_from(day)
        .ok()
        .filter(|d| (1..=days_in_month(year, month)).contains(d))?;
    let midnight = days_from_civil(year, month, day) * 86_400;
    if rest.is_empty() {
        return Some(Timestamp {
            seconds: midnight,
            nanos: 0,
        });
    }
    let rest = rest.strip_prefix(['T', 't'])?;
    let (hour, mut rest) = digits(rest, 2)?;
    let mut minute = 0;
    let mut second = 0;
    let mut nanos = 0i32;
    if let Some(r) = rest.strip_prefix(':') {
        let (m, r) = digits(r, 2)?;
        minute = m;
        rest = r;
        if let Some(r) = rest.strip_prefix(':') {
            let (s, r) = digits(r, 2)?;
            second = s;
            rest = r;
            if let Some(r) = rest.strip_prefix('.') {
                let len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if len == 0 || len > 9 {
                    return None;
                }
                let frac: i32 = r[..len].parse().ok()?;
                nanos = frac * 10i32.pow(9 - len as u32);
                rest = &r[len..];
            }
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset = parse_zone(rest)?;
    Some(Timestamp {
        seconds: midnight + hour * 3600 + minute * 60 + second - offset,
        nanos,
    })
}

/// `Z` or `±hh:mm`, as seconds east of UTC.
fn parse_zone(s: &str) -> Option<i64> {
    if s == "Z" || s == "z" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, rest) = digits(rest, 2)?;
    let (m, rest) = digits(expect(rest, ':')?, 2)?;
    if !rest.is_empty() || h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Go's `time.Duration.String()` for a non-negative nanosecond count (`1h2m3s`, `5m0s`, `1.5s`,
/// `250ms`), which upstream uses for uptimes.
pub fn format_go_duration(ns: u64) -> String {
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < 1_000_000_000 {
        let (value, unit, scale) = if ns < 1_000 {
            return format!("{ns}ns");
        } else if ns < 1_000_000 {
            (ns, "µs", 1_000)
        } else {
            (ns, "ms", 1_000_000)
        };
        return format!(
            "{}{unit}",
            trim_fraction(value / scale, value % scale, scale)
        );
    }
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let hours = secs / 3600;
    let minutes = secs / 60 % 60;
    let seconds = trim_fraction(secs % 60, frac, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `whole.frac` without trailing zeros (Go prints `1.5s`, not `1.500000000s`).
fn trim_fraction(whole: u64, frac: u64, scale: u64) -> String {
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let text = format!("{frac:0width$}");
    format!("{whole}.{}", text.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn stamp_milli_matches_go() {
        // Upstream's printer test: 1234.5678 s after the epoch.
        assert_eq!(
            format_stamp_milli(Some(&ts(1234, 567_800_000))),
            "Jan  1 00:20:34.567"
        );
        assert_eq!(
            format_stamp_milli(Some(&ts(1_795_780_801, 123_999_999))),
            "Nov 27 12:00:01.123"
        );
        assert_eq!(format_stamp_milli(None), "N/A");
        assert_eq!(format_stamp_milli(Some(&ts(0, -1))), "N/A");
    }

    #[test]
    fn rfc3339_uses_protojson_precision() {
        assert_eq!(
            format_rfc3339(&ts(1234, 567_800_000)).as_deref(),
            Some("1970-01-01T00:20:34.567800Z")
        );
        assert_eq!(
            format_rfc3339(&ts(0, 0)).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            format_rfc3339(&ts(0, 5_000_000)).as_deref(),
            Some("1970-01-01T00:00:00.005Z")
        );
        assert_eq!(
            format_rfc3339(&ts(0, 1)).as_deref(),
            Some("1970-01-01T00:00:00.000000001Z")
        );
        assert_eq!(
            format_rfc3339(&ts(-1, 0)).as_deref(),
            Some("1969-12-31T23:59:59Z")
        );
        assert_eq!(format_rfc3339(&ts(MAX_SECONDS + 1, 0)), None);
    }

    #[test]
    fn civil_round_trips() {
        for days in [-719_468, -1, 0, 59, 365, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_relative_and_absolute_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("5m", now), Ok(ts(1_000_000 - 300, 0)));
        assert_eq!(parse_time("1h30m", now), Ok(ts(1_000_000 - 5400, 0)));
        assert_eq!(parse_time("1.5s", now), Ok(ts(1_000_000 - 2, 500_000_000)));
        assert_eq!(
            parse_time("2026-11-27T12:00:01Z", now),
            Ok(ts(1_795_780_801, 0))
        );
        assert_eq!(
            parse_time("2026-11-27T13:00:01.25+01:00", now),
            Ok(ts(1_795_780_801, 250_000_000))
        );
        assert_eq!(parse_time("2026-11-27", now), Ok(ts(1_795_737_600, 0)));
        assert_eq!(parse_time("2026-11-27T12Z", now), Ok(ts(1_795_780_800, 0)));
        for bad in [
            "",
            "5",
            "5x",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-11-27T12:00:01",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rfc3339_round_trips_through_the_parser() {
        let now = UNIX_EPOCH;
        let mut seconds = MIN_SECONDS;
        let mut nanos = 0;
        while seconds < MAX_SECONDS {
            let t = ts(seconds, nanos);
            let text = format_rfc3339(&t).unwrap_or_default();
            assert_eq!(parse_time(&text, now), Ok(t), "{text}");
            seconds += 7_777_777_777;
            nanos = (nanos + 123_456_789) % 1_000_000_000;
        }
    }

    #[test]
    fn parser_rejects_garbage_without_panicking() {
        let inputs = [
            "-",
            "+",
            ".",
            "1.",
            "..5s",
            "5µ",
            "9999999999999999h",
            "2026-1-01",
            "2026-01-01T",
            "2026-01-01T25:00Z",
            "2026-01-01T12:00:00.Z",
            "2026-01-01T12:00:00.1234567890Z",
            "2026-01-01T12:00:00+1:00",
            "2026-01-01T12:00:00+01:00x",
            "\u{0}",
            "µµµµ",
        ];
        for input in inputs {
            assert!(parse_time(input, UNIX_EPOCH).is_err(), "{input:?} parsed");
        }
    }

    #[test]
    fn go_duration_strings() {
        assert_eq!(format_go_duration(0), "0s");
        assert_eq!(format_go_duration(100_000_000_000), "1m40s");
        assert_eq!(format_go_duration(3_661_000_000_000), "1h1m1s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
        assert_eq!(format_go_duration(250_000_000), "250ms");
        assert_eq!(format_go_duration(999), "999ns");
    }
}
