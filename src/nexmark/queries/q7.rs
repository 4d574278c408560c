//! Nexmark q7, highest bid: in each tumbling 10 s window of bids, the bids at the window's
//! highest price (all of them when several tie), as a differential join of the bids keyed by
//! `(window, price)` with the per-window maximum.
//!
//! ```text
//!  events ──► WindowTopBids ─┬─► (window_end, price) ──► reduce: max ──► ((window_end, max), ())
//!   (Pipeline: no exchange)  │                                              │ arranged
//!                            └─► ((window_end, price), (auction, bidder, date_time)) ──► join ──► consolidate
//!                                         arranged by (window_end, price)                          │
//!                                                                       keep updates at window_end ◄┘
//! ```
//!
//! In: Nexmark events at timestamps at or after their `date_time` (the frontier is the
//! watermark). Only bids are read, by reference, down to four `u64`s.
//!
//! Time: a bid in `[start, end)` enters the collection at time `end` (diff +1) and leaves it at
//! `end + 1` (diff −1), so each window is computed once, when the frontier passes `end`, and its
//! state is freed when the frontier passes `end + 1`: the arrangements hold
//! O(open windows × top bids), not O(bids). A bid whose timestamp is at or past its window's
//! end is late for it (its partition had already passed the end) and is ignored,
//! deterministically: it is decided by the bid's timestamp, never by arrival order.
//!
//! Pre-aggregation: of the bids one activation of `WindowTopBids` reads in one window, only
//! those at their highest price can be at the window's highest price, so only those pass,
//! before any exchange or arrangement. The max and the join then see a few bids per
//! activation and window instead of every bid.
//!
//! Out: [`Q7Row`] updates `(row, window_end, +d)`, each row once, consolidated, emitted once
//! the frontier has passed `window_end`; `d` is the number of identical bids (normally 1).
//! The retractions at `window_end + 1` that free the state are not emitted.

use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Capability, Operator};

use crate::nexmark::model::Event;
use crate::window::tumbling;

/// The tumbling window's length (ms).
pub const WINDOW_MS: u64 = 10_000;

/// One q7 result: a bid at its window's highest price.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q7Row {
    /// Auction id.
    pub auction: u64,
    /// The window's highest price.
    pub price: u64,
    /// The bidder's person id.
    pub bidder: u64,
    /// Bid time (ms).
    pub date_time: u64,
    /// End of the bid's window (ms, exclusive).
    pub window_end: u64,
}

/// A bid projected to what q7 needs: `((window_end, price), (auction, bidder, date_time))`.
type TopBid = ((u64, u64), (u64, u64, u64));

/// Nexmark q7 over `events`: see the module docs for the times and the update semantics.
pub fn q7<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (Q7Row, u64, isize)> {
    let top_bids = window_top_bids(events);

    let window_max = top_bids
        .clone()
        .map(|((end, price), _)| (end, price))
        .reduce_named(
            "Q7WindowMax",
            |_end, prices: &[(&u64, isize)], max: &mut Vec<(u64, isize)>| {
                // Values come sorted: the last is the highest price.
                if let Some(&(price, _)) = prices.last() {
                    max.push((*price, 1));
                }
            },
        )
        .map(|(end, price)| ((end, price), ()))
        .arrange_by_key_named("Q7WindowMaxByWindowPrice");

    top_bids
        .arrange_by_key_named("Q7BidsByWindowPrice")
        .join_core(
            window_max,
            |&(window_end, price), &(auction, bidder, date_time), &()| {
                Some(Q7Row {
                    auction,
                    price,
                    bidder,
                    date_time,
                    window_end,
                })
            },
        )
        .consolidate_named::<_, KeySpine<_, _, _>, _>(
            "Q7Consolidate",
            KeyBatcher::new,
            |row, &()| row.clone(),
        )
        .inner
        .filter(|(row, time, _)| *time == row.window_end)
}

/// The bids that can be at their window's highest price, each at `window_end` (+1) and again
/// at `window_end + 1` (−1): per stamp and window, the bids at the stamp's highest price.
fn window_top_bids<'s>(events: StreamVec<'s, u64, Event>) -> VecCollection<'s, u64, TopBid> {
    events
        .unary(Pipeline, "Q7WindowTopBids", |_, _| {
            // Per activation, reused: the windows' highest prices, and the bids at them.
            let mut tops: Vec<(u64, u64)> = Vec::new();
            let mut candidates: Vec<TopBid> = Vec::new();
            move |input, output| {
                // Every candidate is at a window end after its stamp, so all of them can go
                // out under the activation's least stamp.
                let mut least: Option<Capability<u64>> = None;
                input.for_each_stamp(|cap, containers| {
                    // A message without a stamp makes no claim about its time and cannot be
                    // told late or on time; timely's advice is to drop it.
                    let Some(&time) = cap.least() else { return };
                    if least.as_ref().is_none_or(|c| time < *c.time()) {
                        least = Some(cap.delayed(&time, output.output_index()));
                    }
                    for container in containers {
                        for event in container.iter() {
                            let Event::Bid(bid) = event else { continue };
                            let (_, end) = tumbling::assign(WINDOW_MS, bid.date_time);
                            if time >= end || end == u64::MAX {
                                // Late (its partition had passed the window's end), or so near
                                // the end of time that its retraction has no time to go to.
                                continue;
                            }
                            let candidate =
                                ((end, bid.price), (bid.auction, bid.bidder, bid.date_time));
                            match tops.iter_mut().find(|(window, _)| *window == end) {
                                None => {
                                    tops.push((end, bid.price));
                                    candidates.push(candidate);
                                }
                                Some((_, max)) if bid.price > *max => {
                                    *max = bid.price;
                                    candidates.retain(|((window, _), _)| *window != end);
                                    candidates.push(candidate);
                                }
                                Some((_, max)) if bid.price == *max => candidates.push(candidate),
                                Some(_) => {}
                            }
                        }
                    }
                });
                if let Some(cap) = least {
                    let mut session = output.session(&cap);
                    for (key, value) in candidates.drain(..) {
                        let end = key.0;
                        session.give(((key, value), end, 1));
                        session.give(((key, value), end + 1, -1));
                    }
                    tops.clear();
                }
            }
        })
        .as_collection()
}
