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
//! While the run is live (see [`Prompt`]), the outputs below F are written as soon as no
//! commit is in flight, into the commit being filled, rather than when it starts: each
//! commit then has only its last few outputs to flush.
//!
//! Each (topic, partition) is written by exactly one worker, so its order does not depend on
//! scheduling. Outputs below the frontier this worker committed in an earlier run were
//! committed then and are dropped; see [`crate::progress`] for why that is exactly right.
//!
//! After each commit a sink tells the others its frontier (through a feedback loop that
//! holds nothing back), so that each knows the least frontier any worker has committed:
//! idle moves below that worker's restart positions can no longer be needed.

pub mod kafka;
pub mod memory;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback};
use timely::progress::Antichain;

use crate::metrics::{Metrics, Stage};
use crate::output::OutRecord;
use crate::progress::{Note, Position, Progress, WatermarkMove};
use crate::spec::{PipelineSpec, WindowSpec};

/// Where output records go.
pub trait Writer {
    /// Writes one record as part of the current commit.
    fn write(&mut self, record: &OutRecord);
    /// Gives background work a chance to run (delivery reports); cheap.
    fn poll(&mut self) {}
    /// Makes everything written since the last commit durable, together with `progress`,
    /// or fails; waits until it is done.
    fn commit(&mut self, progress: &Progress) -> Result<(), String>;
    /// Starts [`Writer::commit`] without waiting for it; [`Writer::finish_commit`] reports
    /// the outcome. Nothing is written in between. A writer that commits at once does so
    /// here.
    fn start_commit(&mut self, progress: &Progress) -> Result<(), String> {
        self.commit(progress)
    }
    /// The outcome of the commit [`Writer::start_commit`] started, once it is known;
    /// `None` while it runs.
    fn finish_commit(&mut self) -> Option<Result<(), String>> {
        Some(Ok(()))
    }
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
    /// Each worker's committed frontier when the run started; outputs below this worker's
    /// were committed by an earlier run.
    pub recovered_frontiers: Vec<u64>,
    /// How often to commit.
    pub commit_interval: Duration,
}

impl SinkConfig {
    /// The frontier this worker committed before the run.
    pub fn recovered_frontier(&self) -> u64 {
        self.recovered_frontiers
            .get(self.template.worker)
            .copied()
            .unwrap_or(0)
    }
}

/// What a sink has learnt from the sources' notes, up to its frontier.
#[derive(Default)]
struct Notes {
    /// The latest restart position of each partition.
    latest: BTreeMap<i32, Position>,
    /// Earlier positions, with the time each was sent at, back to the one valid for the
    /// least frontier any worker committed.
    history: BTreeMap<i32, VecDeque<(u64, Position)>>,
    /// Idle moves: partition → offset → watermark.
    idle: BTreeMap<i32, BTreeMap<i64, u64>>,
    /// The latest move of each partition.
    passed: BTreeMap<i32, WatermarkMove>,
}

impl Notes {
    fn absorb(&mut self, time: u64, note: Note) {
        match note {
            Note::Position(p) => {
                let slot = self.latest.entry(p.partition).or_insert(p);
                if p.offset > slot.offset {
                    *slot = p;
                }
                self.history
                    .entry(p.partition)
                    .or_default()
                    .push_back((time, p));
            }
            Note::Moved { to, idle } => {
                self.passed.insert(to.partition, to);
                if idle {
                    let slot = self
                        .idle
                        .entry(to.partition)
                        .or_default()
                        .entry(to.offset)
                        .or_insert(to.watermark);
                    *slot = (*slot).max(to.watermark);
                }
            }
        }
    }

    /// Forgets what no worker can resume from: positions superseded below `least` (the
    /// least committed frontier), and idle moves before the position valid there.
    fn prune(&mut self, least: u64) {
        for (partition, history) in self.history.iter_mut() {
            while history.len() > 1 && history[1].0 < least {
                history.pop_front();
            }
            let Some((time, oldest)) = history.front() else {
                continue;
            };
            if *time < least
                && let Some(moves) = self.idle.get_mut(partition)
            {
                moves.retain(|offset, _| *offset >= oldest.offset);
            }
        }
    }

