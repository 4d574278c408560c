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
use crate::sink::{self, SinkState, Writer};
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
