//! Pre-aggregation before the exchange, for tumbling and hopping windows.
//!
//! Their aggregates merge ([`Accumulator::merge`] is associative and commutative), so the
//! worker that reads a batch of events sums them per (window, key, window start) first and
//! sends those [`Partial`]s on instead of the events: one record per key and window per
//! batch crosses the exchange, and the window operator merges partials instead of adding
//! events. A partial holds only events that were not late for its window at their
//! partition's watermark, the same rule the window operator applied to events, so every
//! result is the one the events would give. In `emit = "updates"` mode a partial also holds
//! only events whose changes show at one update time ([`update_time`]).
//!
//! Sessions are not combined here: whether two events share a session depends on the
//! events between them, which the session operator sees only after the exchange.

use std::hash::BuildHasher;
use std::rc::Rc;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use super::operator::update_time;
use super::{Accumulator, close_time, ids_per_result, windows_of};
use crate::codec::Event;
use crate::spec::{Emit, PipelineSpec, WindowKind};

/// The totals of the events of one (window, key, window start) that one worker read
/// together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The window's index in `PipelineSpec::windows`.
    pub window: usize,
    /// The group key.
    pub key: String,
    /// The window's start.
    pub start: u64,
    /// The window's close time (end + grace).
    pub close: u64,
    /// When the events' changes show in an `emit = "updates"` changelog; the close time
    /// for `emit = "final"`.
    pub at: u64,
    /// The events' totals.
    pub acc: Accumulator,
}

/// Sums events into [`Partial`]s until drained.
pub struct Combiner {
    spec: Rc<PipelineSpec>,
    /// The windows combined here: every tumbling and hopping window of the spec.
    windows: Vec<usize>,
    id_limit: usize,
    table: HashTable<Partial>,
    hasher: foldhash::fast::RandomState,
}

