//! The source operator: partitions in, events and side outputs out, the watermark held as
//! the worker's capability.
//!
//! ```text
//!  reader (Kafka partitions p with p % W == worker)
//!    │ raw records: partition, offset, key, payload
//!    ▼
//!  decode + validate ──Err──► dead letter ─────────────────────────┐
//!    │ Ok(event at t)                                              │
//!    ├─ late for window w (w's end + grace <= wm_p) ─► late record ─┤ Err(OutRecord) at wm_p
//!    │    (only windows whose filter counts the event)             │
//!    ├─ a repeated id (dedupe, unless late for every window) ───────┤ dead letter, if asked
//!    ▼                                                              ▼
//!  Ok((event, wm_p)) at the held time                             sink
//! ```
//!
//! The worker holds one capability at the least watermark of its active partitions
//! ([`crate::time::watermark`]) and downgrades it as that rises, so the dataflow frontier
//! is the watermark. A worker without partitions releases its capability at once; a bounded
//! run releases it when every partition has reached its end offset, which closes every
//! window.

pub mod kafka;
pub mod memory;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback};
use timely::dataflow::{Scope, StreamVec};
use timely::progress::Antichain;

use crate::codec::{Decoder, ErrorKind, Event, Rejection};
use crate::dedupe::Seen;
use crate::metrics::Metrics;
use crate::output::{self, OutRecord, SourceRef, Topics};
use crate::progress::{Note, Position, Replay, WatermarkMove};
use crate::spec::{CorrelationSource, PipelineSpec};
use crate::time::watermark::{Hold, Watermarks};
use crate::window::combine::{Combiner, Partial};

/// The watermark moves a source tells the sinks as its watermark rises to `t`: one for
/// each unfinished partition whose next offset changed since its last move, or that was
/// left behind (idle, its own watermark below `t`). `next` is each partition's next offset;
/// `moved_at` the offset of its last move, updated here; `id` names a partition in the
/// progress records.
pub(crate) fn watermark_moves(
    next: &BTreeMap<i32, i64>,
    moved_at: &mut BTreeMap<i32, i64>,
    watermarks: &Watermarks,
    t: u64,
    id: impl Fn(i32) -> i32,
) -> Vec<Note> {
    let mut moves = Vec::new();
    for (p, offset) in next {
        if watermarks.is_finished(*p) {
            continue;
        }
        let idle = watermarks.watermark(*p) < t;
        if idle || moved_at.get(p) != Some(offset) {
            moved_at.insert(*p, *offset);
            let to = WatermarkMove {
                partition: id(*p),
                offset: *offset,
                watermark: t,
            };
            moves.push(Note::Moved { to, idle });
        }
    }
    moves
}

/// One record as read from an input partition, borrowed from the reader.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, if any.
    pub timestamp_ms: Option<i64>,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Payload, `None` for a null value.
    pub payload: Option<&'a [u8]>,
    /// Kafka headers, borrowed: nothing is parsed or copied unless one is looked up.
    pub headers: RecordHeaders<'a>,
}

/// The headers of a record as read, looked up by name only when asked (for
/// `[input] correlation_id = { header = "..." }`).
#[derive(Clone, Copy, Default)]
pub enum RecordHeaders<'a> {
    /// No headers (or a reader that has none).
    #[default]
    None,
    /// The headers of this Kafka message (librdkafka parses them on first access, so
    /// a dataflow that never asks pays nothing for them).
    Kafka(&'a rdkafka::message::BorrowedMessage<'a>),
}

impl<'a> RecordHeaders<'a> {
    /// The value of the last header named `name` (Kafka allows repeated names; the last is
    /// the latest, as `Headers.lastHeader` in Java), `None` when there is none or it is null.
    pub fn last(&self, name: &str) -> Option<&'a [u8]> {
        match self {
            RecordHeaders::None => None,
            RecordHeaders::Kafka(message) => {
                use rdkafka::message::{Headers, Message};
                let headers: &'a rdkafka::message::BorrowedHeaders = message.headers()?;
                // rdkafka panics on a header name that is not UTF-8; such a record is
                // still processed, without an id from its headers.
                std::panic::catch_unwind(|| {
                    (0..headers.count())
                        .rev()
                        .filter_map(|i| headers.try_get(i))
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                })
                .ok()
                .flatten()
            }
        }
    }
}

