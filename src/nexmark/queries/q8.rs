//! Nexmark q8, monitor new users: the people who opened an auction in the same tumbling 10 s
//! window in which they registered, as a differential join of persons keyed by
//! `(id, window)` with auctions keyed by `(seller, window)`, made distinct.
//!
//! ```text
//!  events ──► Q8Split ─┬─► ((id, window_start), name) ───── arranged ──┐
//!  (Pipeline)          │                                               join ──► distinct ──► keep updates at window end
//!                      └─► (seller, window_start), distinct per batch ─ arranged ──┘
//! ```
//!
//! In: Nexmark events at timestamps at or after their `date_time` (the frontier is the
//! watermark). Persons are read down to id, window and name; auctions down to seller and
//! window, with the repeats of one seller in one window dropped within each activation
//! before the exchange. Bids are skipped.
//!
//! Time: a person or auction in `[start, end)` enters its collection at time `end` (+1) and
//! leaves it at `end + 1` (−1), so each window is joined once, when the frontier passes `end`,
//! and its state is freed when the frontier passes `end + 1`: O(people and sellers × open
//! windows). A person or auction whose timestamp is at or past its window's end is late for it
//! (its partition had already passed the end) and is ignored, decided by its timestamp.
//!
//! Out: [`Q8Row`] updates `(row, window_start + 10 s, +1)`: each `(id, name, window_start)`
//! once, emitted once the frontier has passed the window's end. The retractions at
//! `end + 1` that free the state are not emitted.

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Filter;
use timely::progress::operate::FrontierInterest;

use crate::nexmark::model::Event;
use crate::window::tumbling;

/// The tumbling window's length (ms).
pub const WINDOW_MS: u64 = 10_000;

/// One q8 result: a person who opened an auction in the window in which they registered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q8Row {
    /// Person id.
    pub id: u64,
    /// The person's name.
    pub name: String,
    /// Start of the window (ms).
    pub window_start: u64,
}

/// A person projected to `((id, window_start), name)`.
type NewPerson = ((u64, u64), String);
/// An auction projected to `((seller, window_start), ())`.
type NewSeller = ((u64, u64), ());

/// `Q8Split`'s output port of sellers (its first, 0, is persons').
const SELLERS: usize = 1;

/// Nexmark q8 over `events`: see the module docs for the times and the update semantics.
pub fn q8<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (Q8Row, u64, isize)> {
    let (persons, sellers) = split(events);
    let persons = persons.arrange_by_key_named("Q8PersonsByIdWindow");
    let sellers = sellers.arrange_by_key_named("Q8SellersByIdWindow");
    persons
        .join_core(sellers, |&(id, window_start), name, &()| {
            Some(Q8Row {
                id,
                name: name.clone(),
                window_start,
            })
        })
        .distinct()
        .inner
        .filter(|(row, time, _)| *time == row.window_start + WINDOW_MS)
}

/// Persons and auctions, projected, each at its window's end (+1) and at `end + 1` (−1).
fn split<'s>(
    events: StreamVec<'s, u64, Event>,
) -> (
    VecCollection<'s, u64, NewPerson>,
    VecCollection<'s, u64, NewSeller>,
) {
    let mut builder = OperatorBuilder::new("Q8Split".to_owned(), events.scope());
    let mut input = builder.new_input(events, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (persons_out, persons) = builder.new_output();
    let (sellers_out, sellers) = builder.new_output();
    let mut persons_out = OutputBuilder::from(persons_out);
    let mut sellers_out = OutputBuilder::from(sellers_out);

    builder.build(move |_| {
        // Per activation, reused: the (seller, window_start) pairs seen.
        let mut batch_sellers: Vec<(u64, u64)> = Vec::new();
        move |_frontiers| {
            let mut persons_out = persons_out.activate();
            let mut sellers_out = sellers_out.activate();
            // Every seller is at a window end after its stamp, so all of them can go out
            // under the activation's least stamp.
            let mut least: Option<Capability<u64>> = None;
            input.for_each_stamp(|cap, containers| {
                // A message without a stamp makes no claim about its time and cannot be told
                // late or on time; timely's advice is to drop it.
                let Some(&time) = cap.least() else { return };
                if least.as_ref().is_none_or(|c| time < *c.time()) {
                    least = Some(cap.delayed(&time, SELLERS));
                }
                let mut persons = persons_out.session(&cap);
                for container in containers {
                    // Drained: a person's name moves into its update instead of being copied.
                    for event in container.drain(..) {
                        match event {
                            Event::Person(person) => {
                                let (start, end) = tumbling::assign(WINDOW_MS, person.date_time);
                                if time >= end || end == u64::MAX {
                                    continue;
                                }
                                let key = (person.id, start);
                                persons.give(((key, person.name.clone()), end + 1, -1));
                                persons.give(((key, person.name), end, 1));
                            }
                            Event::Auction(auction) => {
                                let (start, end) = tumbling::assign(WINDOW_MS, auction.date_time);
                                if time >= end || end == u64::MAX {
                                    continue;
                                }
                                batch_sellers.push((auction.seller, start));
                            }
                            Event::Bid(_) => {}
                        }
                    }
                }
            });
            if let Some(cap) = least {
                batch_sellers.sort_unstable();
                batch_sellers.dedup();
                let mut sellers = sellers_out.session(&cap);
                for key in batch_sellers.drain(..) {
                    let end = key.1 + WINDOW_MS;
                    sellers.give(((key, ()), end, 1));
                    sellers.give(((key, ()), end + 1, -1));
                }
            }
        }
    });

    (persons.as_collection(), sellers.as_collection())
}
