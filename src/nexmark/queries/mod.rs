//! The Nexmark queries, each a dataflow from events to result updates.
//!
//! Every query takes `StreamVec<u64, Event>` (timestamps: event time in ms, each event
//! at its `date_time` or later; the frontier is the watermark) and returns
//! `StreamVec<u64, (Row, u64, isize)>`: final result rows with diff +1, each at a
//! timestamp at or after its window's end, once the frontier has passed that end. See
//! each module for its windows and what it exchanges.
//!
//! The timely queries here pre-aggregate each activation's input on the worker that read
//! it, and exchange only the partial aggregates, projected to a few `u64`s.

use std::collections::HashMap;

use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use super::model::Event;

pub mod q0;
pub mod q11;
pub mod q5;
pub mod q7;
pub mod q8;

/// A hash map with a fast, deterministic hasher for the queries' small integer keys.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Exchange routing of an integer key: the same in every process.
pub fn route(key: u64) -> u64 {
    key.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// One of the queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Query {
    /// Pass-through of bids.
    Q0,
    /// Hot items: most-bid auctions per hopping window.
    Q5,
    /// Highest bid per tumbling window.
    Q7,
    /// New users who opened an auction in the window they registered.
    Q8,
    /// Bid counts per user session.
    Q11,
}

impl Query {
    /// All queries, in order.
    pub const ALL: [Query; 5] = [Query::Q0, Query::Q5, Query::Q7, Query::Q8, Query::Q11];

    /// The query's name: `q0`, `q5`, …
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
            Query::Q11 => "q11",
        }
    }

    /// The query named `name` (`q5` or `Q5`), or `None`.
    pub fn parse(name: &str) -> Option<Query> {
        Query::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A query this build does not contain.
#[derive(Debug, thiserror::Error)]
#[error("query {0} is not part of this build")]
pub struct NotBuilt(pub Query);

/// Builds `query` over `events` and returns only its result diffs (for counting results
/// in the CLI and benches), at the results' timestamps.
pub fn diffs<'s>(
    query: Query,
    events: StreamVec<'s, u64, Event>,
) -> Result<StreamVec<'s, u64, isize>, NotBuilt> {
    Ok(match query {
        Query::Q0 => q0::q0(events).map(|(_, _, d)| d),
        Query::Q5 => q5::q5(events).map(|(_, _, d)| d),
        Query::Q7 => q7::q7(events).map(|(_, _, d)| d),
        Query::Q8 => q8::q8(events).map(|(_, _, d)| d),
        Query::Q11 => q11::q11(events).map(|(_, _, d)| d),
    })
}
