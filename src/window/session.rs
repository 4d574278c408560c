//! Session windows: per key, a record at `t` opens `[t, t + gap)`; sessions that overlap
//! or touch merge, so a session is a run of records each at most `gap` after the previous
//! one, from its first record's time to its last one's plus `gap` (Flink's and Kafka
//! Streams' sessions: records at 10, 12 and 20 with gap 5 make [10, 17) and [20, 25); a
//! record at 16 then merges them into [10, 25)).
//!
//! `max_duration` bounds a session, so that state, the dataflow's reach and a replay stay
//! bounded: sessions live within epoch-aligned spans of `max_duration` and are cut at
//! their edges. The cut is a function of event times alone, so it does not depend on the
//! order records arrive in.
//!
//! Lateness. A session is final when the frontier passes its end + grace. A record is late
//! when `t + grace < watermark` of its partition: a session emitted before it arrived
//! ended before `watermark − grace`, so a record at or after that time cannot touch it,
//! and an open session can always take it. This judges a record by its partition alone, so a replay judges it the same
//! way; Flink and Kafka Streams also keep a record whose own window `[t, t + gap)` is late
//! when it merges into a session still open, which depends on the other partitions' timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use super::Accumulator;
use super::operator::key_hash;
use crate::codec::Event;
use crate::metrics::Metrics;
use crate::output::{self, OutRecord, Topics};
use crate::spec::{PipelineSpec, WindowKind};

/// The interval a record at `t` opens: `[t, t + gap)`, cut at the end of its span of
/// `max_duration`.
pub fn interval(gap_ms: u64, max_duration_ms: u64, t: u64) -> (u64, u64) {
    let span_end = (t - t % max_duration_ms).saturating_add(max_duration_ms);
    (t, t.saturating_add(gap_ms).min(span_end))
}

/// Per close time, the capability to emit at it and the (key, start) of the sessions
/// that close then.
type Closing = BTreeMap<u64, (Capability<u64>, BTreeSet<(String, u64)>)>;

/// An open session of one key.
#[derive(Clone, Debug)]
struct Session {
    end: u64,
    acc: Accumulator,
}

/// Aggregates `events` into final session results of window `index` of `spec`.
pub fn sessions<'s>(
    events: StreamVec<'s, u64, (Event, u64)>,
    spec: Rc<PipelineSpec>,
    index: usize,
    topics: Rc<Topics>,
    metrics: Metrics,
) -> StreamVec<'s, u64, OutRecord> {
    let name = format!("Session[{}]", spec.windows[index].name);
    events.unary_frontier(
        Exchange::new(move |(e, _): &(Event, u64)| {
            // Events filtered out are skipped; spread them by their input key.
            key_hash(e.window(index).map_or(e.key.as_str(), |g| g.key.as_str()))
        }),
        &name,
        move |_cap, _info| {
            // key → start → session; and, to emit them, close time → (key, start).
            let mut open: HashMap<String, BTreeMap<u64, Session>> = HashMap::new();
            let mut closing: Closing = BTreeMap::new();
            move |(input, frontier), output| {
                let w = &spec.windows[index];
                let WindowKind::Session {
                    gap_ms,
                    max_duration_ms,
                } = w.kind
                else {
                    unreachable!("the session operator runs session windows only")
                };
                let out_port = output.output_index();
                input.for_each_stamp(|cap, batches| {
                    for batch in batches {
                        for (event, wm) in batch.drain(..) {
                            if event.time.saturating_add(w.grace_ms) < wm {
                                continue; // late: the source routed it to the late topic
                            }
                            let Some(grouped) = event.window(index) else {
                                continue; // filtered out of this window
                            };
                            let (group, value) = (grouped.key.clone(), grouped.value);
                            let (mut start, mut end) =
                                interval(gap_ms, max_duration_ms, event.time);
                            let span = start - start % max_duration_ms;
                            let last_start = end.min(span.saturating_add(max_duration_ms) - 1);
                            let mut acc = Accumulator::of(value, event.time);
                            let sessions = open.entry(group.clone()).or_default();
                            // Sessions of the same span that overlap or touch [start, end).
                            let touching: Vec<u64> = sessions
                                .range(span..=last_start)
                                .filter(|(_, s)| s.end >= start)
                                .map(|(s, _)| *s)
                                .collect();
                            for s in touching {
                                let old = sessions.remove(&s).expect("listed above");
                                let close = old.end.saturating_add(w.grace_ms);
                                if let Some((_, keys)) = closing.get_mut(&close) {
                                    keys.remove(&(group.clone(), s));
                                }
                                start = start.min(s);
                                end = end.max(old.end);
                                acc.merge(&old.acc);
                            }
                            sessions.insert(start, Session { end, acc });
                            let close = end.saturating_add(w.grace_ms);
                            closing
                                .entry(close)
                                .or_insert_with(|| (cap.delayed(&close, out_port), BTreeSet::new()))
                                .1
                                .insert((group, start));
                        }
                    }
                });
                while let Some(entry) = closing.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, keys) = entry.remove();
                    let mut session = output.session(&cap);
                    for (key, start) in keys {
                        let Some(sessions) = open.get_mut(&key) else {
                            continue;
                        };
                        let Some(s) = sessions.remove(&start) else {
                            continue;
                        };
                        if sessions.is_empty() {
                            open.remove(&key);
                        }
                        metrics.windows_emitted.inc();
                        session.give(output::window_result(
                            &topics, index, w, &key, start, s.end, &s.acc,
                        ));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::interval;

    #[test]
    fn a_record_opens_gap_long_interval_cut_at_its_span() {
        assert_eq!(interval(5, 100, 10), (10, 15));
        assert_eq!(interval(5, 100, 97), (97, 100), "cut at the span's end");
        assert_eq!(interval(5, 100, 100), (100, 105), "the next span");
    }
}
