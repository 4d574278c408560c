//! q0, pass-through: every bid as `(auction, bidder, price, date_time)`.
//!
//! In: events. Out: one [`Q0Row`] per bid, diff +1, at the bid's own timestamp. No
//! exchange, no state: the floor every other query is measured against.

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use crate::nexmark::model::Event;

/// A bid, projected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q0Row {
    /// Auction id.
    pub auction: u64,
    /// Bidder id.
    pub bidder: u64,
    /// Price (cents).
    pub price: u64,
    /// Bid time (ms).
    pub date_time: u64,
}

/// Every bid of `events`, projected to a [`Q0Row`].
pub fn q0<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (Q0Row, u64, isize)> {
    events.unary(Pipeline, "Q0", |_cap, _info| {
        move |input, output| {
            input.for_each_stamp(|cap, batches| {
                let Some(&t) = cap.least() else { return };
                let mut session = output.session(&cap);
                for batch in batches {
                    session.give_iterator(batch.drain(..).filter_map(|e| match e {
                        Event::Bid(b) => Some((
                            Q0Row {
                                auction: b.auction,
                                bidder: b.bidder,
                                price: b.price,
                                date_time: b.date_time,
                            },
                            t,
                            1,
                        )),
                        _ => None,
                    }));
                }
            });
        }
    })
}
