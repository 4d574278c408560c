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

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds() {
        assert_eq!(
            super::rfc3339_ms(1_768_314_645_123),
            "2026-01-13T14:30:45.123Z"
        );
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
