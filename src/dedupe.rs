//! Dropping repeated events within one partition ([`crate::spec::DedupeSpec`]).
//!
//! A record is a duplicate when an earlier record of its partition has the same id and an
//! event time at most `horizon` apart. Whether it is depends only on the (id, time) pairs
//! before it, not on which of them were themselves duplicates, so a resumed partition that
//! has not seen the records before its restart position decides differently only for
//! records within `horizon` of them — whose outputs all fall below the frontier the
//! position is valid for, because the horizon is part of the dataflow's reach.
//!
//! Records late for every window never reach dedupe: their fate does not depend on it.
//! Every other record is within `window reach` of the partition's watermark, so an id seen
//! more than `window reach + horizon` behind the watermark can never match again and is
//! forgotten; the watermark is deterministic, so forgetting is too.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// The event times one id was seen at: nearly always one, so it is kept inline.
#[derive(Debug)]
enum Times {
    One(u64),
    Many(Vec<u64>),
}

impl Times {
    fn as_slice(&self) -> &[u64] {
        match self {
            Times::One(t) => std::slice::from_ref(t),
            Times::Many(ts) => ts,
        }
    }

    fn add(&mut self, time: u64) {
        match self {
            Times::One(t) if *t != time => *self = Times::Many(vec![*t, time]),
            Times::One(_) => {}
            Times::Many(ts) if !ts.contains(&time) => ts.push(time),
            Times::Many(_) => {}
        }
    }

    /// Keeps the times at or after `oldest`; says whether any is left.
    fn keep_from(&mut self, oldest: u64) -> bool {
        match self {
            Times::One(t) => *t >= oldest,
            Times::Many(ts) => {
                ts.retain(|t| *t >= oldest);
                !ts.is_empty()
            }
        }
    }
}

/// One remembered id: where its bytes are in [`Seen`]'s buffer, its hash, its times.
#[derive(Debug)]
struct Entry {
    hash: u64,
    start: usize,
    len: usize,
    times: Times,
}

/// The ids one partition has seen, with their event times.
///
/// Nearly every record brings a new id, so what an id costs to remember is what dedupe
/// costs: the ids' bytes go into one growing buffer, and the table holds their places
/// and hashes, so remembering one allocates nothing (amortized) and a record's id is
/// hashed once, for the lookup and the insert together. Each sweep copies the ids it
/// keeps into a second buffer and swaps the two, so the buffer holds no more than the ids
/// still remembered and what arrived since the last sweep, and in a steady state neither
/// buffer grows again: a fresh buffer per sweep was regrown by doubling, each time into
/// fresh pages (a twentieth of a worker's time in a profile).
///
/// Hashed with foldhash (randomly seeded): SipHash was most of dedupe's cost. The table's
/// order reaches no output.
#[derive(Debug, Default)]
pub struct Seen {
    horizon: u64,
    keep: u64,
    ids: HashTable<Entry>,
    bytes: String,
    /// The buffer the next sweep copies into; empty between sweeps.
    spare: String,
    hasher: foldhash::fast::RandomState,
    /// The watermark of the last sweep.
    swept_at: u64,
}

impl Seen {
    /// Remembers ids for `horizon_ms`, for a dataflow whose windows reach `window_reach_ms`.
    pub fn new(horizon_ms: u64, window_reach_ms: u64) -> Seen {
        Seen {
            horizon: horizon_ms,
            keep: horizon_ms.saturating_add(window_reach_ms),
            ..Seen::default()
        }
    }

    /// Records `id` at `time`; says whether an earlier record repeats it.
    pub fn repeat(&mut self, id: &str, time: u64) -> bool {
        let hash = self.hasher.hash_one(id);
        let bytes = &self.bytes;
        let found = self
            .ids
            .find_mut(hash, |e| &bytes[e.start..e.start + e.len] == id);
        match found {
            Some(entry) => {
                let repeat = entry
                    .times
                    .as_slice()
                    .iter()
                    .any(|t| t.abs_diff(time) <= self.horizon);
                entry.times.add(time);
                repeat
            }
            None => {
                let start = self.bytes.len();
                self.bytes.push_str(id);
                let entry = Entry {
                    hash,
                    start,
                    len: id.len(),
                    times: Times::One(time),
                };
                self.ids.insert_unique(hash, entry, |e| e.hash);
                false
            }
        }
    }

