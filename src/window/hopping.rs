//! Hopping windows (Flink's sliding windows): `[start, start + size)` for every `start`
//! that is a multiple of `slide`, so a record belongs to `size / slide` windows (rounded
//! up when `slide` does not divide `size`). Both Flink and Kafka Streams align hopping
//! windows to the epoch and make them half-open; waterline does the same. Windows that
//! would start before the epoch are left out.

/// The windows of length `size_ms`, one every `slide_ms`, that contain `t`, latest first.
pub fn assign(size_ms: u64, slide_ms: u64, t: u64) -> impl Iterator<Item = (u64, u64)> {
    let last = t - t % slide_ms;
    (0..size_ms.div_ceil(slide_ms))
        .map_while(move |i| last.checked_sub(i * slide_ms))
        .map(move |start| (start, start.saturating_add(size_ms)))
        .filter(move |(_, end)| *end > t)
}

#[cfg(test)]
mod tests {
    fn windows(size: u64, slide: u64, t: u64) -> Vec<(u64, u64)> {
        super::assign(size, slide, t).collect()
    }

    #[test]
    fn a_record_is_in_size_over_slide_windows_latest_first() {
        assert_eq!(
            windows(10, 5, 12),
            vec![(10, 20), (5, 15)],
            "12 is in [10, 20) and [5, 15)"
        );
        assert_eq!(
            windows(10, 5, 15),
            vec![(15, 25), (10, 20)],
            "15 is at the end of [5, 15): not in it"
        );
        assert_eq!(windows(10, 3, 10), vec![(9, 19), (6, 16), (3, 13)]);
        assert_eq!(
            windows(10, 10, 7),
            vec![(0, 10)],
            "slide = size is tumbling"
        );
    }

    #[test]
    fn windows_before_the_epoch_are_left_out() {
        assert_eq!(windows(10, 5, 3), vec![(0, 10)]);
    }
}
