//! Tumbling windows: fixed, non-overlapping `[start, start + size)`, aligned to the epoch.

/// The tumbling window of length `size_ms` that contains `t`.
pub fn assign(size_ms: u64, t: u64) -> (u64, u64) {
    let start = t - t % size_ms;
    (start, start.saturating_add(size_ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_are_aligned_to_the_epoch_and_half_open() {
        assert_eq!(super::assign(60_000, 0), (0, 60_000));
        assert_eq!(super::assign(60_000, 59_999), (0, 60_000));
        assert_eq!(super::assign(60_000, 60_000), (60_000, 120_000));
        assert_eq!(super::assign(7, 20), (14, 21));
    }
}
