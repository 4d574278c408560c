//! The reference source: a worker's reference partitions in, [`Version`]s out at their `τ`.
//!
//! Input (not connected to the outputs): the event source's notes, only for their frontier
//! — the events' watermark, which the reference worker follows when all its partitions are
//! idle. Outputs: versions at `τ` (the data carries `τ` and `e`), dead letters of malformed
//! reference records at the partition's watermark, and [`Note`]s (restart positions and
//! watermark moves under partition [`note_partition`]`(r)`) for the sinks' progress
//! records. Time semantics and recovery: see [`crate::enrich`].

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, StreamVec};
use timely::progress::Antichain;

use super::{Version, decode_reference, note_partition};
use crate::metrics::Metrics;
use crate::output::{OutRecord, SourceRef, Topics};
use crate::progress::{Note, Position, Replay};
use crate::source::{Polled, Reader, now_ms};
use crate::spec::PipelineSpec;
use crate::time::watermark::{Hold, Watermarks};

const BATCH: usize = 4096;
const IDLE_POLL: Duration = Duration::from_millis(5);

/// What a worker reads of the reference topic.
pub struct ReferenceInput {
    /// Reads this worker's reference partitions (`r % W == worker`) from their beginning.
    pub reader: Box<dyn Reader>,
    /// Per reference partition, the restart position (keyed by the reference partition
    /// `r`, not its note partition): records before its offset are the base.
    pub resume: BTreeMap<i32, Position>,
    /// Idle moves to replay, keyed by reference partition `r`.
    pub replay: BTreeMap<i32, Replay>,
}

