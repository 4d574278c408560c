//! The sink operator: output records in, Kafka writes out, in timestamp order.
//!
//! Records are exchanged so that each (topic, partition) is written by exactly one worker,
//! buffered per timestamp, and written once the input frontier has passed their timestamp,
//! sorted within it so the bytes written do not depend on scheduling. This is the shape
//! transactional egress builds on: every frontier step is a natural commit point holding
//! "all outputs below F".

pub mod kafka;
pub mod memory;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

use crate::output::OutRecord;

/// Where output records go.
pub trait Writer {
    /// Writes one record (may buffer).
    fn write(&mut self, record: &OutRecord);
    /// Gives background work a chance to run (delivery reports); cheap.
    fn poll(&mut self) {}
    /// Waits until everything written so far is durable, or fails.
    fn flush(&mut self) -> Result<(), String>;
}

/// Shared state between the sink operator and the worker loop.
#[derive(Default)]
pub struct SinkState {
    /// The input is complete and every record was flushed.
    pub complete: bool,
    /// A write or flush failed; the run must stop with this error.
    pub error: Option<String>,
}

/// Routes a record to the worker owning its topic partition.
pub fn route(record: &OutRecord) -> u64 {
    (u64::from(record.topic) << 32) | u64::from(record.partition as u32)
}

/// Builds the sink operator over `stream` with `writer`.
pub fn sink<'s, W: Writer + 'static>(
    stream: StreamVec<'s, u64, OutRecord>,
    writer: Rc<RefCell<W>>,
    state: Rc<RefCell<SinkState>>,
) {
    let mut pending: BTreeMap<u64, Vec<OutRecord>> = BTreeMap::new();
    stream.sink(
        Exchange::new(route),
        "KafkaSink",
        move |(input, frontier)| {
            input.for_each_stamp(|cap, batches| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let buffer = pending.entry(time).or_default();
                for batch in batches {
                    buffer.append(batch);
                }
            });
            let ready: Vec<u64> = pending
                .keys()
                .copied()
                .take_while(|t| !frontier.less_equal(t))
                .collect();
            for t in ready {
                if let Some(mut records) = pending.remove(&t) {
                    records.sort_unstable();
                    for r in &records {
                        writer.borrow_mut().write(r);
                    }
                }
            }
            writer.borrow_mut().poll();
            if frontier.is_empty() && pending.is_empty() {
                let mut s = state.borrow_mut();
                if !s.complete {
                    if let Err(e) = writer.borrow_mut().flush() {
                        s.error = Some(e);
                    }
                    s.complete = true;
                }
            }
        },
    );
}
