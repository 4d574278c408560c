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
//! forgotten. When it is forgotten reaches no output: an id kept longer matches nothing.

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// The flag in [`Entry::len`] of an id seen at more than one time.
const MORE: u32 = 1 << 31;
/// The shards of a partition's ids, by the top bits of their hash; each grows and is
/// swept on its own, at its own moment.
const SHARDS: usize = 16;
/// The old table's buckets each insert moves while a shard grows. A shard grows when it
/// is at least 3/4 full (see [`Shard::grow_at`]) into a table of twice its capacity, and
/// its old table has 8/7 buckets per entry it can hold, so the move ends after 2/7 of the
/// old capacity's inserts, long before the new table is 3/4 full. Few, because each entry
/// moved is a random write into the new table (a cache miss, often a first touch of its
/// page).
const MOVE_BUCKETS: usize = 4;
/// The capacity of a shard's first table.
const FIRST_CAPACITY: usize = 64;

/// One remembered id: where its bytes are in its [`Shard`]'s buffer, 32 bits of its hash,
/// and the first event time it was seen at; 24 bytes, because the table is most of a
/// partition's dedupe memory and each growth writes all of it to fresh pages. An id seen
/// at other times too (a duplicate outside the horizon: rare) has them in
/// [`Shard::more`], under its `start`.
#[derive(Debug)]
struct Entry {
    start: u64,
    time: u64,
    hash: u32,
    /// The id's length in bytes, with [`MORE`] set when [`Shard::more`] has further times.
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
/// the table takes the bucket from the low bits and a tag from the top ones. (The shard is
/// the top bits of `h`, on which the low bits of the product do not depend.)
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
/// costs: the ids' bytes go into one growing buffer per shard, and the table holds their
/// places and hashes, so remembering one allocates nothing (amortized) and a record's id is
/// hashed once, for the lookup and the insert together. Each sweep copies the ids it
/// keeps into a second buffer and swaps the two, so the buffer holds no more than the ids
/// still remembered and what arrived since the last sweep, and in a steady state neither
/// buffer grows again: a fresh buffer per sweep was regrown by doubling, each time into
/// fresh pages (a twentieth of a worker's time in a profile).
///
/// A table grows without a pause: when it is full enough, it becomes the old table, a new
/// one of twice its capacity takes the inserts, and each insert moves the entries of a few
/// of the old table's buckets over ([`MOVE_BUCKETS`]), until none is left. Lookups try
/// both. A table grown in one step moved every entry at once: at a million ids that held
/// the worker for over 100 ms.
///
/// The ids are split into [`SHARDS`] shards, which grow at different fill levels and are
/// swept one at a time, so that no moment pays for all of a partition's memory. A growth
/// writes the new table's pages for the first time, and a first write of a page is a page
/// fault that zeroes it: on this project's test machines about 12 µs each. One table per
/// partition, every partition of a worker filling at the same rate, made each doubling
/// fault in all of a worker's new tables at once: 50 MB per partition at a million ids,
/// 0.6 s for four partitions, and a live run at 190k records/s fell behind its input by
/// that much at every doubling (the fetch stage's p99). The partitions' shards are
/// staggered too (`stagger`).
///
/// Hashed with foldhash (randomly seeded): SipHash was most of dedupe's cost. The tables'
/// order reaches no output.
#[derive(Debug)]
pub struct Seen {
    horizon: u64,
    keep: u64,
    shards: Vec<Shard>,
    hasher: foldhash::fast::RandomState,
    /// The watermark of the last sweep.
    swept_at: u64,
    /// The shard the next sweep goes over.
    next_sweep: usize,
}

/// One shard of [`Seen`].
#[derive(Debug, Default)]
struct Shard {
    ids: HashTable<Entry>,
    /// The table being moved into `ids`, from bucket `moved` on; empty when none is.
    old: HashTable<Entry>,
    moved: usize,
    bytes: String,
    /// The buffer the next sweep copies into; empty between sweeps.
    spare: String,
    /// The further event times of ids seen at more than one, by their entry's `start`.
    more: HashMap<u64, Vec<u64>>,
    /// Where in [3/4, 1) of its capacity this shard's table grows, in 1/2¹⁶ of it.
    grow_at: u64,
}

impl Seen {
    /// An empty set of ids for `horizon_ms`, where records reach dedupe at most
    /// `window_reach_ms` behind the watermark. `stagger` (the partition, say) shifts when
    /// its shards grow, so that partitions filling at the same rate do not grow together.
    pub fn new(horizon_ms: u64, window_reach_ms: u64, stagger: u64) -> Seen {
        // A shard grows at (3 SHARDS + j + d) / (4 SHARDS) of its capacity: shard j at its
        // own level, and d in [0, 1) from `stagger` (by the golden ratio, so that
        // consecutive partitions are far apart). Growing at under 3/4 cost more memory
        // and more page faults for no fewer stalls.
        let d = stagger.wrapping_mul(40_503) % 65_536;
        let shards = (0..SHARDS as u64)
            .map(|j| Shard {
                ids: HashTable::with_capacity(FIRST_CAPACITY),
                grow_at: ((3 * SHARDS as u64 + j) * 65_536 + d) / (4 * SHARDS as u64),
                ..Shard::default()
            })
            .collect();
        Seen {
            horizon: horizon_ms,
            keep: horizon_ms.saturating_add(window_reach_ms),
            shards,
            hasher: foldhash::fast::RandomState::default(),
            swept_at: 0,
            next_sweep: 0,
        }
    }

