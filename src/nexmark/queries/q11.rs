//! q11, user sessions: per bidder, session windows with a 10 s gap over the bids'
//! `date_time`; the number of bids in each session.
//!
//! ```text
//! events ─► per-bidder partial sessions    (Pipeline; per activation, on the reading worker)
//!        ─► merged sessions per bidder     (exchanged by bidder)
//!        ─► a row per session              (when the frontier passes its end)
//! ```
//!
//! A bid at `t` opens `[t, t + gap]`; sessions of one bidder that overlap or touch merge
//! (as Flink's session windows do), so a session `[start, last + gap]` takes every bid at
//! `t <= last + gap`. It is final when the frontier passes `session_end = last + gap`;
//! its [`Q11Row`] is emitted then, at a timestamp at or after that end, and its state is
//! freed. Open state: the open sessions, O(active bidders). A bid that arrives after its
//! session was emitted (possible only out of order, beyond the source's bound) starts a
//! new session: emitted results are never changed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Operator};

use super::{FastMap, route};
use crate::nexmark::model::Event;

/// Session gap (ms).
pub const GAP: u64 = 10_000;

/// One bidder's session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q11Row {
    /// Bidder id.
    pub bidder: u64,
    /// Bids in the session.
    pub bid_count: u64,
    /// The first bid's time (ms).
    pub session_start: u64,
    /// The last bid's time plus the gap (ms).
    pub session_end: u64,
}

/// Part of a session: first bid, last bid, bids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    start: u64,
    last: u64,
    count: u64,
}

impl Span {
    /// Whether the two overlap or touch once each bid is widened by the gap.
    fn meets(&self, other: &Span) -> bool {
        other.start <= self.last + GAP && self.start <= other.last + GAP
    }

    fn absorb(&mut self, other: &Span) {
        self.start = self.start.min(other.start);
        self.last = self.last.max(other.last);
        self.count += other.count;
    }
}

/// The bid sessions of `events`: see the module docs.
pub fn q11<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (Q11Row, u64, isize)> {
    let partial: StreamVec<'s, u64, (u64, Span)> =
        events.unary(Pipeline, "Q11Spans", |_cap, _info| {
            let mut open: FastMap<u64, Span> = FastMap::default();
            let mut done: Vec<(u64, Span)> = Vec::new();
            move |input, output| {
                let mut least: Option<Capability<u64>> = None;
                input.for_each_stamp(|cap, batches| {
                    let Some(&time) = cap.least() else { return };
                    if least.as_ref().is_none_or(|c| time < *c.time()) {
                        least = Some(cap.delayed(&time, 0));
                    }
                    for batch in batches {
                        for e in batch.drain(..) {
                            if let Event::Bid(b) = e {
                                let t = b.date_time;
                                let bid = Span {
                                    start: t,
                                    last: t,
                                    count: 1,
                                };
                                match open.entry(b.bidder) {
                                    Entry::Vacant(v) => {
                                        v.insert(bid);
                                    }
                                    Entry::Occupied(mut o) => {
                                        let span = o.get_mut();
                                        if span.meets(&bid) {
                                            span.absorb(&bid);
                                        } else {
                                            done.push((b.bidder, std::mem::replace(span, bid)));
                                        }
                                    }
                                }
                            }
                        }
                    }
                });
                if let Some(cap) = least {
                    let mut session = output.session(&cap);
                    session.give_iterator(done.drain(..));
                    session.give_iterator(open.drain());
                }
            }
        });

    partial.unary_frontier(
        Exchange::new(|(bidder, _): &(u64, Span)| route(*bidder)),
        "Q11Sessions",
        |_cap, _info| {
            // Per bidder, its open sessions (disjoint, not touching).
            let mut sessions: FastMap<u64, Vec<Span>> = FastMap::default();
            // (session end, bidder) for every session end set; stale entries (a session
            // that grew or merged since) find nothing ready and are skipped.
            let mut timers: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
            // At or below every open session's end.
            let mut held: Option<Capability<u64>> = None;
            let mut ready: Vec<(Q11Row, u64, isize)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, batches| {
                    let Some(&time) = cap.least() else { return };
                    for batch in batches {
                        for &(bidder, span) in batch.iter() {
                            let open = sessions.entry(bidder).or_default();
                            let mut merged = span;
                            open.retain(|s| {
                                if s.meets(&merged) {
                                    merged.absorb(s);
                                    false
                                } else {
                                    true
                                }
                            });
                            // A merge can bridge sessions the scan passed before it grew.
                            while let Some(i) = open.iter().position(|s| s.meets(&merged)) {
                                let s = open.swap_remove(i);
                                merged.absorb(&s);
                            }
                            open.push(merged);
                            let end = merged.last + GAP;
                            timers.push(Reverse((end, bidder)));
                            if held.as_ref().is_none_or(|h| *h.time() > end) {
                                held = Some(cap.delayed(&end.max(time), 0));
                            }
                        }
                    }
                });
                // Sessions ending before `limit` are final.
                let limit = frontier.frontier().first().copied();
                let mut emit_at = 0;
                while let Some(&Reverse((end, bidder))) = timers.peek() {
                    if limit.is_some_and(|l| end >= l) {
                        break;
                    }
                    timers.pop();
                    let Some(open) = sessions.get_mut(&bidder) else {
                        continue;
                    };
                    open.retain(|s| {
                        let e = s.last + GAP;
                        if limit.is_some_and(|l| e >= l) {
                            return true;
                        }
                        emit_at = emit_at.max(e);
                        let row = Q11Row {
                            bidder,
                            bid_count: s.count,
                            session_start: s.start,
                            session_end: e,
                        };
                        ready.push((row, e, 1));
                        false
                    });
                    if open.is_empty() {
                        sessions.remove(&bidder);
                    }
                }
                if !ready.is_empty() {
                    let held = held
                        .as_ref()
                        .expect("a capability is held while sessions are open");
                    let cap = held.delayed(&emit_at);
                    for r in ready.iter_mut() {
                        r.1 = emit_at;
                    }
                    output.session(&cap).give_iterator(ready.drain(..));
                }
                match timers.peek() {
                    None => held = None,
                    Some(&Reverse((next, _))) => {
                        if let Some(h) = held.as_mut().filter(|h| *h.time() < next) {
                            h.downgrade(&next);
                        }
                    }
                }
            }
        },
    )
}
