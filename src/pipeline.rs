//! A dataflow spec → timely operators, for one worker.
//!
//! ```text
//!  source ──partial──► window[0] (tumbling, hopping) ─┐
//!    │   └──(event, wm)──► window[1] (session) ────────┤ (exchanged by key)
//!    └──dead letter | late record─────────────────────┴──► sink (exchanged by topic partition) ──► writer
//! ```
//!
//! The source sums its events per (window, key, start) into partials for tumbling and
//! hopping windows ([`crate::window::combine`]) and passes events on only for sessions.
//! With `[enrich]`, every event passes through the temporal join ([`crate::enrich`]) and is
//! combined after it, and the reference source's dead letters and notes join the sink's inputs.
//!
//! The reader and writer are parameters, so the same dataflow runs on Kafka in production
//! and on in-memory partitions in the reference tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Partition;
use timely::worker::Worker;

use crate::enrich::source::ReferenceInput;
use crate::metrics::Metrics;
use crate::output::{OutRecord, Topics};
use crate::progress::{self, Progress, Recovery, Replay};
use crate::sink::memory::{Committed, MemoryWriter};
use crate::sink::{self, SinkConfig, SinkState, Writer};
use crate::source::memory::{KeyedRecord, MemoryReader, Payloads};
use crate::source::{self, Accepted, Reader, SourceControl};
use crate::spec::PipelineSpec;
use crate::spec::WindowKind;
use crate::window::combine::combine;
use crate::window::operator::windows;
use crate::window::session::sessions;

/// Builds the dataflow on `worker`; returns the state the worker loop watches.
/// `reference` reads the worker's reference partitions when the spec has `[enrich]`.
#[allow(clippy::too_many_arguments)]
pub fn build<R: Reader + 'static, W: Writer + 'static>(
    worker: &mut Worker,
    spec: Rc<PipelineSpec>,
    topics: Rc<Topics>,
    reader: R,
    replay: BTreeMap<i32, Replay>,
    writer: Rc<RefCell<W>>,
    sink_config: SinkConfig,
    control: SourceControl,
    metrics: Metrics,
    reference: Option<ReferenceInput>,
) -> Rc<RefCell<SinkState>> {
    let state = Rc::new(RefCell::new(SinkState::default()));
    let sink_state = Rc::clone(&state);
    let worker_index = worker.index();
    let prompt = sink::Prompt::new(&spec);
    worker.dataflow::<u64, _, _>(move |scope| {
        let (items, positions) = source::kafka_like_source(
            scope,
            worker_index,
            Rc::clone(&spec),
            Rc::clone(&topics),
            reader,
            replay,
            control,
            metrics.clone(),
            Rc::clone(&prompt.caught_up),
        );
        let (accepted, side) = items.ok_err::<Vec<_>, _, Vec<OutRecord>, _, _>(|item| item);
        // The Result lives only inside the closure: boxing the event would allocate per event.
        #[allow(clippy::result_large_err)]
        let (partials, events) = accepted.ok_err::<Vec<_>, _, Vec<_>, _, _>(|item| match item {
            Accepted::Partial(p) => Ok(p),
            Accepted::Event(event, wm) => Err((event, wm)),
        });
        let mut outputs = vec![side];
        let (partials, events, positions) = match &spec.enrich {
            None => (partials, events, positions),
            Some(_) => {
                let input = reference.unwrap_or_else(|| ReferenceInput {
                    reader: Box::new(MemoryReader::new(Vec::new(), 1)),
                    resume: BTreeMap::new(),
                    replay: BTreeMap::new(),
                });
                let (versions, letters, notes) = crate::enrich::source::reference_source(
                    scope,
                    Rc::clone(&spec),
                    Rc::clone(&topics),
                    input,
                    positions.clone(),
                    metrics.clone(),
                );
                let joined = crate::enrich::join::temporal_join(
                    events,
                    versions,
                    Rc::clone(&spec),
                    Rc::clone(&topics),
                    metrics.clone(),
                );
                let (events, missing) =
                    joined.ok_err::<Vec<_>, _, Vec<OutRecord>, _, _>(|item| item);
                outputs.push(letters);
                outputs.push(missing);
                // The source passed every event on whole: the join needs them one by one.
                let partials = combine(events.clone(), Rc::clone(&spec));
                (partials, events, scope.concatenate([positions, notes]))
            }
        };
        // Each window's partials go to its own operator: each crosses the exchange once.
        let partials = partials.partition(spec.windows.len() as u64, |p| (p.window as u64, p));
        for (index, own) in partials.into_iter().enumerate() {
            outputs.push(match spec.windows[index].kind {
                WindowKind::Session { .. } => sessions(
                    events.clone(),
                    Rc::clone(&spec),
                    index,
                    Rc::clone(&topics),
                    metrics.clone(),
                ),
                _ => windows(
                    own,
                    Rc::clone(&spec),
                    index,
                    Rc::clone(&topics),
                    metrics.clone(),
                ),
            });
        }
        let all = scope.concatenate(outputs);
        sink::sink(
            all,
            positions,
            writer,
            sink_state,
            sink_config,
            prompt,
            metrics,
        );
    });
    state
}

/// How [`run_in_memory_with`] runs.
#[derive(Clone, Debug)]
pub struct MemoryRun {
    /// Worker threads; partition `p` is read by worker `p % workers`.
    pub workers: usize,
    /// Records read per partition at a time.
    pub chunk: usize,
    /// What to resume from.
    pub recovery: Recovery,
    /// Make every worker's commits fail after this many, like a crash.
    pub fail_after_commits: Option<usize>,
    /// Commit interval.
    pub commit_interval: Duration,
    /// Partitions that go quiet: (partition, at offset, for how long).
    pub stalls: Vec<(i32, usize, Duration)>,
}