impl std::fmt::Debug for RecordHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordHeaders::None => f.write_str("None"),
            RecordHeaders::Kafka(_) => f.write_str("Kafka"),
        }
    }
}

/// What a reader reports.
#[derive(Debug)]
pub enum Polled<'a> {
    /// A record.
    Record(RecordRef<'a>),
    /// The partition reached the end it was bounded to; nothing more will come from it.
    End(i32),
    /// The partition has been read up to its current end; more may come later.
    CaughtUp(i32),
}

/// A source of raw records for one worker's partitions.
pub trait Reader {
    /// The partitions this reader owns, each with the position it starts from (the next
    /// offset it will read, and the greatest event time read before it, when resuming).
    fn partitions(&self) -> Vec<Position>;
    /// Hands up to `max` records (and end markers) to `f`; returns how many records it read.
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Polled<'_>)) -> usize;
    /// From now on, stop each partition at the end offset it has at this moment.
    fn bound_to_current_end(&mut self);
}

impl Reader for Box<dyn Reader> {
    fn partitions(&self) -> Vec<Position> {
        (**self).partitions()
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Polled<'_>)) -> usize {
        (**self).poll(max, f)
    }

    fn bound_to_current_end(&mut self) {
        (**self).bound_to_current_end()
    }
}

/// Signals shared with a running source.
#[derive(Clone, Debug, Default)]
pub struct SourceControl {
    /// Set to read every partition up to its current end, then close all windows.
    pub drain: Arc<AtomicBool>,
}

/// What flows out of the source: what the windows take, or a record for the sink (dead
/// letter or late record).
pub type SourceItem = Result<Accepted, OutRecord>;

/// What the source passes on for the windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Accepted {
    /// An event with its partition's watermark when it was read: for session windows, and
    /// for the temporal join of a dataflow with `[enrich]`, which combines after the join.
    Event(Event, u64),
    /// The totals of one (tumbling or hopping window, key, start) over this activation's
    /// events ([`crate::window::combine`]).
    Partial(Partial),
}

const BATCH: usize = 4096;

/// Events are sent on in containers of this many, each allocated at its full size: grown
/// one push at a time, a batch's container was reallocated and copied a dozen times,
/// and at its final size it was large enough that each one was fresh pages from the
/// kernel (together a tenth of the worker's time).
const CHUNK: usize = 512;
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How often a source reports its partitions' positions and watermarks to the metrics.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Consecutive records of one partition in a poll: where the partition stands after them,
/// and how many records and bytes they were.
struct Run {
    partition: i32,
    next: i64,
    records: u64,
    bytes: u64,
}

/// What a source worker tells the others about its watermark, so that a worker whose
/// partitions are all idle can follow the rest instead of holding the frontier back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The worker speaking.
    pub worker: usize,
    /// The time its capability holds.
    pub held: u64,
    /// Whether it has active partitions (only those are followed).
    pub active: bool,
}

