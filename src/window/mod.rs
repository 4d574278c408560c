//! Windows: pure assignment functions, the lateness rule, and exact accumulators.
//!
//! A window `[start, end)` of a spec with grace `g` closes when the frontier reaches
//! `end + g`. A record at event time `t` read from a partition whose watermark is `wm` is
//! **late** for that spec when its window has already closed there: `end + g <= wm` (for
//! hopping windows: when every window it belongs to has). The
//! decision depends only on the partition's own sequence of records, so a replay of the
//! same offsets classifies every record the same way.

pub mod combine;
pub mod hopping;
pub mod operator;
pub mod session;
pub mod tumbling;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::correlation::CorrelationIds;
use crate::spec::{PipelineSpec, WindowKind, WindowSpec};

/// The windows of `kind` that contain event time `t`, as `(start, end)`, latest first (for
/// sessions: the interval the record opens; sessions merge in their own operator).
pub fn windows_of(kind: WindowKind, t: u64) -> impl Iterator<Item = (u64, u64)> {
    let (size, slide, own) = match kind {
        WindowKind::Tumbling { size_ms } => (size_ms, size_ms, None),
        WindowKind::Hopping { size_ms, slide_ms } => (size_ms, slide_ms, None),
        WindowKind::Session {
            gap_ms,
            max_duration_ms,
        } => (0, 1, Some(session::interval(gap_ms, max_duration_ms, t))),
    };
    hopping::assign(size, slide, t).chain(own)
}

/// The latest-ending window of `kind` that contains `t`: the last of its windows to close.
pub fn assign(kind: WindowKind, t: u64) -> (u64, u64) {
    match kind {
        WindowKind::Tumbling { size_ms } => tumbling::assign(size_ms, t),
        WindowKind::Hopping { .. } => windows_of(kind, t)
            .next()
            .expect("every time is in the window starting at its last slide"),
        WindowKind::Session {
            gap_ms,
            max_duration_ms,
        } => session::interval(gap_ms, max_duration_ms, t),
    }
}

/// The end of the window of `kind` that starts at `start`.
pub fn end_of(kind: WindowKind, start: u64) -> u64 {
    match kind {
        WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => {
            start.saturating_add(size_ms)
        }
        WindowKind::Session {
            gap_ms,
            max_duration_ms,
        } => session::interval(gap_ms, max_duration_ms, start).1,
    }
}

/// The time at which the window ending at `end` closes: `end + grace`, saturating.
pub fn close_time(spec: &WindowSpec, end: u64) -> u64 {
    end.saturating_add(spec.grace_ms)
}

/// Whether `t` is the close (end + grace) of one of `spec`'s windows: `Some` for tumbling
/// and hopping windows, which start at multiples of their slide; `None` for sessions, whose
/// closes depend on the data.
pub fn is_close(spec: &WindowSpec, t: u64) -> Option<bool> {
    let (size, slide) = match spec.kind {
        WindowKind::Tumbling { size_ms } => (size_ms, size_ms),
        WindowKind::Hopping { size_ms, slide_ms } => (size_ms, slide_ms),
        WindowKind::Session { .. } => return None,
    };
    let start = t
        .checked_sub(spec.grace_ms)
        .and_then(|end| end.checked_sub(size));
    Some(start.is_some_and(|start| slide > 0 && start % slide == 0))
}

/// Whether a record at `t` is late for `spec` at partition watermark `wm`: every window
/// of `spec` it belongs to has closed (it then goes to the late topic). A hopping-window
/// record that is late for some of its windows only counts in the others.
pub fn is_late(spec: &WindowSpec, t: u64, wm: u64) -> bool {
    match spec.kind {
        // A session it could join ends at or after `t` (see `session`).
        WindowKind::Session { .. } => close_time(spec, t) < wm,
        kind => close_time(spec, assign(kind, t).1) <= wm,
    }
}

/// How many correlation ids a window result of `spec` keeps (0 without correlation ids,
/// when no event has one).
pub fn ids_per_result(spec: &PipelineSpec) -> usize {
    spec.input.correlation.as_ref().map_or(0, |c| c.per_result)
}