/// The reference partitions of an in-memory run ([`run_in_memory_enriched`]).
#[derive(Clone, Debug, Default)]
pub struct ReferenceRun {
    /// Reference partitions: (partition, records in offset order).
    pub partitions: Vec<(i32, Vec<KeyedRecord>)>,
    /// Reference partitions that go quiet: (partition, at offset, for how long).
    pub stalls: Vec<(i32, usize, Duration)>,
}

/// A worker's reference input: `reader` (its reference partitions, from their beginning),
/// resuming as `recovery` says (reference partitions are recorded under
/// [`crate::enrich::note_partition`]).
pub fn reference_input(reader: Box<dyn Reader>, recovery: &Recovery) -> ReferenceInput {
    use crate::enrich::reference_partition;
    ReferenceInput {
        reader,
        resume: recovery
            .positions
            .iter()
            .filter_map(|(p, pos)| reference_partition(*p).map(|r| (r, *pos)))
            .collect(),
        replay: recovery
            .replay
            .iter()
            .filter_map(|(p, r)| reference_partition(*p).map(|q| (q, r.clone())))
            .collect(),
    }
}

/// Runs `spec` over in-memory partitions until it completes or a commit fails; returns
/// what was committed (also on failure, into `committed`). For tests and benchmarks.
pub fn run_in_memory_with(
    spec: &PipelineSpec,
    topics: &Topics,
    partitions: Vec<(i32, Payloads)>,
    run: &MemoryRun,
    committed: Arc<Mutex<Committed>>,
) -> Result<(), String> {
    let reference = ReferenceRun::default();
    run_in_memory_enriched(spec, topics, partitions, &reference, run, committed)
}

/// [`run_in_memory_with`], with reference partitions for `[enrich]`: reference partition
/// `r` is read by worker `r % workers`.
pub fn run_in_memory_enriched(
    spec: &PipelineSpec,
    topics: &Topics,
    partitions: Vec<(i32, Payloads)>,
    reference: &ReferenceRun,
    run: &MemoryRun,
    committed: Arc<Mutex<Committed>>,
) -> Result<(), String> {
    let (spec, topics, run) = (spec.clone(), topics.clone(), run.clone());
    let reference = reference.clone();
    let fingerprint = progress::fingerprint(&spec);
    // One worker failing stops them all, as a crashed process would.
    let abort = Arc::new(AtomicBool::new(false));
    let results = timely::execute(timely::Config::process(run.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let _span = tracing::info_span!("worker", dataflow = %spec.name, worker = index).entered();
        let mine = partitions
            .iter()
            .filter(|(p, _)| *p as usize % peers == index)
            .cloned()
            .collect();
        let writer = MemoryWriter::new(Arc::clone(&committed), run.fail_after_commits);
        let mut reader = MemoryReader::new(mine, run.chunk);
        for (partition, offset, pause) in &run.stalls {
            reader = reader.stall(*partition, *offset, *pause);
        }
        let mut reference_reader = MemoryReader::keyed(
            reference
                .partitions
                .iter()
                .filter(|(p, _)| *p as usize % peers == index)
                .cloned()
                .collect(),
            run.chunk,
        );
        for (partition, offset, pause) in &reference.stalls {
            reference_reader = reference_reader.stall(*partition, *offset, *pause);
        }
        let reference_input = reference_input(Box::new(reference_reader), &run.recovery);
        let sink_config = SinkConfig {
            template: Progress {
                dataflow: spec.name.clone(),
                fingerprint: fingerprint.clone(),
                worker: index,
                workers: peers,
                ..Progress::default()
            },
            recovered_frontiers: run.recovery.frontiers.clone(),
            commit_interval: run.commit_interval,
        };
        let state = build(
            worker,
            Rc::new(spec.clone()),
            Rc::new(topics.clone()),
            reader.resume(&run.recovery.positions),
            run.recovery.replay.clone(),
            Rc::new(RefCell::new(writer)),
            sink_config,
            SourceControl::default(),
            Metrics::new(&spec.name),
            Some(reference_input),
        );
        loop {
            let failure = state.borrow_mut().error.take();
            if let Some(e) = &failure {
                abort.store(true, Ordering::SeqCst);
                tracing::debug!(error = %e, "stopping");
            }
            if failure.is_some() || abort.load(Ordering::SeqCst) {
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
                return Err(failure.unwrap_or_else(|| "another worker failed".into()));
            }
            if !worker.step_or_park(Some(Duration::from_millis(1))) {
                break;
            }
        }
        match state.borrow().complete {
            true => Ok(()),
            false => Err("the sink never saw its input complete".to_string()),
        }
    })?
    .join();
    let mut first = None;
    for r in results {
        if let Err(e) = r.and_then(|r| r) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Runs `spec` to completion over in-memory partitions with `workers` threads, committing
/// every millisecond, and returns everything committed. Partition `p` is read by worker
/// `p % workers`, `chunk` records at a time per partition. For tests and benchmarks.
pub fn run_in_memory(
    spec: &PipelineSpec,
    topics: &Topics,
    partitions: Vec<(i32, Payloads)>,
    workers: usize,
    chunk: usize,
) -> Result<Vec<OutRecord>, String> {
    let committed = Arc::new(Mutex::new(Committed::default()));
    let run = MemoryRun {
        workers,
        chunk,
        recovery: Recovery::fresh(workers),
        fail_after_commits: None,
        commit_interval: Duration::from_millis(1),
        stalls: Vec::new(),
    };
    run_in_memory_with(spec, topics, partitions, &run, Arc::clone(&committed))?;
    let records = std::mem::take(
        &mut committed
            .lock()
            .map_err(|_| "a writer panicked".to_string())?
            .records,
    );
    Ok(records)
}
