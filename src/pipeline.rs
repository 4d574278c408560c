//! A dataflow spec → timely operators, for one worker.
//!
//! ```text
//!  source ──Ok(event, wm)──► window[0] ─┐
//!    │                  └──► window[1] ─┤ (exchanged by key)
//!    └──Err(dead letter | late record)──┴──► sink (exchanged by topic partition) ──► writer
//! ```
//!
//! The reader and writer are parameters, so the same dataflow runs on Kafka in production
//! and on in-memory partitions in the reference tests.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::core::OkErr;
use timely::worker::Worker;

use crate::metrics::Metrics;
use crate::output::{OutRecord, Topics};
use crate::sink::memory::MemoryWriter;
use crate::sink::{self, SinkState, Writer};
use crate::source::memory::{MemoryReader, Payloads};
use crate::source::{self, Reader, SourceControl};
use crate::spec::PipelineSpec;
use crate::window::operator::windows;

/// Builds the dataflow on `worker`; returns the state the worker loop watches.
pub fn build<R: Reader + 'static, W: Writer + 'static>(
    worker: &mut Worker,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    reader: R,
    writer: Rc<RefCell<W>>,
    control: SourceControl,
    metrics: Metrics,
) -> Rc<RefCell<SinkState>> {
    let state = Rc::new(RefCell::new(SinkState::default()));
    let sink_state = Rc::clone(&state);
    let worker_index = worker.index();
    worker.dataflow::<u64, _, _>(move |scope| {
        let items = source::kafka_like_source(
            scope,
            worker_index,
            Rc::clone(&spec),
            Rc::clone(&topics),
            reader,
            control,
            metrics.clone(),
        );
        let (events, side) = items.ok_err::<Vec<_>, _, Vec<OutRecord>, _, _>(|item| item);
        let mut outputs = vec![side];
        for index in 0..spec.windows.len() {
            outputs.push(windows(
                events.clone(),
                Rc::clone(&spec),
                index,
                Rc::clone(&topics),
                metrics.clone(),
            ));
        }
        let all = scope.concatenate(outputs);
        sink::sink(all, writer, sink_state);
    });
    state
}

/// Runs `spec` to completion over in-memory partitions with `workers` threads and returns
/// everything the sinks wrote, in write order per worker. Partition `p` is read by worker
/// `p % workers`, `chunk` records at a time per partition. For tests and benchmarks.
pub fn run_in_memory(
    spec: &PipelineSpec,
    topics: &Topics,
    partitions: Vec<(i32, Payloads)>,
    workers: usize,
    chunk: usize,
) -> Result<Vec<OutRecord>, String> {
    let written = MemoryWriter::default();
    let (spec, topics, out) = (spec.clone(), topics.clone(), written.clone());
    let results = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = partitions
            .iter()
            .filter(|(p, _)| *p as usize % peers == index)
            .cloned()
            .collect();
        let state = build(
            worker,
            Rc::new(spec.clone()),
            Rc::new(topics.clone()),
            MemoryReader::new(mine, chunk),
            Rc::new(RefCell::new(out.clone())),
            SourceControl::default(),
            Metrics::new(),
        );
        while worker.step_or_park(None) {}
        let s = state.borrow();
        match (&s.error, s.complete) {
            (Some(e), _) => Err(e.clone()),
            (None, false) => Err("the sink never saw its input complete".to_string()),
            (None, true) => Ok(()),
        }
    })?
    .join();
    for r in results {
        r??;
    }
    let records = written
        .records
        .lock()
        .map_err(|_| "a writer panicked".to_string())?
        .clone();
    Ok(records)
}
