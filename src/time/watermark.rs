//! Per-partition watermarks with bounded out-of-orderness and idleness.
//!
//! For each partition `p`: `max_seen_p` is the greatest event time read from it, and its
//! watermark is `wm_p = max_seen_p − max_out_of_orderness` (never decreasing). The source
//! worker holds its timely capability at the least watermark of its *active* partitions, so
//! the dataflow frontier is the global watermark.
//!
//! A partition is idle after `idle_timeout` without data: it stops holding the capability
//! back. When it receives data again, its watermark is first raised to the capability it
//! stopped holding back, so its records are judged late against that. A finished partition
//! (bounded runs: its end offset was reached) never holds anything back again.
//!
//! The wall clock enters only through the `now` arguments, so the logic is testable, and a
//! resumed partition replays the idleness decisions the committed run made
//! ([`Watermarks::replay`], [`crate::progress`] explains why that keeps recovery exact).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::progress::Replay;

#[derive(Clone, Debug)]
struct Partition {
    max_seen: Option<u64>,
    watermark: u64,
    last_data: Instant,
    idle: bool,
    finished: bool,
    /// Decisions to repeat before the partition may turn idle again.
    replay: Option<Replay>,
}

/// What the worker's capability should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Hold the capability at this time (it only ever rises).
    At(u64),
    /// Every unfinished partition is idle: this worker holds nothing back of its own and
    /// may follow the other workers ([`Watermarks::follow`]); it stays at this time until then.
    Idle(u64),
    /// Every partition is finished: release the capability.
    Release,
}

/// The watermarks of the partitions one worker reads.
#[derive(Clone, Debug)]
pub struct Watermarks {
    max_out_of_orderness: u64,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, Partition>,
    held: u64,
    /// Partitions still replaying.
    replays: usize,
}

impl Watermarks {
    /// Tracks `partitions`, each starting with watermark `start` (0, or a restored value).
    pub fn new(
        partitions: impl IntoIterator<Item = i32>,
        start: u64,
        max_out_of_orderness_ms: u64,
        idle_timeout: Duration,
        now: Instant,
    ) -> Self {
        let partitions = partitions
            .into_iter()
            .map(|p| {
                (
                    p,
                    Partition {
                        max_seen: None,
                        watermark: start,
                        last_data: now,
                        idle: false,
                        finished: false,
                        replay: None,
                    },
                )
            })
            .collect();
        Watermarks {
            max_out_of_orderness: max_out_of_orderness_ms,
            idle_timeout,
            partitions,
            held: start,
            replays: 0,
        }
    }

    /// Records an event at time `t` read from `p`; returns `p`'s watermark after it.
    /// The record enters the dataflow at `max(t, watermark)`.
    pub fn observe(&mut self, p: i32, t: u64, now: Instant) -> u64 {
        let held = self.held;
        let ooo = self.max_out_of_orderness;
        let Some(part) = self.partitions.get_mut(&p) else {
            return held;
        };
        if part.idle {
            part.idle = false;
            part.watermark = part.watermark.max(held);
        }
        part.last_data = now;
        part.max_seen = Some(part.max_seen.map_or(t, |m| m.max(t)));
        part.watermark = part.watermark.max(t.saturating_sub(ooo));
        part.watermark
    }

    /// Restores `p` as it stood when resuming: `max_seen` read before the resume position,
    /// and the watermark it had there.
    pub fn restore(&mut self, p: i32, max_seen: Option<u64>, watermark: u64) {
        let ooo = self.max_out_of_orderness;
        if let Some(part) = self.partitions.get_mut(&p) {
            part.max_seen = max_seen;
            let own = max_seen.map_or(0, |m| m.saturating_sub(ooo));
            part.watermark = part.watermark.max(own).max(watermark);
        }
    }

    /// Makes `p`, resumed at offset `from`, repeat the committed run's idleness decisions:
    /// its moves at `from` or later are applied at their offsets, and it does not turn idle
    /// before the replay's end.
    pub fn replay(&mut self, p: i32, from: i64, replay: &Replay) {
        let Some(part) = self.partitions.get_mut(&p) else {
            return;
        };
        if part.replay.is_none() {
            self.replays += 1;
        }
        part.replay = Some(Replay {
            moves: replay.moves.range(from..).map(|(o, w)| (*o, *w)).collect(),
            until: replay.until.filter(|(o, _)| *o >= from),
        });
        // What is due at `from` is due now: the committed run had it before reading on.
        self.advance(p, from);
    }

    /// Called when `next` is the next offset to read from `p` (after each record):
    /// applies the replayed moves due before it, and ends the replay at its end.
    pub fn advance(&mut self, p: i32, next: i64) {
        if self.replays == 0 {
            return;
        }
        let Some(part) = self.partitions.get_mut(&p) else {
            return;
        };
        let Some(replay) = part.replay.as_mut() else {
            return;
        };
        while let Some(entry) = replay.moves.first_entry() {
            if *entry.key() > next {
                break;
            }
            part.watermark = part.watermark.max(entry.remove());
        }
        let over = match replay.until {
            Some((until, w)) if next >= until => {
                part.watermark = part.watermark.max(w);
                true
            }
            Some(_) => false,
            None => replay.moves.is_empty(),
        };
        if over {
            part.replay = None;
            self.replays -= 1;
        }
    }

