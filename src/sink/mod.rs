//! The sink operator: output records and restart positions in, committed Kafka writes out.
//!
//! ```text
//!  outputs ──(exchanged by topic partition)──┐
//!                                             ├─► sink: every commit_interval, with F = the
//!  positions ──(broadcast to every worker)───┘    least frontier of its inputs, write the
//!                                                  outputs below F (in timestamp order, sorted
//!                                                  within), then the progress record
//!                                                  {F, latest positions below F}, and commit
//! ```
//!
//! Each (topic, partition) is written by exactly one worker, so its order does not depend on
//! scheduling. Outputs below the frontier this worker committed in an earlier run were
//! committed then and are dropped; see [`crate::progress`] for why that is exactly right.

pub mod kafka;
pub mod memory;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;

use crate::output::OutRecord;
use crate::progress::{Position, Progress};

/// Where output records go.
pub trait Writer {
    /// Writes one record as part of the current commit.
    fn write(&mut self, record: &OutRecord);
    /// Gives background work a chance to run (delivery reports); cheap.
    fn poll(&mut self) {}
    /// Makes everything written since the last commit durable, together with `progress`,
    /// or fails.
    fn commit(&mut self, progress: &Progress) -> Result<(), String>;
    /// Abandons what was written since the last commit (a stop between commits).
    fn abort(&mut self) {}
}

/// Shared state between the sink operator and the worker loop.
#[derive(Default)]
pub struct SinkState {
    /// The inputs are complete and everything was committed.
    pub complete: bool,
    /// A write or commit failed; the run must stop with this error.
    pub error: Option<String>,
    /// The frontier of the last commit.
    pub committed: u64,
}

/// How a sink commits.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The progress record to fill in (dataflow, fingerprint, worker, workers).
    pub template: Progress,
    /// Outputs below this were committed by an earlier run of this worker.
    pub recovered_frontier: u64,
    /// How often to commit.
    pub commit_interval: Duration,
}

/// Routes a record to the worker owning its topic partition.
pub fn route(record: &OutRecord) -> u64 {
    (u64::from(record.topic) << 32) | u64::from(record.partition as u32)
}

/// Builds the sink operator.
pub fn sink<'s, W: Writer + 'static>(
    outputs: StreamVec<'s, u64, OutRecord>,
    positions: StreamVec<'s, u64, Position>,
    writer: Rc<RefCell<W>>,
    state: Rc<RefCell<SinkState>>,
    config: SinkConfig,
) {
    let scope = outputs.scope();
    let mut builder = OperatorBuilder::new("KafkaSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let mut outputs_in = builder.new_input(outputs, Exchange::new(route));
    let mut positions_in = builder.new_input(positions.broadcast(), Pipeline);
    state.borrow_mut().committed = config.recovered_frontier;

    builder.build(move |_capabilities| {
        let mut pending: BTreeMap<u64, Vec<OutRecord>> = BTreeMap::new();
        let mut pending_positions: BTreeMap<u64, Vec<Position>> = BTreeMap::new();
        let mut latest: BTreeMap<i32, Position> = BTreeMap::new();
        let mut committed = config.recovered_frontier;
        let mut last_commit = Instant::now();
        move |frontiers| {
            outputs_in.for_each_stamp(|cap, batches| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                if time < config.recovered_frontier {
                    return; // committed by an earlier run
                }
                let buffer = pending.entry(time).or_default();
                for batch in batches {
                    buffer.append(batch);
                }
            });
            positions_in.for_each_stamp(|cap, batches| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let buffer = pending_positions.entry(time).or_default();
                for batch in batches {
                    buffer.append(batch);
                }
            });
            writer.borrow_mut().poll();
            if state.borrow().error.is_some() {
                return;
            }
            let frontier = frontiers
                .iter()
                .map(|f| f.frontier().iter().copied().min().unwrap_or(u64::MAX))
                .min()
                .unwrap_or(u64::MAX);
            let due = frontier == u64::MAX || last_commit.elapsed() >= config.commit_interval;
            if frontier > committed && due {
                let mut w = writer.borrow_mut();
                while let Some(entry) = pending.first_entry() {
                    if *entry.key() >= frontier {
                        break;
                    }
                    let mut records = entry.remove();
                    records.sort_unstable();
                    for r in &records {
                        w.write(r);
                    }
                }
                while let Some(entry) = pending_positions.first_entry() {
                    if *entry.key() >= frontier {
                        break;
                    }
                    for p in entry.remove() {
                        let slot = latest.entry(p.partition).or_insert(p);
                        if p.offset > slot.offset {
                            *slot = p;
                        }
                    }
                }
                let progress = Progress {
                    frontier,
                    positions: latest.clone(),
                    ..config.template.clone()
                };
                match w.commit(&progress) {
                    Ok(()) => {
                        tracing::debug!(worker = config.template.worker, frontier, "committed");
                        committed = frontier;
                        last_commit = Instant::now();
                        state.borrow_mut().committed = frontier;
                    }
                    Err(e) => {
                        state.borrow_mut().error = Some(e);
                        return;
                    }
                }
            }
            if committed == u64::MAX {
                state.borrow_mut().complete = true;
            } else if frontier > committed {
                activator
                    .activate_after(config.commit_interval.saturating_sub(last_commit.elapsed()));
            }
        }
    });
}