/// Builds the reference source of `worker`. `events` is any stream at the events'
/// timestamps (the event source's notes); only its frontier is read.
pub fn reference_source<'s>(
    scope: Scope<'s, u64>,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    input: ReferenceInput,
    events: StreamVec<'s, u64, Note>,
    metrics: Metrics,
) -> (
    StreamVec<'s, u64, Version>,
    StreamVec<'s, u64, OutRecord>,
    StreamVec<'s, u64, Note>,
) {
    let mut builder = OperatorBuilder::new("ReferenceSource".to_owned(), scope);
    let info = builder.operator_info();
    let (versions_out, versions_stream) = builder.new_output::<Vec<Version>>();
    let (letters_out, letters_stream) = builder.new_output::<Vec<OutRecord>>();
    let (notes_out, notes_stream) = builder.new_output::<Vec<Note>>();
    let no_connection: Vec<(usize, Antichain<u64>)> = Vec::new();
    let mut events_in = builder.new_input_connection(events, Pipeline, no_connection);
    let mut versions_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<Version>>>::from(versions_out);
    let mut letters_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<OutRecord>>>::from(letters_out);
    let mut notes_out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<Note>>>::from(notes_out);
    let activator = scope.activator_for(info.address);
    let ReferenceInput {
        mut reader,
        resume,
        replay,
    } = input;

    builder.build(move |mut capabilities| {
        let notes_cap = capabilities.pop().expect("the operator has a notes output");
        let letters_cap = capabilities
            .pop()
            .expect("the operator has a letters output");
        let versions_cap = capabilities
            .pop()
            .expect("the operator has a versions output");
        let mut caps = Some((versions_cap, letters_cap, notes_cap));
        let enrich = spec
            .enrich
            .clone()
            .expect("a reference source is built only for a dataflow with [enrich]");
        // In a bounded run every partition is read to its end, so none turns idle.
        let live = spec.input.idle_timeout != Duration::MAX;
        let partitions: Vec<i32> = reader.partitions().iter().map(|p| p.partition).collect();
        let mut watermarks = Watermarks::new(
            partitions.iter().copied(),
            0,
            0,
            Duration::MAX,
            Instant::now(),
        );
        // Partitions still reading their base: the capability stays put until it is read.
        let mut base: BTreeMap<i32, i64> = BTreeMap::new();
        for p in &partitions {
            let from = resume.get(p).map_or(0, |pos| pos.offset);
            if let Some(pos) = resume.get(p) {
                watermarks.restore(*p, pos.max_seen, pos.watermark);
                if pos.offset > 0 {
                    base.insert(*p, pos.offset);
                }
            }
            if let Some(r) = replay.get(p) {
                watermarks.replay(*p, from, r);
            }
        }
        let reach = spec.reach_ms();
        let mut next: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
        for (p, o) in &base {
            next.insert(*p, *o);
        }
        let mut moved: BTreeSet<i32> = partitions.iter().copied().collect();
        let mut moved_at: BTreeMap<i32, i64> = BTreeMap::new();
        let mut versions: BTreeMap<u64, Vec<Version>> = BTreeMap::new();
        let mut letters: BTreeMap<u64, Vec<OutRecord>> = BTreeMap::new();
        let mut caught_up: BTreeSet<i32> = BTreeSet::new();
        let mut counters: BTreeMap<i32, prometheus::IntCounter> = BTreeMap::new();
        move |frontiers| {
            events_in.for_each(|_cap, data| data.clear());
            let events_at = frontiers[0].frontier().iter().copied().min();
            let Some(held) = caps.as_ref().map(|(c, _, _)| *c.time()) else {
                return;
            };
            let rejected_at = now_ms();
            let read = reader.poll(BATCH, &mut |polled| match polled {
                Polled::End(p) => {
                    base.remove(&p);
                    watermarks.finish(p);
                }
                Polled::CaughtUp(p) => {
                    // Everything written so far was read, the base included.
                    base.remove(&p);
                    caught_up.insert(p);
                }
                Polled::Record(r) => {
                    counters
                        .entry(r.partition)
                        .or_insert_with(|| metrics.reference_partition(&enrich.topic, r.partition))
                        .inc();
                    caught_up.remove(&r.partition);
                    let in_base = base.get(&r.partition).is_some_and(|o| r.offset < *o);
                    if !in_base {
                        base.remove(&r.partition);
                        next.insert(r.partition, r.offset + 1);
                        moved.insert(r.partition);
                    }
                    let key = r.key.and_then(|k| std::str::from_utf8(k).ok());
                    let decoded = match key {
                        None => Err("the reference record has no UTF-8 key".to_string()),
                        Some(k) => {
                            decode_reference(&enrich, r.payload, r.timestamp_ms).map(|d| (k, d))
                        }
                    };
                    match decoded {
                        Ok((key, d)) => {
                            let tau = if in_base {
                                0
                            } else {
                                watermarks.observe(r.partition, d.effective, Instant::now())
                            };
                            let at = tau.max(held);
                            versions.entry(at).or_default().push(Version {
                                key: key.to_string(),
                                tau,
                                effective: d.effective,
                                partition: r.partition,
                                offset: r.offset,
                                row: d.row,
                            });
                        }
                        Err(reason) if !in_base => {
                            // Data all the same: an idle partition wakes, so the letter's
                            // time stays below the positions valid after it.
                            watermarks.touch(r.partition, Instant::now());
                            let wm = watermarks.watermark(r.partition).max(held);
                            metrics.dead_letter("malformed_reference");
                            let source = SourceRef::new(
                                &enrich.topic,
                                r.partition,
                                r.offset,
                                r.timestamp_ms,
                                r.key,
                            );
                            letters.entry(wm).or_default().push(super::dead_letter(
                                &spec,
                                &topics,
                                "malformed_reference",
                                reason,
                                source,
                                r.payload.unwrap_or_default(),
                                r.key,
                                rejected_at,
                            ));
                        }
                        // A base record's dead letter was committed by the run that read it.
                        Err(_) => {}
                    }
                    if !in_base {
                        watermarks.advance(r.partition, r.offset + 1);
                    }
                }
            });
            if live {
                for p in &caught_up {
                    if !base.contains_key(p) {
                        watermarks.idle_now(*p);
                    }
                }
            }

            if let Some((versions_cap, letters_cap, notes_cap)) = caps.as_ref() {
                let mut notes = notes_out.activate();
                for p in std::mem::take(&mut moved) {
                    if base.contains_key(&p) {
                        moved.insert(p);
                        continue;
                    }
                    // The greatest τ before the position is its watermark (τ = max(e, w)).
                    let wm = watermarks.watermark(p);
                    let position = Position {
                        partition: note_partition(p),
                        offset: next.get(&p).copied().unwrap_or_default(),
                        max_seen: Some(wm),
                        watermark: wm,
                    };
                    let at = position.valid_from(reach).max(held);
                    notes
                        .session(&notes_cap.delayed(&at))
                        .give(Note::Position(position));
                }
                drop(notes);
                let mut out = versions_out.activate();
                for (time, mut items) in std::mem::take(&mut versions) {
                    out.session(&versions_cap.delayed(&time))
                        .give_container(&mut items);
                }
                drop(out);
                let mut out = letters_out.activate();
                for (time, mut items) in std::mem::take(&mut letters) {
                    out.session(&letters_cap.delayed(&time))
                        .give_container(&mut items);
                }
            }
            let target = if !base.is_empty() {
                Some(held)
            } else {
                match watermarks.hold(Instant::now()) {
                    Hold::Release => None,
                    Hold::At(t) => Some(t),
                    // Every partition is idle: follow the events. Once they are complete,
                    // stay put and read on to the end (its dead letters are outputs too).
                    Hold::Idle(t) => match events_at {
                        Some(to) => {
                            watermarks.follow(to);
                            Some(to.max(t))
                        }
                        None => Some(t),
                    },
                }
            };
            match target {
                None => caps = None,
                Some(t) => {
                    if let Some((versions_cap, letters_cap, notes_cap)) = caps.as_mut()
                        && t > *versions_cap.time()
                    {
                        let mut moves = crate::source::watermark_moves(
                            &next,
                            &mut moved_at,
                            &watermarks,
                            t,
                            note_partition,
                        );
                        notes_out
                            .activate()
                            .session(notes_cap)
                            .give_container(&mut moves);
                        versions_cap.downgrade(&t);
                        letters_cap.downgrade(&t);
                        notes_cap.downgrade(&t);
                    }
                }
            }
            if caps.is_some() {
                if read >= BATCH {
                    activator.activate();
                } else {
                    activator.activate_after(IDLE_POLL);
                }
            }
        }
    });
    (versions_stream, letters_stream, notes_stream)
}