/// Exact running aggregates of one (key, window). Merging is associative and commutative,
/// so the result does not depend on arrival order.
///
/// Partial aggregates cross processes inside [`combine::Partial`] in timely's bincode
/// encoding, which is not self-describing: no field may be skipped when serialising.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Number of events.
    pub count: u64,
    /// Exact sum.
    pub sum: Decimal,
    /// Least value.
    pub min: Decimal,
    /// Greatest value.
    pub max: Decimal,
    /// Earliest event time, epoch ms.
    pub first: u64,
    /// Latest event time, epoch ms.
    pub last: u64,
    /// The correlation ids of the events, once one had an id ([`crate::correlation`]).
    pub ids: Option<Box<CorrelationIds>>,
    /// The greatest Kafka timestamp of the events (epoch ms, 0 unknown), for the
    /// `since="append"` latency; no part of any result.
    pub appended_ms: u64,
}

impl Accumulator {
    /// The aggregates of one value, of an event at time `t`.
    pub fn of(v: Decimal, t: u64) -> Self {
        Accumulator {
            count: 1,
            sum: v,
            min: v,
            max: v,
            first: t,
            last: t,
            ids: None,
            appended_ms: 0,
        }
    }

    /// The aggregates of no value: the identity of [`Accumulator::merge`].
    pub fn empty() -> Self {
        Accumulator {
            count: 0,
            sum: Decimal::ZERO,
            min: Decimal::MAX,
            max: Decimal::MIN,
            first: u64::MAX,
            last: 0,
            ids: None,
            appended_ms: 0,
        }
    }

    /// Adds one value, of an event at time `t`.
    pub fn add(&mut self, v: Decimal, t: u64) {
        self.count += 1;
        self.first = self.first.min(t);
        self.last = self.last.max(t);
        // Inputs are bounded by codec::MAX_ABS_DECIMAL (10^18), so 10^10 of them fit the
        // 96-bit mantissa; saturating keeps the impossible case from panicking.
        self.sum = self.sum.saturating_add(v);
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
    }

    /// Merges another accumulator into this one.
    pub fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.appended_ms = self.appended_ms.max(other.appended_ms);
        match (&mut self.ids, &other.ids) {
            (_, None) => {}
            (None, Some(theirs)) => self.ids = Some(theirs.clone()),
            (Some(ours), Some(theirs)) => ours.merge(theirs),
        }
    }

    /// Notes the Kafka timestamp of an event added (epoch ms, 0 unknown).
    pub fn note_appended(&mut self, appended_ms: u64) {
        self.appended_ms = self.appended_ms.max(appended_ms);
    }

    /// Counts the correlation id of an event at time `t` (its value was added already),
    /// keeping at most `limit` ids.
    pub fn add_id(&mut self, t: u64, id: &str, limit: usize) {
        self.ids
            .get_or_insert_with(|| Box::new(CorrelationIds::new(limit)))
            .insert(t, id);
    }

    /// Last event time − first event time, ms.
    pub fn duration_ms(&self) -> u64 {
        self.last - self.first
    }

    /// Whether exactly one event was counted.
    pub fn bounce(&self) -> bool {
        self.count == 1
    }

    /// `sum / count` rounded half-to-even to `scale` places, computed exactly.
    pub fn avg(&self, scale: u32) -> Decimal {
        exact_avg(self.sum, self.count, scale)
    }
}

/// `sum / count` rounded half-to-even to `scale` decimal places, without intermediate
/// rounding: integer arithmetic on the mantissa, falling back to decimal division only
/// where the integers would overflow (counts beyond 10^16).
pub fn exact_avg(sum: Decimal, count: u64, scale: u32) -> Decimal {
    if count == 0 {
        return Decimal::ZERO;
    }
    let m = sum.mantissa();
    let e = sum.scale();
    let c = i128::from(count);
    // avg * 10^scale = m * 10^(scale - e) / c
    let (num, den) = if scale >= e {
        match 10i128.checked_pow(scale - e).and_then(|p| m.checked_mul(p)) {
            Some(n) => (n, c),
            None => return fallback_avg(sum, count, scale),
        }
    } else {
        match 10i128.checked_pow(e - scale).and_then(|p| p.checked_mul(c)) {
            Some(d) => (m, d),
            None => return fallback_avg(sum, count, scale),
        }
    };
    let q = num / den;
    let r = num % den;
    let twice = r.abs() * 2;
    let q = match twice.cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + num.signum(),
        std::cmp::Ordering::Equal if q % 2 == 0 => q,
        std::cmp::Ordering::Equal => q + num.signum(),
    };
    Decimal::try_from_i128_with_scale(q, scale).unwrap_or_else(|_| fallback_avg(sum, count, scale))
}

