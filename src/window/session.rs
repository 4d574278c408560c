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
//! Updates. With `emit = "updates"`, a record joins its sessions at [`join_time`]
//! (`max(t, wm)`, optionally rounded up to `update_interval`, at most `t + grace`); the
//! records of one join time are merged in together once the frontier passes it, and for
//! every key they touched the changes are written: an upsert for each session that is new
//! or grew (`"final": false`), and a tombstone for each session that merged into one
//! starting earlier (its `[window, key, start]` no longer exists). A session that only grew
//! later keeps its start, and so its key. The final value follows when it closes.
//!
//! Lateness. A session is final when the frontier passes its end + grace. A record is late
//! when `t + grace < watermark` of its partition: a session emitted before it arrived
//! ended before `watermark − grace`, so a record at or after that time cannot touch it,
//! and an open session can always take it. This judges a record by its partition alone, so a replay judges it the same
//! way; Flink and Kafka Streams also keep a record whose own window `[t, t + gap)` is late
//! when it merges into a session still open, which depends on the other partitions' timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use super::Accumulator;
use super::operator::key_hash;
use crate::codec::Event;
use crate::metrics::{GaugeShare, Metrics};
use crate::output::{self, OutRecord, Topics};
use crate::spec::{Emit, PipelineSpec, WindowKind};

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
#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    end: u64,
    acc: Accumulator,
}

/// Per join time, the capability to emit at it and the records (key, t, value,
/// correlation id) that join then.
type Joining = BTreeMap<
    u64,
    (
        Capability<u64>,
        Vec<(String, u64, Decimal, Option<String>, u64)>,
    ),
>;

/// The aggregates of one record at `t`, with its correlation id if it has one and its
/// Kafka timestamp.
fn record_acc(
    value: Decimal,
    t: u64,
    id: Option<&str>,
    id_limit: usize,
    appended_ms: u64,
) -> Accumulator {
    let mut acc = Accumulator::of(value, t);
    acc.note_appended(appended_ms);
    if let Some(id) = id {
        acc.add_id(t, id, id_limit);
    }
    acc
}

/// One key's open sessions, by start.
type Sessions = BTreeMap<u64, Session>;

/// With `emit = "updates"`, the time a record at `t` read at partition watermark `wm`
/// joins its sessions and the change shows: `max(t, wm)` rounded up to a multiple of
/// `interval_ms`, but no later than `t + grace`, so that every session it can join is
/// still open (such a session ends at or after `t`; joins go before closes at the same
/// time). Not late means `t + grace >= wm`, so the result is never below `max(t, wm)`. A
/// pure function of the partition, so a replay writes the same changelog.
pub fn join_time(t: u64, wm: u64, interval_ms: u64, grace_ms: u64) -> u64 {
    let at = t.max(wm);
    let at = match interval_ms {
        0 | 1 => at,
        i => at.div_ceil(i).saturating_mul(i),
    };
    at.min(t.saturating_add(grace_ms))
}

/// Merges the interval `[start, end)` of a record with aggregates `acc` into `sessions`
/// (the sessions of `key`), with every session of the same span of `max_duration_ms` that
/// it overlaps or touches, and schedules the merged session's close, taking a capability
/// for it from `cap_at` when none is held for that time.
#[allow(clippy::too_many_arguments)]
fn merge_into(
    sessions: &mut Sessions,
    closing: &mut Closing,
    key: &str,
    (mut start, mut end): (u64, u64),
    mut acc: Accumulator,
    max_duration_ms: u64,
    grace_ms: u64,
    cap_at: impl FnOnce(u64) -> Capability<u64>,
) {
    let span = start - start % max_duration_ms;
    let last_start = end.min(span.saturating_add(max_duration_ms) - 1);
    let touching: Vec<u64> = sessions
        .range(span..=last_start)
        .filter(|(_, s)| s.end >= start)
        .map(|(s, _)| *s)
        .collect();
    for s in touching {
        let old = sessions.remove(&s).expect("listed above");
        let close = old.end.saturating_add(grace_ms);
        if let Some((_, keys)) = closing.get_mut(&close) {
            keys.remove(&(key.to_string(), s));
        }
        start = start.min(s);
        end = end.max(old.end);
        acc.merge(&old.acc);
    }
    sessions.insert(start, Session { end, acc });
    let close = end.saturating_add(grace_ms);
    closing
        .entry(close)
        .or_insert_with(|| (cap_at(close), BTreeSet::new()))
        .1
        .insert((key.to_string(), start));
}

