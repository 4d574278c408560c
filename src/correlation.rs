//! Correlation ids: tracing one event from its input record to every output it shaped.
//!
//! With `[input] correlation_id` ([`crate::spec::CorrelationSpec`]) each event carries an
//! id, read from a member of its JSON or from a Kafka header of its record. Outputs carry
//! ids as Kafka headers, never in their payloads (so results stay byte-identical with and
//! without tracing):
//!
//! - a dead letter or late record: one [`ID_HEADER`] with its record's id. A record
//!   rejected before its payload was read as a JSON object (empty, not UTF-8, malformed)
//!   has an id only when it came from a header;
//! - a window result (final, or an upsert in updates mode): one [`ID_HEADER`] per id of
//!   the smallest `(event time, id)` pairs among its events, at most
//!   `correlation_ids_per_result`, in that order, then [`COUNT_HEADER`] with how many of
//!   its events had an id (decimal text). Nothing when none had one. A tombstone carries
//!   none.
//!
//! The choice is a function of the window's events alone: [`CorrelationIds::merge`] is a
//! bounded union, associative and commutative, so arrival order, worker count, session
//! merges and replays cannot change which ids a result carries. It lives in the window's
//! [`crate::window::Accumulator`], boxed and absent until an event with an id arrives, so a
//! dataflow without correlation ids keeps one null pointer per open window.

use serde::{Deserialize, Serialize};

/// The header holding a correlation id.
pub const ID_HEADER: &str = "waterline-correlation-id";
/// The header of a window result holding how many of its events had a correlation id.
pub const COUNT_HEADER: &str = "waterline-correlation-count";

/// A header waterline writes: its name is one of a few known ones, so records stay small
/// and ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HeaderName {
    /// [`ID_HEADER`].
    CorrelationId,
    /// [`COUNT_HEADER`].
    CorrelationCount,
}

impl HeaderName {
    /// The header's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderName::CorrelationId => ID_HEADER,
            HeaderName::CorrelationCount => COUNT_HEADER,
        }
    }
}

/// The headers of an output record, in the order they are written.
pub type Headers = Vec<(HeaderName, Vec<u8>)>;

/// The headers of a dead letter or late record whose record had `id`: one
/// [`ID_HEADER`], or none.
pub fn record_headers(id: Option<&str>) -> Headers {
    id.map(|id| vec![(HeaderName::CorrelationId, id.as_bytes().to_vec())])
        .unwrap_or_default()
}

/// The correlation ids of one window's events: how many had one, and the `limit`
/// smallest `(event time, id)` pairs, ascending (a multiset: an id seen twice at the same
/// time is kept twice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationIds {
    count: u64,
    limit: u32,
    smallest: Vec<(u64, String)>,
}

impl CorrelationIds {
    /// No ids yet, keeping at most `limit`.
    pub fn new(limit: usize) -> Self {
        CorrelationIds {
            count: 0,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            smallest: Vec::new(),
        }
    }

    /// Counts the id of an event at time `t`, keeping it if it is among the smallest.
    pub fn insert(&mut self, t: u64, id: &str) {
        self.count += 1;
        let limit = self.limit as usize;
        let full = self.smallest.len() >= limit;
        if full
            && self
                .smallest
                .last()
                .is_none_or(|(lt, lid)| (t, id) >= (*lt, lid.as_str()))
        {
            return;
        }
        let at = self
            .smallest
            .partition_point(|(st, sid)| (*st, sid.as_str()) <= (t, id));
        self.smallest.insert(at, (t, id.to_string()));
        self.smallest.truncate(limit);
    }

    /// Adds `other`'s ids: the counts add up, and the smallest of both are kept.
    pub fn merge(&mut self, other: &CorrelationIds) {
        self.count += other.count;
        self.limit = self.limit.min(other.limit);
        let mut merged = Vec::with_capacity(
            (self.smallest.len() + other.smallest.len()).min(self.limit as usize),
        );
        let (mut a, mut b) = (
            std::mem::take(&mut self.smallest).into_iter().peekable(),
            other.smallest.iter().peekable(),
        );
        while merged.len() < self.limit as usize {
            let take_a = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => (x.0, x.1.as_str()) <= (y.0, y.1.as_str()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_a { a.next() } else { b.next().cloned() };
            merged.extend(next);
        }
        self.smallest = merged;
    }

    /// How many events had an id.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The kept `(event time, id)` pairs, ascending.
    pub fn smallest(&self) -> &[(u64, String)] {
        &self.smallest
    }

    /// The headers of a window result with these ids: one [`ID_HEADER`] per kept id, in
    /// order, then [`COUNT_HEADER`].
    pub fn headers(&self) -> Headers {
        let mut headers: Headers = self
            .smallest
            .iter()
            .map(|(_, id)| (HeaderName::CorrelationId, id.as_bytes().to_vec()))
            .collect();
        headers.push((
            HeaderName::CorrelationCount,
            self.count.to_string().into_bytes(),
        ));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(limit: usize, items: &[(u64, &str)]) -> CorrelationIds {
        let mut c = CorrelationIds::new(limit);
        for (t, id) in items {
            c.insert(*t, id);
        }
        c
    }

    #[test]
    fn keeps_the_smallest_pairs_in_any_order_and_grouping() {
        let items = [
            (5, "e"),
            (1, "z"),
            (3, "c"),
            (1, "a"),
            (9, "x"),
            (3, "c"),
            (2, "q"),
        ];
        let expected: Vec<(u64, String)> = [(1, "a"), (1, "z"), (2, "q")]
            .iter()
            .map(|(t, s)| (*t, s.to_string()))
            .collect();
        let forward = ids(3, &items);
        assert_eq!(forward.smallest(), expected.as_slice());
        assert_eq!(forward.count(), 7);
        let mut backward: Vec<_> = items.to_vec();
        backward.reverse();
        assert_eq!(ids(3, &backward), forward);
        // Split anywhere and merged either way round: the same.
        for cut in 0..=items.len() {
            let (l, r) = items.split_at(cut);
            let mut a = ids(3, l);
            a.merge(&ids(3, r));
            assert_eq!(a, forward, "cut at {cut}");
            let mut b = ids(3, r);
            b.merge(&ids(3, l));
            assert_eq!(b, forward, "cut at {cut}, reversed");
        }
        // A repeated pair is kept twice when it is among the smallest.
        let twice = ids(4, &[(3, "c"), (3, "c"), (7, "d")]);
        assert_eq!(
            twice
                .smallest()
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>(),
            ["c", "c", "d"]
        );
    }

    #[test]
    fn headers_list_the_ids_then_the_count() {
        let c = ids(2, &[(2, "b"), (1, "a"), (3, "c")]);
        let h: Vec<(&str, String)> = c
            .headers()
            .into_iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8(v).expect("UTF-8")))
            .collect();
        assert_eq!(
            h,
            [
                (ID_HEADER, "a".to_string()),
                (ID_HEADER, "b".to_string()),
                (COUNT_HEADER, "3".to_string())
            ]
        );
        let none = ids(0, &[(1, "a")]);
        assert_eq!(none.headers().len(), 1, "a limit of 0 keeps the count only");
        assert!(record_headers(None).is_empty());
    }
}