fn fallback_avg(sum: Decimal, count: u64, scale: u32) -> Decimal {
    (sum / Decimal::from(count))
        .round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn accumulators_merge_in_any_order() {
        let values = ["3.5", "-1", "10.25", "0.001"];
        let times = [40, 10, 70, 25];
        let mut a = Accumulator::of(d(values[0]), times[0]);
        for i in 1..4 {
            a.add(d(values[i]), times[i]);
        }
        let mut b = Accumulator::of(d(values[3]), times[3]);
        let mut c = Accumulator::of(d(values[1]), times[1]);
        c.add(d(values[2]), times[2]);
        b.merge(&c);
        b.merge(&Accumulator::of(d(values[0]), times[0]));
        assert_eq!(a, b);
        assert_eq!((a.first, a.last, a.duration_ms()), (10, 70, 60));
        assert!(!a.bounce());
        assert!(Accumulator::of(d("1"), 5).bounce());
        assert_eq!(a.count, 4);
        assert_eq!(a.sum, d("12.751"));
        assert_eq!(a.min, d("-1"));
        assert_eq!(a.max, d("10.25"));
    }

    #[test]
    fn averages_round_half_to_even_exactly() {
        assert_eq!(exact_avg(d("10"), 4, 0), d("2")); // 2.5 → 2
        assert_eq!(exact_avg(d("14"), 4, 0), d("4")); // 3.5 → 4
        assert_eq!(exact_avg(d("-10"), 4, 0), d("-2"));
        assert_eq!(exact_avg(d("1"), 3, 6), d("0.333333"));
        assert_eq!(exact_avg(d("2"), 3, 2), d("0.67"));
        assert_eq!(exact_avg(d("0.125"), 1, 2), d("0.12"));
        assert_eq!(exact_avg(d("0.135"), 1, 2), d("0.14"));
        assert_eq!(exact_avg(d("0.0000000000000000000000000001"), 1, 2), d("0"));
        assert_eq!(
            exact_avg(d("1000000000000000000"), 7, 12),
            d("142857142857142857.142857142857")
        );
    }

    fn window(kind: WindowKind, grace_ms: u64) -> WindowSpec {
        WindowSpec {
            name: "w".into(),
            kind,
            grace_ms,
            value: None,
            value_expr: None,
            filter: None,
            group_by: vec![],
            aggregates: vec![],
            topic: "o".into(),
            avg_scale: 2,
            emit: Default::default(),
        }
    }

    #[test]
    fn the_closes_are_the_ends_plus_grace_of_the_windows_assigned() {
        for kind in [
            WindowKind::Tumbling { size_ms: 1_000 },
            WindowKind::Hopping {
                size_ms: 2_000,
                slide_ms: 500,
            },
        ] {
            let spec = window(kind, 300);
            let closes: BTreeSet<u64> = (0..20_000u64)
                .flat_map(|t| windows_of(kind, t).map(|(_, end)| close_time(&spec, end)))
                .collect();
            for t in 0..20_000u64 {
                assert_eq!(
                    is_close(&spec, t),
                    Some(closes.contains(&t)),
                    "{kind:?} at {t}"
                );
            }
        }
        let session = WindowKind::Session {
            gap_ms: 100,
            max_duration_ms: 1_000,
        };
        assert_eq!(is_close(&window(session, 0), 1_000), None);
    }

    #[test]
    fn lateness_is_judged_against_window_end_plus_grace() {
        let spec = window(WindowKind::Tumbling { size_ms: 1_000 }, 200);
        // The window [1000, 2000) closes at 2200.
        assert!(!is_late(&spec, 1_999, 2_199));
        assert!(is_late(&spec, 1_999, 2_200));
        assert!(is_late(&spec, 1_000, 2_200));
        assert!(
            !is_late(&spec, 2_000, 2_200),
            "2000 belongs to the next window"
        );
    }
}
