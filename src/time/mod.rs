//! Event time: epoch milliseconds, their RFC 3339 form, and per-partition watermarks.

pub mod watermark;

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds (`2026-01-13T14:30:45.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("+{ms}ms"))
}

/// Epoch milliseconds of a UTC time in the form producers nearly always write,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (1 to 9 fraction digits, truncated to milliseconds,
/// as chrono's `timestamp_millis` does), at or after 1970. `None` for any other form —
/// offsets, lower-case separators, leap seconds, earlier years — which the caller parses
/// with chrono; this spares the common case chrono's general parser.
pub fn parse_utc_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut i = 19;
    let mut ms = 0;
    if at(i, b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        ms = (0..3).fold(0, |n, k| {
            n * 10
                + if k < digits {
                    num(i + 1 + k, 1).unwrap_or(0)
                } else {
                    0
                }
        });
        i += 1 + digits;
    }
    if i + 1 != b.len() || !at(i, b'Z') {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date, counting years from March so
    // that the leap day comes last (the usual civil-from-days inverse).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y % 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = u64::from(era) * 146_097 + u64::from(day_of_era) - 719_468;
    let secs = days * 86_400 + u64::from(hour * 3600 + minute * 60 + second);
    Some(secs * 1000 + u64::from(ms))
}

#[cfg(test)]
mod tests {
    /// chrono's reading, in epoch ms, when it is at or after 1970.
    fn chrono_ms(s: &str) -> Option<u64> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
    }

    #[test]
    fn reads_utc_times_as_chrono_does() {
        for s in [
            "2026-01-13T14:30:45.123Z",
            "2026-01-13T14:30:45Z",
            "2026-01-13T14:30:45.1Z",
            "2026-01-13T14:30:45.123456789Z",
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
            "2100-02-28T12:00:00Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            assert_eq!(super::parse_utc_ms(s), chrono_ms(s), "{s}");
            assert!(super::parse_utc_ms(s).is_some(), "{s}");
        }
        for s in [
            "2026-01-13T14:30:45.123+01:00",
            "2026-01-13t14:30:45Z",
            "2026-01-13 14:30:45Z",
            "2026-01-13T14:30:60Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-13T24:00:00Z",
            "2026-01-13T14:30:45.Z",
            "2026-01-13T14:30:45.1234567890Z",
            "2026-01-13T14:30:45Zx",
            "1969-12-31T23:59:59Z",
            "+2026-01-13T14:30:45Z",
            "2026-1-13T14:30:45Z",
        ] {
            assert_eq!(super::parse_utc_ms(s), None, "{s}");
        }
    }

    proptest::proptest! {
        /// Whatever the fast path reads, chrono reads the same; and it reads every UTC
        /// time of the common form.
        #[test]
        fn agrees_with_chrono(
            ms in 0u64..253_402_300_800_000,
            digits in 0usize..10,
            extra in proptest::option::of((0usize..30, proptest::sample::select(vec!["0", "9", "Z", ".", "+", ":", "-", "T"]))),
        ) {
            let t = chrono::DateTime::from_timestamp_millis(ms as i64).expect("in range");
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                let fraction = format!("{:03}{}", ms % 1000, "7".repeat(digits.saturating_sub(3)));
                s.push('.');
                s.push_str(&fraction[..digits]);
            }
            s.push('Z');
            // The fraction as written: its first `digits` digits.
            let unit = 10u64.pow(3u32.saturating_sub(digits as u32));
            let written = ms - ms % 1000 + (ms % 1000) / unit * unit;
            proptest::prop_assert_eq!(super::parse_utc_ms(&s), Some(written), "{}", s);
            if let Some((at, c)) = extra {
                let at = at.min(s.len());
                s.insert_str(at, c);
            }
            if let Some(read) = super::parse_utc_ms(&s) {
                proptest::prop_assert_eq!(Some(read), chrono_ms(&s), "{}", s);
            }
        }
    }

    #[test]
    fn formats_milliseconds() {
        assert_eq!(
            super::rfc3339_ms(1_768_314_645_123),
            "2026-01-13T14:30:45.123Z"
        );
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
