//! The join operator: events and reference versions in, enriched events (or dead letters)
//! out.
//!
//! Inputs, both exchanged by key: `(event, wm)` at its timestamp `T` (the source's held
//! time, which may be below the event's time `t` and its partition's watermark `wm`), and
//! [`Version`]s at their `τ`. An event is held until the reference frontier has passed
//! `T' = max(t, wm)` — every version with `τ <= t` has arrived — and then leaves at `T'`, a
//! function of its partition alone, joined as of `t`
//! ([`VersionedTable::lookup`]). `T'` is below the close time of every window the event
//! can still reach (`t < end + grace`), so nothing downstream changes. Without a version it
//! becomes a `missing_reference` dead letter at `T'`, or passes on unenriched
//! (`on_missing = "null"`).
//!
//! State: the versions per key that an event still to come can select. Events still to
//! come are at or after the least of the events' frontier and the held events' times, and
//! no event more than the reach before its timestamp reaches a window (it was late), so
//! versions below that minus the reach are pruned but for the latest.

use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};

use super::{OnMissing, Version, VersionedTable, enrich};
use crate::codec::Event;
use crate::metrics::Metrics;
use crate::output::{OutRecord, SourceRef, Topics};
use crate::source::now_ms;
use crate::spec::PipelineSpec;
use crate::time::rfc3339_ms;
use crate::window::operator::key_hash;

/// Events waiting at one time for the reference frontier, with the capability to send them.
type Held = (Capability<u64>, Vec<(Event, u64)>);

/// Joins `events` with `versions` as of each event's time.
pub fn temporal_join<'s>(
    events: StreamVec<'s, u64, (Event, u64)>,
    versions: StreamVec<'s, u64, Version>,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    metrics: Metrics,
) -> StreamVec<'s, u64, Result<(Event, u64), OutRecord>> {
    let enrich_spec = spec
        .enrich
        .clone()
        .expect("a join is built only for a dataflow with [enrich]");
    let reach = spec.reach_ms();
    events.binary_frontier(
        versions,
        Exchange::new(|(e, _): &(Event, u64)| key_hash(&e.key)),
        Exchange::new(|v: &Version| key_hash(&v.key)),
        "TemporalJoin",
        move |_cap, _info| {
            let mut table = VersionedTable::default();
            let mut held: BTreeMap<u64, Held> = BTreeMap::new();
            move |(events_in, events_frontier), (versions_in, versions_frontier), output| {
                versions_in.for_each(|_cap, data| {
                    for v in data.drain(..) {
                        table.insert(v);
                    }
                });
                let port = output.output_index();
                events_in.for_each_stamp(|cap, batches| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    for batch in batches {
                        for (event, wm) in batch.drain(..) {
                            // Sources send events at their held time, which can be below
                            // the event's own time and its partition's watermark `wm`
                            // (held <= wm): it waits for the versions up to `max(t, wm)`
                            // and leaves then, a time that depends on its partition alone,
                            // so a dead letter written there lands at the same time in a
                            // replay.
                            let at = event.time.max(wm).max(time);
                            held.entry(at)
                                .or_insert_with(|| (cap.delayed(&at, port), Vec::new()))
                                .1
                                .push((event, wm));
                        }
                    }
                });
                while let Some(entry) = held.first_entry() {
                    if versions_frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, batch) = entry.remove();
                    let mut session = output.session(&cap);
                    let rejected_at = now_ms();
                    for (mut event, wm) in batch {
                        let row = table.lookup(&event.key, event.time);
                        match (row, enrich_spec.on_missing) {
                            (None, OnMissing::DeadLetter) => {
                                metrics.missing_reference.inc();
                                metrics.dead_letter("missing_reference");
                                session.give(Err(missing(&spec, &topics, &event, rejected_at)));
                            }
                            (row, _) => {
                                if row.is_some() {
                                    metrics.enriched.inc();
                                } else {
                                    metrics.missing_reference.inc();
                                }
                                enrich(&enrich_spec, &spec.windows, &mut event, row);
                                session.give(Ok((event, wm)));
                            }
                        }
                    }
                }
                let least = events_frontier
                    .frontier()
                    .iter()
                    .copied()
                    .chain(held.keys().copied())
                    .min();
                match least {
                    Some(least) => table.prune(least.saturating_sub(reach)),
                    None => table = VersionedTable::default(),
                }
            }
        },
    )
}

fn missing(
    spec: &PipelineSpec,
    topics: &Topics,
    event: &Event,
    rejected_at: u64,
) -> crate::output::OutRecord {
    let enrich = spec
        .enrich
        .as_ref()
        .expect("a join is built only for a dataflow with [enrich]");
    // The raw bytes stay at the source; the dead letter carries the event as decoded.
    let payload = serde_json::json!({
        "key": event.key,
        "id": event.id,
        "event_time": rfc3339_ms(event.time),
        "event_time_ms": event.time,
    })
    .to_string();
    let mut letter = super::dead_letter(
        spec,
        topics,
        "missing_reference",
        format!(
            "no reference data in `{}` for key `{}` at {} ({} ms)",
            enrich.topic,
            event.key,
            rfc3339_ms(event.time),
            event.time
        ),
        SourceRef {
            topic: spec.input.topic.clone(),
            partition: -1,
            offset: -1,
            timestamp_ms: i64::try_from(event.time).ok(),
            key_base64: None,
        },
        payload.as_bytes(),
        Some(event.key.as_bytes()),
        rejected_at,
    );
    letter.headers = crate::correlation::record_headers(event.correlation_id.as_deref());
    letter.appended_ms = event.appended_ms;
    letter
}
