//! q5, hot items: for each hopping window of 10 s sliding every 2 s over bids, the
//! auction(s) with the most bids (all of them on a tie).
//!
//! ```text
//! events ─► count per (auction, 2 s slice)   (Pipeline; per activation, on the reading worker)
//!        ─► count per (window, auction)      (exchanged by auction; per window end)
//!        ─► the local leaders of a window    (when the frontier reaches the window end)
//!        ─► the global leaders               (exchanged by window end)
//! ```
//!
//! A bid at `date_time` t counts in the five windows `[s, s + 10 s)` with `s` a multiple
//! of 2 s and `s <= t < s + 10 s`, except those whose end is at or before the bid's
//! timestamp (it is late for them). A window's counts are complete when the frontier
//! reaches its end; each worker then sends its leaders (the global leaders are among them),
//! at the window end, and the worker owning the window emits one [`Q5Row`] per leader
//! when the frontier passes the end. Each window's state is dropped as it is emitted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Operator};

use super::{FastMap, route};
use crate::nexmark::model::Event;

/// Window size (ms).
pub const SIZE: u64 = 10_000;
/// Window slide (ms).
pub const SLIDE: u64 = 2_000;
const WINDOWS_PER_BID: u64 = SIZE / SLIDE;

/// An auction with the most bids in a window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q5Row {
    /// Auction id.
    pub auction: u64,
    /// Its bids in the window.
    pub num: u64,
    /// Window start (ms).
    pub window_start: u64,
    /// Window end (ms, exclusive).
    pub window_end: u64,
}

/// The hot items of `events`' bids: see the module docs.
pub fn q5<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (Q5Row, u64, isize)> {
    // (auction, slice, first window index, bids)
    let partial: StreamVec<'s, u64, (u64, u64, u64, u64)> =
        events.unary(Pipeline, "Q5Slices", |_cap, _info| {
            let mut counts: FastMap<(u64, u64, u64), u64> = FastMap::default();
            move |input, output| {
                let mut least: Option<Capability<u64>> = None;
                input.for_each_stamp(|cap, batches| {
                    let Some(&time) = cap.least() else { return };
                    if least.as_ref().is_none_or(|c| time < *c.time()) {
                        least = Some(cap.delayed(&time, 0));
                    }
                    // The first window whose end is after `time`: earlier ones are closed.
                    let open_from = match time.checked_sub(SIZE) {
                        None => 0,
                        Some(d) => d / SLIDE + 1,
                    };
                    for batch in batches {
                        for e in batch.drain(..) {
                            if let Event::Bid(b) = e {
                                let slice = b.date_time / SLIDE;
                                let first =
                                    (slice + 1).saturating_sub(WINDOWS_PER_BID).max(open_from);
                                if first <= slice {
                                    *counts.entry((b.auction, slice, first)).or_default() += 1;
                                }
                            }
                        }
                    }
                });
                if let Some(cap) = least {
                    output
                        .session(&cap)
                        .give_iterator(counts.drain().map(|((a, s, f), n)| (a, s, f, n)));
                }
            }
        });

    // (window end, auction, bids): each worker's leaders of a window.
    let leaders: StreamVec<'s, u64, (u64, u64, u64)> = partial.unary_frontier(
        Exchange::new(|r: &(u64, u64, u64, u64)| route(r.0)),
        "Q5Windows",
        |_cap, _info| {
            let mut windows: BTreeMap<u64, (Capability<u64>, FastMap<u64, u64>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, batches| {
                    for batch in batches {
                        for &(auction, slice, first, n) in batch.iter() {
                            for w in first..=slice {
                                let end = w * SLIDE + SIZE;
                                let (_, counts) = windows
                                    .entry(end)
                                    .or_insert_with(|| (cap.delayed(&end, 0), FastMap::default()));
                                *counts.entry(auction).or_default() += n;
                            }
                        }
                    }
                });
                while let Some(entry) = windows.first_entry() {
                    if frontier.less_than(entry.key()) {
                        break;
                    }
                    let (end, (cap, counts)) = entry.remove_entry();
                    let max = counts.values().copied().max().unwrap_or(0);
                    output.session(&cap).give_iterator(
                        counts
                            .into_iter()
                            .filter(|&(_, n)| n == max)
                            .map(|(a, n)| (end, a, n)),
                    );
                }
            }
        },
    );

    leaders.unary_frontier(
        Exchange::new(|r: &(u64, u64, u64)| route(r.0)),
        "Q5Leaders",
        |_cap, _info| {
            let mut windows: BTreeMap<u64, (Capability<u64>, u64, Vec<u64>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, batches| {
                    for batch in batches {
                        for &(end, auction, n) in batch.iter() {
                            let (_, max, auctions) = windows
                                .entry(end)
                                .or_insert_with(|| (cap.delayed(&end, 0), 0, Vec::new()));
                            if n > *max {
                                *max = n;
                                auctions.clear();
                            }
                            if n == *max {
                                auctions.push(auction);
                            }
                        }
                    }
                });
                while let Some(entry) = windows.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (end, (cap, num, mut auctions)) = entry.remove_entry();
                    auctions.sort_unstable();
                    output
                        .session(&cap)
                        .give_iterator(auctions.into_iter().map(|auction| {
                            let row = Q5Row {
                                auction,
                                num,
                                window_start: end - SIZE,
                                window_end: end,
                            };
                            (row, end, 1)
                        }));
                }
            }
        },
    )
}