    /// Records `id` at `time`; says whether an earlier record repeats it (same id, times
    /// at most the horizon apart).
    pub fn repeat(&mut self, id: &str, time: u64) -> bool {
        // A record's id is a member of its payload, which Kafka bounds far below 2 GiB.
        let len = u32::try_from(id.len())
            .ok()
            .filter(|l| l & MORE == 0)
            .expect("an id fits in a Kafka record, under 2 GiB");
        let hash = (self.hasher.hash_one(id) >> 32) as u32;
        let shard = &mut self.shards[(hash >> (32 - SHARDS.trailing_zeros())) as usize];
        let bytes = &shard.bytes;
        let matches = |e: &Entry| e.hash == hash && &bytes[e.range()] == id;
        let found = match shard.ids.find_mut(spread(hash), matches) {
            Some(entry) => Some(entry),
            None => shard.old.find_mut(spread(hash), matches),
        };
        let Some(entry) = found else {
            let start = shard.bytes.len() as u64;
            shard.bytes.push_str(id);
            let entry = Entry {
                start,
                time,
                hash,
                len,
            };
            shard.make_room();
            put(&mut shard.ids, entry);
            return false;
        };
        let near = |t: &u64| t.abs_diff(time) <= self.horizon;
        if !entry.has_more() {
            if entry.time != time {
                entry.len |= MORE;
                shard.more.insert(entry.start, vec![time]);
            }
            return near(&entry.time);
        }
        let more = shard
            .more
            .get_mut(&entry.start)
            .expect("an entry flagged with more times has them");
        let repeat = near(&entry.time) || more.iter().any(near);
        if entry.time != time && !more.contains(&time) {
            more.push(time);
        }
        repeat
    }