    /// Whether `p` still replays the committed run's decisions.
    pub fn replaying(&self, p: i32) -> bool {
        self.partitions.get(&p).is_some_and(|x| x.replay.is_some())
    }

    /// Notes that `p` has delivered data (of any kind, valid or not) at `now`, without an
    /// event time: it is not idle.
    pub fn touch(&mut self, p: i32, now: Instant) {
        let held = self.held;
        if let Some(part) = self.partitions.get_mut(&p) {
            if part.idle {
                part.idle = false;
                part.watermark = part.watermark.max(held);
            }
            part.last_data = now;
        }
    }

    /// Marks `p` idle at once (a reference partition that has caught up with its end),
    /// unless it is replaying the committed run's decisions up to a known end.
    pub fn idle_now(&mut self, p: i32) {
        if let Some(part) = self.partitions.get_mut(&p)
            && part.replay.as_ref().is_none_or(|r| r.until.is_none())
        {
            part.idle = true;
        }
    }

    /// The current watermark of `p` (the held time for an unknown partition).
    pub fn watermark(&self, p: i32) -> u64 {
        self.partitions.get(&p).map_or(self.held, |x| x.watermark)
    }

    /// The greatest watermark any of the partitions reached (idle and finished ones
    /// included), or the held time if that is greater.
    pub fn greatest(&self) -> u64 {
        self.partitions
            .values()
            .map(|x| x.watermark)
            .fold(self.held, u64::max)
    }

    /// The greatest event time read from `p`, if any.
    pub fn max_seen(&self, p: i32) -> Option<u64> {
        self.partitions.get(&p).and_then(|x| x.max_seen)
    }

