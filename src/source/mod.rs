//! The source operator: partitions in, events and side outputs out, the watermark held as
//! the worker's capability.
//!
//! ```text
//!  reader (Kafka partitions p with p % W == worker)
//!    │ raw records: partition, offset, key, payload
//!    ▼
//!  decode + validate ──Err──► dead letter ─────────────────────────┐
//!    │ Ok(event at t)                                              │
//!    ├─ late for window w (w's end + grace <= wm_p) ─► late record ─┤ Err(OutRecord) at the held time
//!    ▼                                                              ▼
//!  Ok((event, wm_p)) at time max(t, wm_p)                        sink
//! ```
//!
//! The worker holds one capability at the least watermark of its active partitions
//! ([`crate::time::watermark`]) and downgrades it as that rises, so the dataflow frontier
//! is the watermark. A worker without partitions releases its capability at once; a bounded
//! run releases it when every partition has reached its end offset, which closes every
//! window.

pub mod kafka;
pub mod memory;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

use crate::codec::{Decoder, Event};
use crate::metrics::Metrics;
use crate::output::{self, OutRecord, SourceRef, Topics};
use crate::spec::PipelineSpec;
use crate::time::watermark::{Hold, Watermarks};

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
}

/// What a reader reports.
#[derive(Debug)]
pub enum Polled<'a> {
    /// A record.
    Record(RecordRef<'a>),
    /// The partition reached the end it was bounded to; nothing more will come from it.
    End(i32),
}

/// A source of raw records for one worker's partitions.
pub trait Reader {
    /// The partitions this reader owns.
    fn partitions(&self) -> Vec<i32>;
    /// Hands up to `max` records (and end markers) to `f`; returns how many records it read.
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Polled<'_>)) -> usize;
    /// From now on, stop each partition at the end offset it has at this moment.
    fn bound_to_current_end(&mut self);
}

/// Signals shared with a running source.
#[derive(Clone, Debug, Default)]
pub struct SourceControl {
    /// Set to read every partition up to its current end, then close all windows.
    pub drain: Arc<AtomicBool>,
}

/// What flows out of the source: an event with its partition's watermark, or a record for
/// the sink (dead letter or late record).
pub type SourceItem = Result<(Event, u64), OutRecord>;

const BATCH: usize = 4096;
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Builds the source operator for this worker.
pub fn kafka_like_source<'s, R: Reader + 'static>(
    scope: Scope<'s, u64>,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    mut reader: R,
    control: SourceControl,
    metrics: Metrics,
) -> StreamVec<'s, u64, SourceItem> {
    source(scope, "Source", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let decoder = Decoder::new(&spec);
        let mut cap = Some(capability);
        let mut watermarks = Watermarks::new(
            reader.partitions(),
            0,
            spec.input.max_out_of_orderness_ms,
            spec.input.idle_timeout,
            Instant::now(),
        );
        let mut draining = false;
        let mut pending: BTreeMap<u64, Vec<SourceItem>> = BTreeMap::new();
        let topic = spec.input.topic.clone();
        let all_windows = spec.windows.len();
        move |output| {
            let Some(held) = cap.as_ref().map(|c| *c.time()) else {
                return;
            };
            if !draining && control.drain.load(Ordering::Relaxed) {
                draining = true;
                reader.bound_to_current_end();
            }
            let now = Instant::now();
            let rejected_at = now_ms();
            let read = reader.poll(BATCH, &mut |polled| match polled {
                Polled::End(p) => watermarks.finish(p),
                Polled::Record(r) => {
                    metrics.records_in.inc();
                    let source =
                        || SourceRef::new(&topic, r.partition, r.offset, r.timestamp_ms, r.key);
                    match decoder.decode(r.payload) {
                        Err(rejection) => {
                            watermarks.touch(r.partition, now);
                            metrics.dead_letters.inc();
                            let letter = output::dead_letter(
                                &spec,
                                &topics,
                                source(),
                                r.payload,
                                r.key,
                                &rejection,
                                rejected_at,
                            );
                            pending.entry(held).or_default().push(Err(letter));
                        }
                        Ok(event) => {
                            let wm = watermarks.observe(r.partition, event.time, now).max(held);
                            let mut late = 0;
                            for w in spec.windows.iter() {
                                if crate::window::is_late(w, event.time, wm) {
                                    late += 1;
                                    metrics.late_records.inc();
                                    let record = output::late_record(
                                        &spec,
                                        &topics,
                                        w,
                                        &event.key,
                                        event.time,
                                        wm,
                                        source(),
                                        r.payload.unwrap_or_default(),
                                    );
                                    pending.entry(held).or_default().push(Err(record));
                                }
                            }
                            if late < all_windows {
                                metrics.events_valid.inc();
                                pending
                                    .entry(event.time.max(wm))
                                    .or_default()
                                    .push(Ok((event, wm)));
                            }
                        }
                    }
                }
            });

            if let Some(c) = cap.as_ref() {
                for (time, mut items) in std::mem::take(&mut pending) {
                    output.session(&c.delayed(&time)).give_container(&mut items);
                }
            }
            match watermarks.hold(now) {
                Hold::Release => cap = None,
                Hold::At(t) => {
                    if let Some(c) = cap.as_mut()
                        && t > *c.time()
                    {
                        c.downgrade(&t);
                        metrics.watermark_ms.set(t as i64);
                    }
                }
            }
            if cap.is_some() {
                if read >= BATCH {
                    activator.activate();
                } else {
                    activator.activate_after(IDLE_POLL);
                }
            }
        }
    })
}

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