/// Aggregates `events` into session results of window `index` of `spec`: final results,
/// or with `emit = "updates"` also a changelog of upserts and, for a session merged into
/// one that starts earlier, a tombstone.
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
            key_hash(e.window(index).map_or(e.key.as_str(), |g| g.key))
        }),
        &name,
        move |_cap, _info| {
            // key → start → session; and, to emit them, close time → (key, start).
            let mut open: HashMap<String, Sessions> = HashMap::new();
            let mut closing: Closing = BTreeMap::new();
            // Updates mode: join time → the records (key, t, value, id) that join then.
            // Records join in time order, so each changelog step holds exactly the
            // records whose join time has passed.
            let mut joining: Joining = BTreeMap::new();
            let handles = metrics.window(&spec.windows[index].name);
            let mut share = GaugeShare::default();
            move |(input, frontier), output| {
                let w = &spec.windows[index];
                let WindowKind::Session {
                    gap_ms,
                    max_duration_ms,
                } = w.kind
                else {
                    unreachable!("the session operator runs session windows only")
                };
                let id_limit = super::ids_per_result(&spec);
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
                            let (key, value) = (grouped.key, grouped.value);
                            match w.emit {
                                Emit::Final => {
                                    let own = interval(gap_ms, max_duration_ms, event.time);
                                    let sessions = open.entry(key.to_string()).or_default();
                                    merge_into(
                                        sessions,
                                        &mut closing,
                                        key,
                                        own,
                                        record_acc(
                                            value,
                                            event.time,
                                            event.correlation_id.as_deref(),
                                            id_limit,
                                            event.appended_ms,
                                        ),
                                        max_duration_ms,
                                        w.grace_ms,
                                        |close| cap.delayed(&close, out_port),
                                    );
                                }
                                Emit::Updates { interval_ms } => {
                                    let at = join_time(event.time, wm, interval_ms, w.grace_ms);
                                    joining
                                        .entry(at)
                                        .or_insert_with(|| (cap.delayed(&at, out_port), Vec::new()))
                                        .1
                                        .push((
                                            key.to_string(),
                                            event.time,
                                            value,
                                            event.correlation_id.clone(),
                                            event.appended_ms,
                                        ));
                                }
                            }
                        }
                    }
                });
                loop {
                    let next_join = joining.keys().next().copied();
                    let next_close = closing.keys().next().copied();
                    let (at, is_join) = match (next_join, next_close) {
                        (Some(j), Some(c)) if j <= c => (j, true),
                        (_, Some(c)) => (c, false),
                        (Some(j), None) => (j, true),
                        (None, None) => break,
                    };
                    if frontier.less_equal(&at) {
                        break;
                    }
                    if is_join {
                        let (cap, records) = joining.remove(&at).expect("the first join time");
                        // Each touched key's sessions before this step, to tell what changed.
                        let mut before: BTreeMap<String, Sessions> = BTreeMap::new();
                        for (key, t, value, id, appended_ms) in records {
                            let sessions = open.entry(key.clone()).or_default();
                            before
                                .entry(key.clone())
                                .or_insert_with(|| sessions.clone());
                            merge_into(
                                sessions,
                                &mut closing,
                                &key,
                                interval(gap_ms, max_duration_ms, t),
                                record_acc(value, t, id.as_deref(), id_limit, appended_ms),
                                max_duration_ms,
                                w.grace_ms,
                                |close| cap.delayed(&close),
                            );
                        }
                        let mut session = output.session(&cap);
                        for (key, old) in before {
                            let new = open.get(&key).expect("a touched key has sessions");
                            for start in old.keys().filter(|s| !new.contains_key(s)) {
                                handles.tombstones.inc();
                                session.give(output::window_tombstone(
                                    &topics, index, w, &key, *start,
                                ));
                            }
                            for (start, s) in new.iter().filter(|(s, n)| old.get(s) != Some(n)) {
                                handles.updates.inc();
                                session.give(output::window_update(
                                    &topics, index, w, &key, *start, s.end, &s.acc, false,
                                ));
                            }
                        }
                        continue;
                    }
                    let (cap, keys) = closing.remove(&at).expect("the first close time");
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
                        handles.finals.inc();
                        session.give(match w.emit {
                            Emit::Final => {
                                output::window_result(&topics, index, w, &key, start, s.end, &s.acc)
                            }
                            Emit::Updates { .. } => output::window_update(
                                &topics, index, w, &key, start, s.end, &s.acc, true,
                            ),
                        });
                    }
                }
                if frontier.is_empty() {
                    handles.withdraw(&mut share);
                } else {
                    handles.report(&mut share, || {
                        let sessions: usize = open.values().map(|s| s.len()).sum();
                        let index: usize = closing.values().map(|(_, keys)| keys.len()).sum();
                        let joins: usize = joining.values().map(|(_, r)| r.len()).sum();
                        (sessions as i64, (sessions + index + joins) as i64)
                    });
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