impl Combiner {
    /// A combiner for the tumbling and hopping windows of `spec`.
    pub fn new(spec: Rc<PipelineSpec>) -> Combiner {
        let windows = spec
            .windows
            .iter()
            .enumerate()
            .filter(|(_, w)| !matches!(w.kind, WindowKind::Session { .. }))
            .map(|(i, _)| i)
            .collect();
        Combiner {
            id_limit: ids_per_result(&spec),
            spec,
            windows,
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether the spec has windows this combiner serves.
    pub fn serves_any(&self) -> bool {
        !self.windows.is_empty()
    }

    /// Adds `event`, read from a partition at watermark `wm`, to each window it belongs
    /// to that has not closed at `wm`.
    pub fn add(&mut self, event: &Event, wm: u64) {
        for &index in &self.windows {
            let Some(grouped) = event.window(index) else {
                continue; // filtered out of this window
            };
            let w = &self.spec.windows[index];
            // Latest window first: once one has closed, every earlier one has too.
            for (start, end) in windows_of(w.kind, event.time) {
                let close = close_time(w, end);
                if close <= wm {
                    break;
                }
                let at = match w.emit {
                    Emit::Final => close,
                    Emit::Updates { interval_ms } => {
                        update_time(event.time, wm, interval_ms, close)
                    }
                };
                let hash = self.hasher.hash_one((index, grouped.key, start, at));
                let found = self.table.find_mut(hash, |p| {
                    p.start == start && p.at == at && p.window == index && p.key == grouped.key
                });
                let acc = match found {
                    Some(p) => &mut p.acc,
                    None => {
                        let partial = Partial {
                            window: index,
                            key: grouped.key.to_string(),
                            start,
                            close,
                            at,
                            acc: Accumulator::empty(),
                        };
                        let hasher = &self.hasher;
                        let entry = self.table.insert_unique(hash, partial, |p| {
                            hasher.hash_one((p.window, p.key.as_str(), p.start, p.at))
                        });
                        &mut entry.into_mut().acc
                    }
                };
                acc.add(grouped.value, event.time);
                acc.note_appended(event.appended_ms);
                if let Some(id) = &event.correlation_id {
                    acc.add_id(event.time, id, self.id_limit);
                }
            }
        }
    }

    /// Whether nothing was added since the last drain.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Hands over every partial, leaving the combiner empty (its table keeps its size).
    pub fn drain(&mut self, mut f: impl FnMut(Partial)) {
        for p in self.table.drain() {
            f(p);
        }
    }
}

/// Combines `events` (each with its partition's watermark) into partials per timestamp:
/// for a dataflow whose events reach the windows through an operator after the source
/// (the temporal join).
pub fn combine<'s>(
    events: StreamVec<'s, u64, (Event, u64)>,
    spec: Rc<PipelineSpec>,
) -> StreamVec<'s, u64, Partial> {
    events.unary(Pipeline, "Combine", move |_cap, _info| {
        let mut combiner = Combiner::new(spec);
        move |input, output| {
            input.for_each_stamp(|cap, batches| {
                for batch in batches {
                    for (event, wm) in batch.drain(..) {
                        combiner.add(&event, wm);
                    }
                }
                let mut session = output.session(&cap);
                combiner.drain(|p| session.give(p));
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Grouped;
    use rust_decimal::Decimal;

    fn spec(windows: &str) -> Rc<PipelineSpec> {
        let text = format!(
            r#"
name = "t"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "1s"
idle_timeout = "10s"
[validation.fields]
id = "string"
ts = "timestamp"
k = "string"
v = "decimal"
{windows}
[output]
topic = "out"
dead_letter_topic = "dl"
late_topic = "late"
"#
        );
        Rc::new(PipelineSpec::from_toml("t", &text).expect("the test spec parses"))
    }

    fn event(key: &str, t: u64, v: i64) -> Event {
        Event {
            time: t,
            key: key.to_string(),
            id: String::new(),
            values: Vec::new(),
            windows: [Some(Grouped {
                key: None,
                value: Decimal::from(v),
            })]
            .into_iter()
            .collect(),
            correlation_id: None,
            appended_ms: t,
        }
    }

    fn drained(c: &mut Combiner) -> Vec<Partial> {
        let mut out = Vec::new();
        c.drain(|p| out.push(p));
        out.sort_by(|a, b| (&a.key, a.start, a.at).cmp(&(&b.key, b.start, b.at)));
        out
    }

    #[test]
    fn sums_per_key_and_window_and_skips_closed_ones() {
        let spec = spec(
            r#"
[[windows]]
name = "h"
kind = "hopping"
size = "10s"
slide = "5s"
field = "v"
aggregates = ["count", "sum", "min", "max"]
"#,
        );
        let mut c = Combiner::new(Rc::clone(&spec));
        c.add(&event("a", 12_000, 3), 0);
        c.add(&event("a", 13_000, 5), 0);
        c.add(&event("b", 12_500, 7), 0);
        // At watermark 15,000 the window [5 s, 15 s) has closed: only [10 s, 20 s) takes it.
        c.add(&event("a", 14_000, 11), 15_000);
        let out = drained(&mut c);
        let got: Vec<_> = out
            .iter()
            .map(|p| (p.key.as_str(), p.start, p.close, p.acc.count, p.acc.sum))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 5_000, 15_000, 2, Decimal::from(8)),
                ("a", 10_000, 20_000, 3, Decimal::from(19)),
                ("b", 5_000, 15_000, 1, Decimal::from(7)),
                ("b", 10_000, 20_000, 1, Decimal::from(7)),
            ]
        );
        assert!(c.is_empty(), "a drain empties the combiner");
        let a = &out[1].acc;
        assert_eq!(
            (a.min, a.max, a.first, a.last),
            (3.into(), 11.into(), 12_000, 14_000)
        );
        assert_eq!(a.appended_ms, 14_000);
    }

    /// Partials cross processes in timely's own encoding (bincode, not self-describing):
    /// every field, ids and Kafka timestamps included, must come back as it went.
    #[test]
    fn partials_survive_the_encoding_between_processes() {
        use timely::bytes::arc::BytesMut;
        use timely::dataflow::channels::ContainerBytes;

        let mut with_ids = Accumulator::of(Decimal::new(-1505, 2), 9_000);
        let mut ids = crate::correlation::CorrelationIds::new(2);
        ids.insert(9_000, "e-1");
        with_ids.ids = Some(Box::new(ids));
        with_ids.note_appended(9_250);
        let mut without_ids = Accumulator::of(Decimal::from(7), 1);
        without_ids.note_appended(3);
        // The partial without ids first: a skipped field would shift every later byte.
        let partials = vec![
            Partial {
                window: 0,
                key: String::new(),
                start: 0,
                close: 10_000,
                at: 0,
                acc: without_ids,
            },
            Partial {
                window: 1,
                key: "BTC-EUR".to_string(),
                start: 5_000,
                close: 15_000,
                at: 10_000,
                acc: with_ids,
            },
        ];
        let mut bytes = Vec::new();
        partials.into_bytes(&mut bytes);
        assert_eq!(bytes.len(), partials.length_in_bytes());
        let back = Vec::<Partial>::from_bytes(BytesMut::from(bytes).freeze());
        assert_eq!(back, partials);
    }

    #[test]
    fn updates_split_by_the_time_their_changes_show() {
        let spec = spec(
            r#"
[[windows]]
name = "u"
kind = "tumbling"
size = "1m"
field = "v"
aggregates = ["count"]
emit = "updates"
update_interval = "10s"
"#,
        );
        let mut c = Combiner::new(Rc::clone(&spec));
        c.add(&event("a", 1_000, 1), 0);
        c.add(&event("a", 2_000, 1), 0);
        c.add(&event("a", 11_000, 1), 0);
        let out = drained(&mut c);
        let got: Vec<_> = out.iter().map(|p| (p.at, p.close, p.acc.count)).collect();
        assert_eq!(got, vec![(10_000, 60_000, 2), (20_000, 60_000, 1)]);
    }
}