    fn idle_moves(&self) -> Vec<WatermarkMove> {
        self.idle
            .iter()
            .flat_map(|(partition, moves)| {
                moves.iter().map(|(offset, watermark)| WatermarkMove {
                    partition: *partition,
                    offset: *offset,
                    watermark: *watermark,
                })
            })
            .collect()
    }
}

/// How often a sink looks whether the commit it started has finished.
const COMMIT_POLL: Duration = Duration::from_millis(1);

/// Outputs written to the commit being filled, per event time: how many, when the first
/// of them reached the sink and when the frontier passed them (for the stage latencies,
/// observed when the commit starts), and the append times of their inputs.
#[derive(Default)]
struct Open {
    times: Vec<(u64, u64, Instant, Instant)>,
    appended: Vec<u64>,
}

impl Open {
    /// Writes the outputs in `pending` below `frontier` to `writer`, in timestamp order
    /// (sorted within a time); `now` stands in for an arrival or a passing not seen.
    fn write_final<W: Writer>(
        &mut self,
        writer: &mut W,
        pending: &mut BTreeMap<u64, Vec<OutRecord>>,
        arrived: &mut BTreeMap<u64, (Instant, Option<Instant>)>,
        frontier: u64,
        now: Instant,
    ) {
        while let Some(entry) = pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let time = *entry.key();
            let mut records = entry.remove();
            let (reached, ready) = arrived.remove(&time).unwrap_or((now, None));
            records.sort_unstable();
            for r in &records {
                writer.write(r);
                if r.appended_ms > 0 {
                    self.appended.push(r.appended_ms);
                }
            }
            self.times
                .push((time, records.len() as u64, reached, ready.unwrap_or(now)));
        }
    }
}

/// A commit the writer runs while the sink goes on buffering.
struct InFlight {
    /// The frontier it commits.
    frontier: u64,
    /// (event time, records) it writes, for the latency metric.
    written: Vec<(u64, u64)>,
    /// The append times of their inputs.
    appended: Vec<u64>,
    started: Instant,
}

/// Prompt commits of final window results. A tumbling or hopping window's results are
/// final when the frontier passes their close, end + grace; with a 200 ms commit interval
/// they would then wait up to 200 ms more for the next commit. While the run is live (its
/// worker's source read to the end of a partition within [`LIVE_FOR`]), a commit starts
/// as soon as such results are final, once 1/[`PROMPT_GAP`] of the commit interval has
/// passed since the last commit ended. A backfill, which closes windows all the time,
/// keeps the interval: there prompt commits would run back to back and cost throughput.
/// Session windows close at data-dependent times and keep the interval too.
pub struct Prompt {
    /// The tumbling and hopping windows.
    windows: Vec<WindowSpec>,
    /// When this worker's source last read to the end of one of its partitions.
    pub caught_up: Rc<Cell<Option<Instant>>>,
}

/// How recently the source must have caught up for the run to count as live.
const LIVE_FOR: Duration = Duration::from_secs(1);
/// The least gap after a commit before a prompt one: the commit interval divided by this.
const PROMPT_GAP: u32 = 4;

impl Prompt {
    /// The windows of `spec` whose closes are known in advance.
    pub fn new(spec: &PipelineSpec) -> Prompt {
        Prompt {
            windows: spec
                .windows
                .iter()
                .filter(|w| crate::window::is_close(w, 0).is_some())
                .cloned()
                .collect(),
            caught_up: Rc::new(Cell::new(None)),
        }
    }

    /// Whether `t` is the close of a tumbling or hopping window.
    fn is_close(&self, t: u64) -> bool {
        self.windows
            .iter()
            .any(|w| crate::window::is_close(w, t) == Some(true))
    }

    /// Whether the source caught up within [`LIVE_FOR`] of `now`.
    fn live(&self, now: Instant) -> bool {
        is_live(&self.caught_up, now)
    }
}

/// Whether a source that last caught up at `caught_up` counts as live at `now`.
fn is_live(caught_up: &Cell<Option<Instant>>, now: Instant) -> bool {
    caught_up
        .get()
        .is_some_and(|t| now.saturating_duration_since(t) < LIVE_FOR)
}

/// Routes a record to the worker owning its topic partition.
pub fn route(record: &OutRecord) -> u64 {
    (u64::from(record.topic) << 32) | u64::from(record.partition as u32)
}