    /// Forgets ids that can no longer match, given the partition's `watermark`: one shard
    /// per call, each time the watermark has moved a [`SHARDS`]th of the horizon (at least
    /// 1 s in all) since the last, so that each shard is swept once per horizon.
    pub fn forget_before(&mut self, watermark: u64) {
        let every = self.horizon.max(1_000) / SHARDS as u64;
        if watermark.saturating_sub(self.swept_at) < every {
            return;
        }
        self.swept_at = watermark;
        let oldest = watermark.saturating_sub(self.keep);
        self.shards[self.next_sweep].sweep(oldest);
        self.next_sweep = (self.next_sweep + 1) % SHARDS;
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.ids.len() + s.old.len()).sum()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// Before an insert: starts a growth when the table is as full as this shard grows at
    /// (the id buffer is sized for the new table then too, rather than doubling at its own
    /// moment), or moves a few more buckets of one under way.
    fn make_room(&mut self) {
        if self.old.is_empty() {
            let capacity = self.ids.capacity();
            if self.ids.len() as u64 * 65_536 >= capacity as u64 * self.grow_at {
                let len = self.ids.len().max(1);
                let per_id = self.bytes.len().div_ceil(len);
                self.bytes
                    .reserve((2 * capacity * per_id).saturating_sub(self.bytes.len()));
                self.old = std::mem::replace(&mut self.ids, HashTable::with_capacity(2 * capacity));
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

    /// Drops the ids first seen before `oldest` and not since, and compacts the buffer.
    fn sweep(&mut self, oldest: u64) {
        // A growth under way ends here: the sweep goes over every entry anyway.
        for entry in std::mem::take(&mut self.old) {
            put(&mut self.ids, entry);
        }
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
        if self.ids.capacity() > 4 * self.ids.len().max(FIRST_CAPACITY) {
            self.ids.shrink_to_fit(|e| spread(e.hash));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_id_within_the_horizon_repeats_and_outside_it_does_not() {
        let mut s = Seen::new(1_000, 0, 0);
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
        let mut s = Seen::new(1_000, 0, 0);
        assert!(!s.repeat("a", 0));
        assert!(s.repeat("a", 900), "a duplicate");
        assert!(
            s.repeat("a", 1_800),
            "within the horizon of the duplicate, though not of the first"
        );
    }

    /// Sweeps every shard once, at watermarks from `from` on, a sixteenth of `horizon_ms`
    /// apart (rounded up).
    fn sweep_every_shard(s: &mut Seen, from: u64, horizon_ms: u64) {
        let every = horizon_ms.div_ceil(SHARDS as u64);
        for i in 0..SHARDS as u64 {
            let next = s.next_sweep;
            s.forget_before(from + i * every);
            assert_eq!(s.next_sweep, (next + 1) % SHARDS, "one shard swept");
        }
    }

    #[test]
    fn ids_far_behind_the_watermark_are_forgotten() {
        let mut s = Seen::new(1_000, 5_000, 0);
        s.repeat("old", 10_000);
        s.repeat("new", 20_000);
        sweep_every_shard(&mut s, 15_000, 1_000);
        assert_eq!(s.len(), 2, "10 000 is within reach + horizon of 16 000");
        let next = s.next_sweep;
        s.forget_before(15_000 + 15 * 63 + 10);
        assert_eq!(
            s.next_sweep, next,
            "sweeps are spaced a sixteenth of the horizon apart"
        );
        sweep_every_shard(&mut s, 16_500, 1_000);
        assert_eq!(s.len(), 1);
        assert!(!s.repeat("old", 10_000), "forgotten");
    }

    #[test]
    fn an_id_seen_at_several_times_keeps_the_recent_ones_when_old_ones_are_forgotten() {
        let mut s = Seen::new(1_000, 0, 0);
        assert!(!s.repeat("a", 10_000));
        assert!(!s.repeat("a", 13_000), "outside the horizon of the first");
        sweep_every_shard(&mut s, 12_000, 1_000);
        assert_eq!(s.len(), 1, "13 000 is kept");
        assert!(s.repeat("a", 13_900), "within the horizon of the kept time");
        assert!(
            !s.repeat("a", 11_000),
            "10 000 was forgotten, 13 000 is too far"
        );
    }

    #[test]
    fn shards_grow_at_distinct_levels_between_three_quarters_full_and_full() {
        let mut levels: Vec<u64> = (0..4)
            .flat_map(|stagger| Seen::new(1_000, 0, stagger).shards)
            .map(|shard| shard.grow_at)
            .collect();
        assert!(
            levels.iter().all(|l| (49_152..65_536).contains(l)),
            "{levels:?}"
        );
        let all = levels.len();
        levels.sort_unstable();
        levels.dedup();
        assert_eq!(
            levels.len(),
            all,
            "every shard of 4 partitions at its own level"
        );
    }

    #[test]
    fn the_table_grows_a_few_buckets_per_insert_and_finds_every_id_meanwhile() {
        let mut s = Seen::new(u64::MAX / 4, 0, 3);
        let mut growths = [0; SHARDS];
        for i in 0..20_000u64 {
            let before: Vec<(bool, usize, usize)> = s
                .shards
                .iter()
                .map(|h| (!h.old.is_empty(), h.ids.capacity(), h.old.len()))
                .collect();
            assert!(!s.repeat(&format!("id-{i}"), i), "id-{i} is new");
            for (j, (h, (moving, capacity, old))) in s.shards.iter().zip(before).enumerate() {
                if moving {
                    assert!(
                        old - h.old.len() <= MOVE_BUCKETS,
                        "insert {i} moved {} entries of shard {j}",
                        old - h.old.len()
                    );
                    assert_eq!(
                        h.ids.capacity(),
                        capacity,
                        "shard {j}'s new table does not grow while the old one is moved into it"
                    );
                } else if !h.old.is_empty() {
                    growths[j] += 1;
                }
            }
            assert_eq!(s.len() as u64, i + 1);
            if i % 97 == 0 {
                for j in (0..=i).step_by(331) {
                    assert!(s.repeat(&format!("id-{j}"), j), "id-{j} is found after {i}");
                }
            }
        }
        assert!(
            growths.iter().all(|g| *g >= 3),
            "every shard grew, some more than once: {growths:?}"
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
            let mut s = Seen::new(1_000, 0, 0);
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
            // About 2,000 records per horizon: each shard outgrows its first capacity
            // (112 entries) between its sweeps.
            let mut s = Seen::new(40_000, 0, 0);
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
