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

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// The flag in [`Entry::len`] of an id seen at more than one time.
const MORE: u32 = 1 << 31;
/// The old table's buckets each insert moves while the table grows: the old table has at
/// most 16/7 buckets per entry it can hold, and the new one holds twice as many, so the
/// move ends long before the new table fills.
const MOVE_BUCKETS: usize = 32;
/// The capacity of a partition's first table.
const FIRST_CAPACITY: usize = 1024;

/// One remembered id: where its bytes are in [`Seen`]'s buffer, 32 bits of its hash, and
/// the first event time it was seen at; 24 bytes, because the table is most of a
/// partition's dedupe memory and each growth writes all of it to fresh pages. An id seen
/// at other times too (a duplicate outside the horizon: rare) has them in
/// [`Seen::more`], under its `start`.
#[derive(Debug)]
struct Entry {
    start: u64,
    time: u64,
    hash: u32,
    /// The id's length in bytes, with [`MORE`] set when [`Seen::more`] has further times.
    len: u32,
}

impl Entry {
    fn range(&self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + (self.len & !MORE) as usize
    }

    fn has_more(&self) -> bool {
        self.len & MORE != 0
    }
}

/// The table's 64-bit hash of an entry with 32-bit hash `h`: spread over all 64 bits, as
/// the table takes the bucket from the low bits and a tag from the top ones.
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Inserts `entry`, which is not in `table` yet.
fn put(table: &mut HashTable<Entry>, entry: Entry) {
    table.insert_unique(spread(entry.hash), entry, |e| spread(e.hash));
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
/// The table grows without a pause: when it is full, it becomes the old table, a new one
/// of twice its capacity takes the inserts, and each insert moves the entries of a few of
/// the old table's buckets over ([`MOVE_BUCKETS`]), until none is left. Lookups try both.
/// A table grown in one step moved every entry at once: at a million ids that held the
/// worker for over 100 ms, and every partition of a worker grows at about the same time.
///
/// Hashed with foldhash (randomly seeded): SipHash was most of dedupe's cost. The table's
/// order reaches no output.
#[derive(Debug, Default)]
pub struct Seen {
    horizon: u64,
    keep: u64,
    ids: HashTable<Entry>,
    /// The table being moved into `ids`, from bucket `moved` on; empty when none is.
    old: HashTable<Entry>,
    moved: usize,
    bytes: String,
    /// The buffer the next sweep copies into; empty between sweeps.
    spare: String,
    /// The further event times of ids seen at more than one, by their entry's `start`.
    more: HashMap<u64, Vec<u64>>,
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
        // A record's id is a member of its payload, which Kafka bounds far below 2 GiB.
        let len = u32::try_from(id.len())
            .ok()
            .filter(|l| l & MORE == 0)
            .expect("an id fits in a Kafka record, under 2 GiB");
        let hash = (self.hasher.hash_one(id) >> 32) as u32;
        let bytes = &self.bytes;
        let matches = |e: &Entry| e.hash == hash && &bytes[e.range()] == id;
        let found = match self.ids.find_mut(spread(hash), matches) {
            Some(entry) => Some(entry),
            None => self.old.find_mut(spread(hash), matches),
        };
        let Some(entry) = found else {
            let start = self.bytes.len() as u64;
            self.bytes.push_str(id);
            let entry = Entry {
                start,
                time,
                hash,
                len,
            };
            self.make_room();
            put(&mut self.ids, entry);
            return false;
        };
        let near = |t: &u64| t.abs_diff(time) <= self.horizon;
        if !entry.has_more() {
            if entry.time != time {
                entry.len |= MORE;
                self.more.insert(entry.start, vec![time]);
            }
            return near(&entry.time);
        }
        let more = self
            .more
            .get_mut(&entry.start)
            .expect("an entry flagged with more times has them");
        let repeat = near(&entry.time) || more.iter().any(near);
        if entry.time != time && !more.contains(&time) {
            more.push(time);
        }
        repeat
    }

    /// Before an insert: starts growing a full table, or moves a few more of the old
    /// table's buckets.
    fn make_room(&mut self) {
        if self.old.is_empty() {
            if self.ids.len() == self.ids.capacity() {
                let capacity = (2 * self.ids.capacity()).max(FIRST_CAPACITY);
                self.old = std::mem::replace(&mut self.ids, HashTable::with_capacity(capacity));
                self.moved = 0;
            }
            return;
        }
        let end = (self.moved + MOVE_BUCKETS).min(self.old.num_buckets());
        for bucket in self.moved..end {
            if let Ok(entry) = self.old.get_bucket_entry(bucket) {
                put(&mut self.ids, entry.remove().0);
            }
        }
        self.moved = end;
        if end == self.old.num_buckets() {
            self.old = HashTable::new();
        }
    }

    /// Forgets what no record judged against `watermark` or later can repeat. Sweeps at
    /// most once per `horizon` of watermark progress, so the cost per record stays small.
    pub fn forget_before(&mut self, watermark: u64) {
        if watermark.saturating_sub(self.swept_at) < self.horizon.max(1_000) {
            return;
        }
        self.swept_at = watermark;
        // A growth under way ends here: the sweep goes over every entry anyway.
        for entry in std::mem::take(&mut self.old) {
            put(&mut self.ids, entry);
        }
        let oldest = watermark.saturating_sub(self.keep);
        let mut more = std::mem::take(&mut self.more);
        let mut bytes = std::mem::take(&mut self.spare);
        bytes.clear();
        let mut kept_more = HashMap::new();
        self.ids.retain(|e| {
            let mut times = match e.has_more() {
                false if e.time < oldest => return false,
                false => Vec::new(),
                true => {
                    let mut times = more
                        .remove(&e.start)
                        .expect("an entry flagged with more times has them");
                    times.push(e.time);
                    times.retain(|t| *t >= oldest);
                    let Some(first) = times.pop() else {
                        return false;
                    };
                    e.time = first;
                    times
                }
            };
            let start = bytes.len() as u64;
            bytes.push_str(&self.bytes[e.range()]);
            e.start = start;
            e.len &= !MORE;
            if !times.is_empty() {
                times.shrink_to_fit();
                e.len |= MORE;
                kept_more.insert(start, std::mem::take(&mut times));
            }
            true
        });
        self.more = kept_more;
        self.spare = std::mem::replace(&mut self.bytes, bytes);
        self.spare.clear();
        if self.ids.capacity() > 4 * self.ids.len().max(1024) {
            self.ids.shrink_to_fit(|e| spread(e.hash));
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len() + self.old.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn the_table_grows_a_few_buckets_per_insert_and_finds_every_id_meanwhile() {
        let mut s = Seen::new(u64::MAX / 4, 0);
        let mut growths = 0;
        for i in 0..20_000u64 {
            let (moving, capacity, old) = (!s.old.is_empty(), s.ids.capacity(), s.old.len());
            assert!(!s.repeat(&format!("id-{i}"), i), "id-{i} is new");
            if moving {
                assert!(
                    old - s.old.len() <= MOVE_BUCKETS,
                    "insert {i} moved {} entries",
                    old - s.old.len()
                );
                assert_eq!(
                    s.ids.capacity(),
                    capacity,
                    "the new table does not grow while the old one is moved into it"
                );
            } else if !s.old.is_empty() {
                growths += 1;
            }
            assert_eq!(s.len() as u64, i + 1);
            if i % 97 == 0 {
                for j in (0..=i).step_by(331) {
                    assert!(s.repeat(&format!("id-{j}"), j), "id-{j} is found after {i}");
                }
            }
        }
        assert!(growths >= 4, "the table grew {growths} times");
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

        /// The same through the table's growth: thousands of ids, some repeated, with
        /// sweeps that can fall while the old table is still being moved.
        #[test]
        fn agrees_with_a_naive_scan_while_the_table_grows(
            steps in proptest::collection::vec((0u16..6_000, 0u64..40), 4_000..5_000)
        ) {
            // About 2,000 records per horizon: the table outgrows its first capacity
            // (1,792 entries) between sweeps.
            let mut s = Seen::new(40_000, 0);
            let mut last: HashMap<String, Vec<u64>> = HashMap::new();
            let mut time = 0u64;
            for (id, step) in steps {
                time += step;
                let id = format!("id-{id}");
                s.forget_before(time);
                let naive = last
                    .get(&id)
                    .is_some_and(|ts| ts.iter().any(|t| t.abs_diff(time) <= 40_000));
                proptest::prop_assert_eq!(s.repeat(&id, time), naive, "{} at {}", id, time);
                last.entry(id).or_default().push(time);
            }
        }
    }
}