/// Builds the sink operator.
pub fn sink<'s, W: Writer + 'static>(
    outputs: StreamVec<'s, u64, OutRecord>,
    notes: StreamVec<'s, u64, Note>,
    writer: Rc<RefCell<W>>,
    state: Rc<RefCell<SinkState>>,
    config: SinkConfig,
    prompt: Prompt,
    metrics: Metrics,
) {
    let scope = outputs.scope();
    let (loop_handle, loop_stream) = scope.feedback::<Vec<(usize, u64)>>(1);
    let mut builder = OperatorBuilder::new("KafkaSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let mut outputs_in = builder.new_input(outputs, Exchange::new(route));
    let mut notes_in = builder.new_input(notes.broadcast(), Pipeline);
    let unconnected: Vec<(usize, Antichain<u64>)> = Vec::new();
    let (commits_out, commits_stream) =
        builder.new_output_connection::<Vec<(usize, u64)>, _>(unconnected.clone());
    let mut heard = builder.new_input_connection(loop_stream, Pipeline, unconnected);
    let mut commits_out =
        OutputBuilder::<u64, CapacityContainerBuilder<Vec<(usize, u64)>>>::from(commits_out);
    let recovered = config.recovered_frontier();
    let me = config.template.worker;
    state.borrow_mut().committed = recovered;

    builder.build(move |mut capabilities| {
        let mut commits_cap = capabilities.pop();
        let mut pending: BTreeMap<u64, Vec<OutRecord>> = BTreeMap::new();
        let mut pending_notes: BTreeMap<u64, Vec<Note>> = BTreeMap::new();
        let mut known = Notes::default();
        let mut frontiers = config.recovered_frontiers.clone();
        let mut committed = recovered;
        // Commits start every commit interval, counted from the last one's start (a commit
        // that takes longer is followed at once); prompt ones wait a gap after the last
        // one's end, so that they never run back to back.
        let mut last_started = Instant::now();
        let mut last_ended = last_started;
        let mut in_flight: Option<InFlight> = None;
        // Per output time: when its first output reached the sink, and when the frontier
        // passed it; for `waterline_stage_latency_seconds`.
        let mut arrived: BTreeMap<u64, (Instant, Option<Instant>)> = BTreeMap::new();
        let stages = [Stage::Frontier, Stage::CommitWait].map(|s| metrics.stage(s).local());
        let prompt_gap = config.commit_interval / PROMPT_GAP;
        // The outputs written to the commit being filled. While the run is live, final
        // outputs are written as soon as no commit is in flight, not at the next commit's
        // start: that commit's flush then waits only for the last few, so it is shorter,
        // and every output is visible sooner by as much. A backfill writes them when the
        // commit starts, in one burst of large batches.
        let mut open = Open::default();
        let caught_up = Rc::clone(&prompt.caught_up);
        // Whether final results of a window wait, in `pending` or written to the commit
        // being filled, and the run is live.
        let prompt_now =
            move |pending: &BTreeMap<u64, Vec<OutRecord>>, open: &Open, frontier: u64| {
                !prompt.windows.is_empty()
                    && prompt.live(Instant::now())
                    && (open.times.iter().any(|(t, ..)| prompt.is_close(*t))
                        || pending.range(..frontier).any(|(t, _)| prompt.is_close(*t)))
            };
        move |input_frontiers| {
            let now = Instant::now();
            heard.for_each(|_cap, data| {
                for (worker, frontier) in data.drain(..) {
                    if let Some(f) = frontiers.get_mut(worker) {
                        *f = (*f).max(frontier);
                    }
                }
            });
            outputs_in.for_each_stamp(|cap, batches| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                if time < recovered {
                    return; // committed by an earlier run
                }
                arrived.entry(time).or_insert((now, None));
                let buffer = pending.entry(time).or_default();
                for batch in batches {
                    buffer.append(batch);
                }
            });
            notes_in.for_each_stamp(|cap, batches| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let buffer = pending_notes.entry(time).or_default();
                for batch in batches {
                    buffer.append(batch);
                }
            });
            writer.borrow_mut().poll();
            if state.borrow().error.is_some() {
                return;
            }
            // The frontier of the data inputs (the loop of commits never holds it back).
            let frontier = input_frontiers[..2]
                .iter()
                .map(|f| f.frontier().iter().copied().min().unwrap_or(u64::MAX))
                .min()
                .unwrap_or(u64::MAX);
            for (_, ready) in arrived.range_mut(..frontier).map(|(_, v)| v) {
                ready.get_or_insert(now);
            }
            loop {
                if let Some(commit) = in_flight.as_ref() {
                    let outcome = writer.borrow_mut().finish_commit();
                    match outcome {
                        None => break, // still running: outputs keep buffering meanwhile
                        Some(Ok(())) => {
                            metrics.committed(
                                me,
                                commit.started.elapsed(),
                                &commit.written,
                                &commit.appended,
                            );
                            tracing::debug!(frontier = commit.frontier, "committed");
                            committed = commit.frontier;
                            last_started = commit.started;
                            last_ended = Instant::now();
                            state.borrow_mut().committed = committed;
                            if let Some(cap) = commits_cap.as_mut() {
                                commits_out.activate().session(cap).give((me, committed));
                                if committed != u64::MAX {
                                    cap.downgrade(&committed);
                                }
                            }
                            in_flight = None;
                        }
                        Some(Err(e)) => {
                            metrics.commit_failed(me);
                            state.borrow_mut().error = Some(e);
                            return;
                        }
                    }
                }
                if frontier > committed && is_live(&caught_up, now) {
                    let mut w = writer.borrow_mut();
                    open.write_final(&mut *w, &mut pending, &mut arrived, frontier, now);
                }
                let due = frontier == u64::MAX
                    || last_started.elapsed() >= config.commit_interval
                    || (last_ended.elapsed() >= prompt_gap
                        && prompt_now(&pending, &open, frontier));
                if !(frontier > committed && due) {
                    break;
                }
                let mut w = writer.borrow_mut();
                let starting = Instant::now();
                open.write_final(&mut *w, &mut pending, &mut arrived, frontier, starting);
                let Open { times, appended } = std::mem::take(&mut open);
                // (event time, records) written in this commit, for the latency metric.
                let mut written: Vec<(u64, u64)> = Vec::with_capacity(times.len());
                for (time, records, reached, ready) in times {
                    let (to_final, to_start) = (
                        ready.saturating_duration_since(reached).as_secs_f64(),
                        starting.saturating_duration_since(ready).as_secs_f64(),
                    );
                    for _ in 0..records {
                        stages[0].observe(to_final);
                        stages[1].observe(to_start);
                    }
                    written.push((time, records));
                }
                while let Some(entry) = pending_notes.first_entry() {
                    if *entry.key() >= frontier {
                        break;
                    }
                    let time = *entry.key();
                    for note in entry.remove() {
                        known.absorb(time, note);
                    }
                }
                if let Some(f) = frontiers.get_mut(me) {
                    *f = committed;
                }
                known.prune(frontiers.iter().copied().min().unwrap_or(0));
                let progress = Progress {
                    frontier,
                    positions: known.latest.clone(),
                    idle_moves: known.idle_moves(),
                    passed: known.passed.clone(),
                    ..config.template.clone()
                };
                stages[0].flush();
                stages[1].flush();
                let started = Instant::now();
                if let Err(e) = w.start_commit(&progress) {
                    metrics.commit_failed(me);
                    state.borrow_mut().error = Some(e);
                    return;
                }
                in_flight = Some(InFlight {
                    frontier,
                    written,
                    appended,
                    started,
                });
            }
            metrics.commit_due(me, frontier > committed);
            if committed == u64::MAX {
                commits_cap = None;
                state.borrow_mut().complete = true;
            } else if in_flight.is_some() {
                activator.activate_after(COMMIT_POLL);
            } else if frontier > committed {
                let regular = config
                    .commit_interval
                    .saturating_sub(last_started.elapsed());
                let wait = if prompt_now(&pending, &open, frontier) {
                    regular.min(prompt_gap.saturating_sub(last_ended.elapsed()))
                } else {
                    regular
                };
                activator.activate_after(wait);
            }
        }
    });
    commits_stream.broadcast().connect_loop(loop_handle);
}
