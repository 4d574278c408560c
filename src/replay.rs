//! Where a run starts and stops when the command line says so: `--from` and `--until`.
//!
//! ```text
//! --from  earliest | latest | <RFC 3339 time> | <partition>:<offset>,...
//! --until end | <RFC 3339 time> | <partition>:<offset>,...
//! ```
//!
//! Times are the records' Kafka timestamps: `--from T` starts each partition at its first
//! record stamped at or after `T` (as `kafka-consumer-groups --reset-offsets --to-datetime`
//! does), and `--until T` stops before it. Both are resolved to exact offsets once, at
//! start; `--until` then reads as fast as it can up to those offsets, closes every window,
//! commits and exits. Partitions a list leaves out start where the dataflow's
//! `start_from` says, and stop at the end they have at start.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where `--from` starts reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record of each partition.
    Earliest,
    /// The end of each partition: only records appended from now on.
    Latest,
    /// The first record stamped at or after this time (epoch ms).
    Time(i64),
    /// These offsets.
    Offsets(BTreeMap<i32, i64>),
}

/// Where `--until` stops reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// The end each partition has at start.
    End,
    /// Before the first record stamped at or after this time (epoch ms).
    Time(i64),
    /// Before these offsets.
    Offsets(BTreeMap<i32, i64>),
}

fn time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn offsets(s: &str) -> Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (p, o) = item
            .split_once(':')
            .ok_or_else(|| format!("`{item}` is not <partition>:<offset>"))?;
        let p: i32 = p
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| format!("`{p}` in `{item}` is not a partition number"))?;
        let o: i64 = o
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| format!("`{o}` in `{item}` is not an offset"))?;
        if out.insert(p, o).is_some() {
            return Err(format!("partition {p} is given twice"));
        }
    }
    if out.is_empty() {
        return Err("no <partition>:<offset> given".into());
    }
    Ok(out)
}

const EXPECTED_FROM: &str = "expected earliest, latest, an RFC 3339 time (2026-01-13T14:00:00Z) or <partition>:<offset>,...";
const EXPECTED_UNTIL: &str =
    "expected end, an RFC 3339 time (2026-01-13T15:00:00Z) or <partition>:<offset>,...";

impl FromStr for StartAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            _ if s.contains(':') && !s.contains('T') => offsets(s).map(StartAt::Offsets),
            _ => time(s)
                .map(StartAt::Time)
                .ok_or_else(|| format!("`{s}`: {EXPECTED_FROM}")),
        }
    }
}

impl FromStr for StopAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "end" => Ok(StopAt::End),
            _ if s.contains(':') && !s.contains('T') => offsets(s).map(StopAt::Offsets),
            _ => time(s)
                .map(StopAt::Time)
                .ok_or_else(|| format!("`{s}`: {EXPECTED_UNTIL}")),
        }
    }
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Earliest => f.write_str("earliest"),
            StartAt::Latest => f.write_str("latest"),
            StartAt::Time(t) => write!(f, "time {t} ms"),
            StartAt::Offsets(o) => write!(f, "offsets {o:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_from_and_until_parses() {
        assert_eq!("earliest".parse(), Ok(StartAt::Earliest));
        assert_eq!("latest".parse(), Ok(StartAt::Latest));
        assert_eq!(
            "2026-01-13T14:00:00Z".parse(),
            Ok(StartAt::Time(1_768_312_800_000))
        );
        assert_eq!(
            "2026-01-13T15:00:00.500+01:00".parse(),
            Ok(StartAt::Time(1_768_312_800_500))
        );
        assert_eq!(
            "0:10, 3:7".parse(),
            Ok(StartAt::Offsets([(0, 10), (3, 7)].into()))
        );
        assert_eq!("end".parse(), Ok(StopAt::End));
        assert_eq!("1:99".parse(), Ok(StopAt::Offsets([(1, 99)].into())));
        assert_eq!(
            "2026-01-13T14:00:00Z".parse(),
            Ok(StopAt::Time(1_768_312_800_000))
        );
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        for (bad, needle) in [
            ("yesterday", "RFC 3339"),
            ("0:10,0:11", "given twice"),
            ("0:-1", "not an offset"),
            ("x:1", "not a partition"),
            ("2026-13-40T00:00:00Z", "RFC 3339"),
        ] {
            let e = bad.parse::<StartAt>().expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = "latest".parse::<StopAt>().expect_err("not a bound");
        assert!(e.contains("expected end"), "{e}");
    }
}