    /// Forgets what no record judged against `watermark` or later can repeat. Sweeps at
    /// most once per `horizon` of watermark progress, so the cost per record stays small.
    pub fn forget_before(&mut self, watermark: u64) {
        if watermark.saturating_sub(self.swept_at) < self.horizon.max(1_000) {
            return;
        }
        self.swept_at = watermark;
        let oldest = watermark.saturating_sub(self.keep);
        self.ids.retain(|e| e.times.keep_from(oldest));
        let mut bytes = std::mem::take(&mut self.spare);
        bytes.clear();
        for e in self.ids.iter_mut() {
            let start = bytes.len();
            bytes.push_str(&self.bytes[e.start..e.start + e.len]);
            e.start = start;
        }
        self.spare = std::mem::replace(&mut self.bytes, bytes);
        self.spare.clear();
        if self.ids.capacity() > 4 * self.ids.len().max(1024) {
            self.ids.shrink_to_fit(|e| e.hash);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_id_within_the_horizon_repeats_and_outside_it_does_not() {
        let mut s = Seen::new(1_000, 0);
        assert!(!s.repeat("a", 10_000));
        assert!(s.repeat("a", 10_000), "the same record again");
        assert!(s.repeat("a", 10_900), "within the horizon after");
        assert!(s.repeat("a", 9_000), "within the horizon before");
        assert!(!s.repeat("b", 10_000), "another id");
        assert!(!s.repeat("c", 5_000));
        assert!(!s.repeat("c", 6_001), "just outside");
    }

    #[test]
    fn a_repeat_is_judged_against_every_earlier_record_not_only_the_kept_ones() {
        let mut s = Seen::new(1_000, 0);
        assert!(!s.repeat("a", 0));
        assert!(s.repeat("a", 900), "a duplicate");
        assert!(
            s.repeat("a", 1_800),
            "within the horizon of the duplicate, though not of the first"
        );
    }

    #[test]
    fn ids_far_behind_the_watermark_are_forgotten() {
        let mut s = Seen::new(1_000, 5_000);
        s.repeat("old", 10_000);
        s.repeat("new", 20_000);
        s.forget_before(15_500);
        assert_eq!(s.len(), 2, "10 000 is within reach + horizon of 15 500");
        s.forget_before(16_000);
        assert_eq!(s.len(), 2, "sweeps are spaced a horizon apart");
        s.forget_before(16_500);
        assert_eq!(s.len(), 1);
        assert!(!s.repeat("old", 10_000), "forgotten");
    }

    #[test]
    fn an_id_seen_at_several_times_keeps_the_recent_ones_when_old_ones_are_forgotten() {
        let mut s = Seen::new(1_000, 0);
        assert!(!s.repeat("a", 10_000));
        assert!(!s.repeat("a", 13_000), "outside the horizon of the first");
        s.forget_before(13_500);
        assert_eq!(s.len(), 1, "13 000 is kept");
        assert!(s.repeat("a", 13_900), "within the horizon of the kept time");
        assert!(
            !s.repeat("a", 11_000),
            "10 000 was forgotten, 13 000 is too far"
        );
    }

    proptest::proptest! {
        /// With times in order and the watermark at the newest one, forgetting loses no
        /// match: the table agrees with a naive scan of every earlier record, through
        /// sweeps that rebuild its buffer of ids.
        #[test]
        fn agrees_with_a_naive_scan_through_sweeps(
            steps in proptest::collection::vec((0u8..40, 0u64..400), 1..600)
        ) {
            let mut s = Seen::new(1_000, 0);
            let mut earlier: Vec<(String, u64)> = Vec::new();
            let mut time = 0u64;
            for (id, step) in steps {
                time += step;
                let id = format!("id-{id}");
                s.forget_before(time);
                let naive = earlier
                    .iter()
                    .any(|(e, t)| *e == id && t.abs_diff(time) <= 1_000);
                proptest::prop_assert_eq!(s.repeat(&id, time), naive, "{} at {}", id, time);
                earlier.push((id, time));
            }
        }
    }
}