    /// Marks `p` finished: it no longer holds the capability.
    pub fn finish(&mut self, p: i32) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.finished = true;
        }
    }

    /// Whether `p` is finished.
    pub fn is_finished(&self, p: i32) -> bool {
        self.partitions.get(&p).is_none_or(|x| x.finished)
    }

    /// Marks partitions idle whose last data is `idle_timeout` old, and says where the
    /// capability should be: the least watermark of the active partitions, never lower than
    /// before. When every unfinished partition is idle, the capability stays where it is.
    pub fn hold(&mut self, now: Instant) -> Hold {
        let mut least: Option<u64> = None;
        let mut unfinished = false;
        for part in self.partitions.values_mut() {
            if part.finished {
                continue;
            }
            unfinished = true;
            if !part.idle
                // Until its replay ends, a partition repeats the committed decisions only.
                && part.replay.as_ref().is_none_or(|r| r.until.is_none())
                && now.saturating_duration_since(part.last_data) >= self.idle_timeout
            {
                part.idle = true;
            }
            if !part.idle {
                least = Some(least.map_or(part.watermark, |l| l.min(part.watermark)));
            }
        }
        if !unfinished {
            return Hold::Release;
        }
        match least {
            Some(least) => {
                self.held = self.held.max(least);
                Hold::At(self.held)
            }
            None => Hold::Idle(self.held),
        }
    }

    /// While every partition is idle, moves the held time up to `t` (the least watermark
    /// of the workers that still have active partitions). Partitions that wake up are
    /// judged against it.
    pub fn follow(&mut self, t: u64) {
        self.held = self.held.max(t);
    }

    /// The partitions currently idle.
    pub fn idle_partitions(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, x)| x.idle && !x.finished)
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn watermark_is_max_seen_minus_out_of_orderness_and_never_falls() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 100, IDLE, t0);
        assert_eq!(w.observe(0, 1_000, t0), 900);
        assert_eq!(
            w.observe(0, 950, t0),
            900,
            "an older record does not lower it"
        );
        assert_eq!(w.observe(0, 50, t0), 900);
        assert_eq!(w.hold(t0), Hold::At(0), "partition 1 has not advanced");
        assert_eq!(w.observe(1, 500, t0), 400);
        assert_eq!(w.hold(t0), Hold::At(400));
        assert_eq!(w.observe(1, 5_000, t0), 4_900);
        assert_eq!(w.hold(t0), Hold::At(900));
        assert_eq!(w.max_seen(0), Some(1_000));
    }

    #[test]
    fn small_times_do_not_underflow() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0], 0, 100, IDLE, t0);
        assert_eq!(w.observe(0, 30, t0), 0);
    }

    #[test]
    fn idle_partitions_stop_holding_back_and_rejoin_at_the_held_time() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 0, IDLE, t0);
        w.observe(0, 1_000, t0);
        assert_eq!(w.hold(t0 + Duration::from_secs(5)), Hold::At(0));
        // Partition 0 keeps receiving data; partition 1 stays silent past the timeout.
        w.observe(0, 2_000, t0 + Duration::from_secs(9));
        assert_eq!(w.hold(t0 + Duration::from_secs(10)), Hold::At(2_000));
        assert_eq!(w.idle_partitions(), vec![1]);
        // Partition 1 wakes up with an old record: its watermark is first raised to 2000.
        assert_eq!(w.observe(1, 10, t0 + Duration::from_secs(11)), 2_000);
        assert!(w.idle_partitions().is_empty());
        assert_eq!(w.hold(t0 + Duration::from_secs(11)), Hold::At(2_000));
    }

    #[test]
    fn all_idle_holds_and_all_finished_releases() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 0, IDLE, t0);
        w.observe(0, 700, t0);
        w.observe(1, 300, t0);
        assert_eq!(w.hold(t0), Hold::At(300));
        assert_eq!(
            w.hold(t0 + IDLE * 2),
            Hold::Idle(300),
            "nothing active: stay put"
        );
        assert_eq!(w.greatest(), 700, "what following nobody would go to");
        w.follow(5_000);
        assert_eq!(
            w.hold(t0 + IDLE * 2),
            Hold::Idle(5_000),
            "until told where the others are"
        );
        assert_eq!(
            w.observe(0, 100, t0 + IDLE * 3),
            5_000,
            "a waking partition starts at the followed time"
        );
        assert_eq!(w.hold(t0 + IDLE * 3), Hold::At(5_000));
        w.finish(0);
        w.finish(1);
        assert_eq!(w.hold(t0 + IDLE * 2), Hold::Release);
        let mut none = Watermarks::new([], 0, 0, IDLE, t0);
        assert_eq!(
            none.hold(t0),
            Hold::Release,
            "a worker without partitions releases at once"
        );
    }

    #[test]
    fn a_finished_partition_no_longer_holds_back() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 0, Duration::MAX, t0);
        w.observe(0, 100, t0);
        w.observe(1, 900, t0);
        assert_eq!(w.hold(t0), Hold::At(100));
        w.finish(0);
        assert_eq!(w.hold(t0), Hold::At(900));
    }

    #[test]
    fn a_replay_repeats_recorded_moves_and_decides_nothing_new_before_its_end() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 0, IDLE, t0);
        w.restore(0, Some(1_000), 1_000);
        w.restore(1, Some(1_000), 1_000);
        let replay = Replay {
            moves: [(5, 4_000), (9, 6_000), (20, 50_000)].into(),
            until: Some((12, 7_000)),
        };
        w.replay(0, 3, &replay);
        assert_eq!(w.watermark(0), 1_000);
        w.advance(0, 5);
        assert_eq!(w.watermark(0), 4_000, "the move at offset 5");
        w.observe(1, 9_000, t0);
        assert_eq!(
            w.hold(t0 + IDLE * 3),
            Hold::At(4_000),
            "a replaying partition never turns idle"
        );
        w.advance(0, 10);
        assert_eq!(w.watermark(0), 6_000, "moves passed over are applied");
        assert!(w.replaying(0));
        w.advance(0, 12);
        assert_eq!(w.watermark(0), 7_000, "the end of the replay");
        assert!(!w.replaying(0));
        w.observe(1, 9_000, t0 + IDLE * 3);
        assert_eq!(
            w.hold(t0 + IDLE * 3),
            Hold::At(9_000),
            "after it, idleness is decided anew (moves past the end are not replayed)"
        );
    }

    #[test]
    fn a_partition_caught_up_with_its_end_is_idle_at_once_unless_replaying() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0, 1], 0, 0, Duration::MAX, t0);
        w.observe(0, 100, t0);
        w.observe(1, 900, t0);
        assert_eq!(w.hold(t0), Hold::At(100));
        w.idle_now(0);
        assert_eq!(w.hold(t0), Hold::At(900), "no timeout needed");
        w.idle_now(1);
        assert_eq!(w.hold(t0), Hold::Idle(900));
        w.follow(5_000);
        assert_eq!(
            w.observe(0, 200, t0),
            5_000,
            "its next record is raised to the time it was left behind at"
        );
        let replay = Replay {
            moves: BTreeMap::new(),
            until: Some((10, 6_000)),
        };
        w.observe(0, 8_000, t0);
        w.replay(1, 3, &replay);
        w.observe(1, 950, t0);
        w.idle_now(1);
        assert_eq!(
            w.hold(t0),
            Hold::At(5_000),
            "a partition replaying up to a known end decides nothing new"
        );
    }

    #[test]
    fn a_replay_that_ends_where_it_resumes_applies_at_once() {
        let t0 = Instant::now();
        let mut w = Watermarks::new([0], 0, 100, IDLE, t0);
        w.restore(0, Some(1_000), 900);
        let replay = Replay {
            moves: [(3, 2_000), (7, 3_000)].into(),
            until: Some((7, 3_500)),
        };
        w.replay(0, 7, &replay);
        assert_eq!(w.watermark(0), 3_500);
        assert!(!w.replaying(0));
    }
}