/// Builds the source operator for worker `worker`; resumed partitions repeat the idleness
/// decisions in `replay`.
///
/// Besides its data output, the operator broadcasts an [`Announcement`] whenever its held
/// time or activity changes, and reads everyone's announcements back through a feedback
/// loop. That input is not connected to the outputs, so it never holds a frontier back.
/// Its third output carries the [`Note`]s the sinks record in their progress.
#[allow(clippy::too_many_arguments)]
pub fn kafka_like_source<'s, R: Reader + 'static>(
    scope: Scope<'s, u64>,
    worker: usize,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    mut reader: R,
    replay: BTreeMap<i32, Replay>,
    control: SourceControl,
    metrics: Metrics,
    caught_up: Rc<Cell<Option<Instant>>>,
) -> (StreamVec<'s, u64, SourceItem>, StreamVec<'s, u64, Note>) {
    let (loop_handle, loop_stream) = scope.feedback::<Vec<Announcement>>(1);
    let mut builder = OperatorBuilder::new("Source".to_owned(), scope);
    let info = builder.operator_info();
    let (data_out, data_stream) = builder.new_output::<Vec<SourceItem>>();
    let (announce_out, announce_stream) = builder.new_output::<Vec<Announcement>>();
    let (positions_out, positions_stream) = builder.new_output::<Vec<Note>>();
    let no_connection: Vec<(usize, Antichain<u64>)> = Vec::new();
    let mut heard = builder.new_input_connection(loop_stream, Pipeline, no_connection);
    let mut data_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<SourceItem>>>::from(data_out);
    let mut announce_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<Announcement>>>::from(announce_out);
    let mut positions_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<Note>>>::from(positions_out);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut capabilities| {
        let positions_cap = capabilities
            .pop()
            .expect("the operator has a positions output");
        let announce_cap = capabilities
            .pop()
            .expect("the operator has an announcement output");
        let data_cap = capabilities.pop().expect("the operator has a data output");
        let mut caps = Some((data_cap, announce_cap, positions_cap));
        let decoder = Decoder::new(&spec);
        let starts = reader.partitions();
        let mut watermarks = Watermarks::new(
            starts.iter().map(|s| s.partition),
            0,
            spec.input.max_out_of_orderness_ms,
            spec.input.idle_timeout,
            Instant::now(),
        );
        for s in &starts {
            watermarks.restore(s.partition, s.max_seen, s.watermark);
            if let Some(r) = replay.get(&s.partition) {
                watermarks.replay(s.partition, s.offset, r);
            }
        }
        // The offset each partition's last watermark move was sent with.
        let mut moved_at: BTreeMap<i32, i64> = BTreeMap::new();
        let reach = spec.reach_ms();
        // Where each partition stands, and which moved since positions were last sent.
        let mut next: BTreeMap<i32, i64> = starts.iter().map(|s| (s.partition, s.offset)).collect();
        let mut moved: BTreeSet<i32> = next.keys().copied().collect();
        let mut others: BTreeMap<usize, Announcement> = BTreeMap::new();
        let mut announced: Option<Announcement> = None;
        let mut draining = false;
        // When a read last found less than a batch and reached the end of a partition.
        let mut drained_at: Option<Instant> = None;
        // This activation's events: full chunks, then the one being filled.
        let mut pending: Vec<Vec<SourceItem>> = Vec::new();
        let mut filling: Vec<SourceItem> = Vec::with_capacity(CHUNK);
        let mut side: BTreeMap<u64, Vec<SourceItem>> = BTreeMap::new();
        let topic = spec.input.topic.clone();
        let all_windows = spec.windows.len();
        let dedupe = spec.dedupe;
        let window_reach = spec.window_reach_ms();
        let mut seen: BTreeMap<i32, Seen> = BTreeMap::new();
        // Without `[enrich]`, tumbling and hopping windows take this worker's partials;
        // events go on only to what needs them one by one: sessions, or the join.
        // Every record is decoded into this one event: when the windows all combine here,
        // its key and buffers are reused instead of allocated and freed per record.
        let mut scratch = Event::default();
        let mut combiner = Combiner::new(Rc::clone(&spec));
        let combine = spec.enrich.is_none() && combiner.serves_any();
        let pass_events = spec.enrich.is_some()
            || spec
                .windows
                .iter()
                .any(|w| matches!(w.kind, crate::spec::WindowKind::Session { .. }));
        let id_header = match spec.input.correlation.as_ref().map(|c| &c.source) {
            Some(CorrelationSource::Header(name)) => Some(name.clone()),
            _ => None,
        };
        let counters: BTreeMap<i32, crate::metrics::PartitionCounters> = starts
            .iter()
            .map(|s| (s.partition, metrics.partition(&topic, s.partition)))
            .collect();
        let windows: Vec<crate::metrics::WindowMetrics> =
            spec.windows.iter().map(|w| metrics.window(&w.name)).collect();
        let mut reported: Option<Instant> = None;
        let mut dedupe_reported = 0i64;
        let fetch = metrics.stage(crate::metrics::Stage::Fetch).local();
        move |_frontiers| {
            heard.for_each(|_cap, data| {
                for a in data.drain(..) {
                    if a.worker != worker {
                        others.insert(a.worker, a);
                    }
                }
            });
            let Some(held) = caps.as_ref().map(|(c, _, _)| *c.time()) else {
                return;
            };
            let now = Instant::now();
            if !draining && control.drain.load(Ordering::Relaxed) {
                draining = true;
                drained_at = None;
                reader.bound_to_current_end();
            }
            // A read that took all there was comes back after IDLE_POLL, even when an
            // announcement (every worker's, its own too, at each move of its watermark)
            // wakes the operator sooner: a live run's workers otherwise woke each other
            // and read a few records at a time, every step's overhead paid for each few.
            if let Some(at) = drained_at {
                let since = now.saturating_duration_since(at);
                if since < IDLE_POLL {
                    activator.activate_after(IDLE_POLL - since);
                    return;
                }
            }
            let rejected_at = now_ms();
            let mut decoded = 0u64;
            // The run of records of one partition being read: its position and counts go
            // to `next`, `moved` and the metrics when the run ends, not once per record.
            let mut run: Option<Run> = None;
            let mut end_run = |run: Run| {
                next.insert(run.partition, run.next);
                moved.insert(run.partition);
                if let Some(c) = counters.get(&run.partition) {
                    c.records.inc_by(run.records);
                    c.bytes.inc_by(run.bytes);
                }
            };
            let read = reader.poll(BATCH, &mut |polled| match polled {
                Polled::End(p) => watermarks.finish(p),
                // Input partitions turn idle by `idle_timeout` only; the sink learns that
                // the run is live (see `sink::Prompt`).
                Polled::CaughtUp(_) => caught_up.set(Some(now)),
                Polled::Record(r) => {
                    if let Some(t) = r.timestamp_ms.filter(|t| *t > 0) {
                        fetch.observe(rejected_at.saturating_sub(t as u64) as f64 / 1000.0);
                    }
                    let bytes =
                        (r.key.map_or(0, <[u8]>::len) + r.payload.map_or(0, <[u8]>::len)) as u64;
                    match run.as_mut() {
                        Some(run) if run.partition == r.partition => {
                            run.next = r.offset + 1;
                            run.records += 1;
                            run.bytes += bytes;
                        }
                        _ => {
                            let started = Run {
                                partition: r.partition,
                                next: r.offset + 1,
                                records: 1,
                                bytes,
                            };
                            if let Some(ended) = run.replace(started) {
                                end_run(ended);
                            }
                        }
                    }
                    let source =
                        || SourceRef::new(&topic, r.partition, r.offset, r.timestamp_ms, r.key);
                    // Looked up only when the dataflow takes correlation ids from a header.
                    let header_id = id_header
                        .as_deref()
                        .and_then(|name| r.headers.last(name))
                        .filter(|v| !v.is_empty())
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    match decoder.decode_into(r.payload, &mut scratch) {
                        Err(mut rejection) => {
                            if header_id.is_some() {
                                rejection.correlation_id = header_id;
                            }
                            tracing::debug!(
                                partition = r.partition,
                                offset = r.offset,
                                kind = rejection.kind.as_str(),
                                correlation_id = rejection.correlation_id.as_deref(),
                                "dead letter"
                            );
                            watermarks.touch(r.partition, now);
                            metrics.rejected(rejection.kind.as_str());
                            let letter = output::dead_letter(
                                &spec,
                                &topics,
                                source(),
                                r.payload,
                                r.key,
                                &rejection,
                                rejected_at,
                            );
                            let wm = watermarks.watermark(r.partition).max(held);
                            side.entry(wm).or_default().push(Err(letter));
                        }
                        Ok(id) => {
                            let event = &mut scratch;
                            if header_id.is_some() {
                                event.correlation_id = header_id;
                            }
                            event.appended_ms = r.timestamp_ms.map_or(0, |t| t.max(0) as u64);
                            let wm = watermarks.observe(r.partition, event.time, now).max(held);
                            // Windows the event does not reach: filtered out, or late.
                            let late = spec
                                .windows
                                .iter()
                                .enumerate()
                                .filter(|(i, w)| {
                                    event.window(*i).is_none()
                                        || crate::window::is_late(w, event.time, wm)
                                })
                                .count();
                            let repeat = late < all_windows
                                && dedupe.is_some_and(|d| {
                                    let seen = seen.entry(r.partition).or_insert_with(|| {
                                        Seen::new(d.horizon_ms, window_reach, r.partition as u64)
                                    });
                                    seen.forget_before(watermarks.watermark(r.partition));
                                    seen.repeat(&id, event.time)
                                });
                            if repeat {
                                tracing::debug!(
                                    partition = r.partition,
                                    offset = r.offset,
                                    id = %id,
                                    correlation_id = event.correlation_id.as_deref(),
                                    "duplicate"
                                );
                                metrics.duplicates_dropped.inc();
                                if dedupe.is_some_and(|d| d.dead_letter) {
                                    metrics.dead_letter(ErrorKind::Duplicate.as_str());
                                    let rejection = Rejection {
                                        kind: ErrorKind::Duplicate,
                                        reason: format!(
                                            "repeats the id `{}` of an earlier record of partition {} within the dedupe horizon",
                                            id, r.partition
                                        ),
                                        correlation_id: event.correlation_id.clone(),
                                    };
                                    let letter = output::dead_letter(
                                        &spec,
                                        &topics,
                                        source(),
                                        r.payload,
                                        r.key,
                                        &rejection,
                                        rejected_at,
                                    );
                                    side.entry(wm).or_default().push(Err(letter));
                                }
                            } else {
                                for (i, w) in spec.windows.iter().enumerate() {
                                    // A window's filter decides first: an event it
                                    // leaves out is not late for it.
                                    let Some(grouped) = event.window(i) else {
                                        continue;
                                    };
                                    if crate::window::is_late(w, event.time, wm) {
                                        tracing::debug!(
                                            partition = r.partition,
                                            offset = r.offset,
                                            window = %w.name,
                                            event_time = event.time,
                                            watermark = wm,
                                            correlation_id = event.correlation_id.as_deref(),
                                            "late record"
                                        );
                                        windows[i].late.inc();
                                        let record = output::late_record(
                                            &spec,
                                            &topics,
                                            w,
                                            grouped.key,
                                            event.time,
                                            wm,
                                            source(),
                                            r.payload.unwrap_or_default(),
                                            event.correlation_id.as_deref(),
                                        );
                                        side.entry(wm).or_default().push(Err(record));
                                    }
                                }
                                if late < all_windows {
                                    decoded += 1;
                                    if combine {
                                        combiner.add(event, wm);
                                    }
                                    if pass_events {
                                        if filling.len() == CHUNK {
                                            let full = std::mem::replace(
                                                &mut filling,
                                                Vec::with_capacity(CHUNK),
                                            );
                                            pending.push(full);
                                        }
                                        filling.push(Ok(Accepted::Event(
                                            std::mem::take(event),
                                            wm,
                                        )));
                                    }
                                }
                            }
                        }
                    }
                    watermarks.advance(r.partition, r.offset + 1);
                }
            });
            if let Some(ended) = run {
                end_run(ended);
            }
            fetch.flush();

            if let Some((data_cap, _, positions_cap)) = caps.as_ref() {
                let mut positions = positions_out.activate();
                for p in std::mem::take(&mut moved) {
                    let position = Position {
                        partition: p,
                        offset: next.get(&p).copied().unwrap_or_default(),
                        max_seen: watermarks.max_seen(p),
                        watermark: watermarks.watermark(p),
                    };
                    let at = position.valid_from(reach).max(held);
                    positions
                        .session(&positions_cap.delayed(&at))
                        .give(Note::Position(position));
                }
                let mut out = data_out.activate();
                combiner.drain(|p| {
                    if filling.len() == CHUNK {
                        pending.push(std::mem::replace(&mut filling, Vec::with_capacity(CHUNK)));
                    }
                    filling.push(Ok(Accepted::Partial(p)));
                });
                if !filling.is_empty() {
                    pending.push(std::mem::replace(&mut filling, Vec::with_capacity(CHUNK)));
                }
                if !pending.is_empty() {
                    let mut session = out.session(data_cap);
                    for mut chunk in pending.drain(..) {
                        session.give_container(&mut chunk);
                    }
                }
                for (time, mut items) in std::mem::take(&mut side) {
                    out.session(&data_cap.delayed(&time))
                        .give_container(&mut items);
                }
            }
            let target = match watermarks.hold(now) {
                Hold::Release => None,
                Hold::At(t) => Some((t, true)),
                Hold::Idle(t) => {
                    // Nothing of ours is active: follow the least active worker. When no
                    // worker is active, nothing holds the watermark back, and it goes to
                    // the greatest any partition reached, ours or another worker's (as
                    // Flink's watermark valve does when every channel is idle). Our own
                    // held time is not enough: partitions that turn idle at the same step
                    // leave it at the least of them, and the windows between would wait
                    // for new data.
                    let least_active = others.values().filter(|a| a.active).map(|a| a.held).min();
                    let to = least_active.unwrap_or_else(|| {
                        others
                            .values()
                            .filter(|a| a.held != u64::MAX)
                            .map(|a| a.held)
                            .fold(watermarks.greatest(), u64::max)
                    });
                    watermarks.follow(to);
                    Some((to.max(t), false))
                }
            };
            let state = Announcement {
                worker,
                held: target.map_or(u64::MAX, |(t, _)| t),
                active: target.is_some_and(|(_, active)| active),
            };
            if announced != Some(state)
                && let Some((_, announce_cap, _)) = caps.as_ref()
            {
                tracing::trace!(held = state.held, active = state.active, idle = ?watermarks.idle_partitions(), "watermark");
                announce_out.activate().session(announce_cap).give(state);
                announced = Some(state);
            }
            match target {
                None => caps = None,
                Some((t, _)) => {
                    if let Some((data_cap, announce_cap, positions_cap)) = caps.as_mut()
                        && t > *data_cap.time()
                    {
                        // Tell the sinks where each partition stands as the watermark moves,
                        // at the time it moves from (see `crate::progress`).
                        let mut moves = watermark_moves(&next, &mut moved_at, &watermarks, t, |p| p);
                        positions_out
                            .activate()
                            .session(positions_cap)
                            .give_container(&mut moves);
                        data_cap.downgrade(&t);
                        announce_cap.downgrade(&t);
                        positions_cap.downgrade(&t);
                    }
                }
            }
            metrics.records_decoded.inc_by(decoded);
            // A worker releasing its watermark reports at once: it no longer holds any back.
            if target.is_none() || reported.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY)
            {
                reported = Some(now);
                let idle = watermarks.idle_partitions();
                metrics.source_polled(
                    worker,
                    &topic,
                    next.iter().map(|(p, offset)| {
                        (*p, *offset, watermarks.watermark(*p), idle.contains(p))
                    }),
                    state.held,
                );
                let remembered = seen.values().map(Seen::len).sum::<usize>() as i64;
                metrics
                    .dedupe_state_entries
                    .add(remembered - dedupe_reported);
                dedupe_reported = remembered;
            }
            drained_at = (read < BATCH && caught_up.get() == Some(now)).then_some(now);
            if caps.is_some() {
                if read >= BATCH {
                    activator.activate();
                } else {
                    activator.activate_after(IDLE_POLL);
                }
            }
        }
    });
    announce_stream.broadcast().connect_loop(loop_handle);
    (data_stream, positions_stream)
}

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
