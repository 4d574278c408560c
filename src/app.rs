//! Running a dataflow on Kafka: start-up checks, topic set-up, the timely workers and
//! their loop, and a clean stop.
//!
//! Start-up fails fast, with a message that names the problem, when the dataflow or
//! config is wrong, the broker is unreachable, or the input topic is missing. Each worker
//! then reads its partitions (`p % W`), and its loop steps the dataflow until it is complete
//! (bounded runs), a stop was requested (SIGINT/SIGTERM: flush what was written and exit;
//! open windows are not emitted half-done), or a worker failed.
//!
//! A job of several processes ([`crate::cluster`]) runs the same start-up in each, with
//! three differences: each fences only its own workers, all wait for each other after
//! fencing, and process 0 alone reads the progress and resolves the offsets (the
//! [`Plan`]), which it sends to the others.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::{self, ClusterError, Mesh};
use crate::config::Config;
use crate::kafka::{self, KafkaSetupError, MAX_MESSAGE_BYTES, TopicRequest};
use crate::metrics::Metrics;
use crate::output::Topics;
use crate::pipeline;
use crate::progress::{self, Position, Progress, Recovery};
use crate::replay::{StartAt, StopAt};
use crate::sink::kafka::{KafkaWriter, PreparedProducer};
use crate::sink::{SinkConfig, Writer};
use crate::source::SourceControl;
use crate::source::kafka::KafkaReader;
use crate::spec::{PipelineSpec, StartFrom};
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// timely could not start its workers.
    #[error("cannot start the workers: {0}")]
    Start(String),
    /// Committed progress cannot be resumed by this run.
    #[error("cannot resume: {0}")]
    Recovery(String),
    /// Another process of the job failed, was lost, or could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A worker failed while running.
    #[error("worker {worker} failed: {message}")]
    Worker {
        /// Worker index.
        worker: usize,
        /// What went wrong.
        message: String,
    },
}

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Worker threads in this process.
    pub workers: usize,
    /// This process's place in a job of several processes; `None`: the job is this
    /// process alone.
    pub cluster: Option<cluster::Layout>,
    /// Start here instead of the recorded positions or the dataflow's `start_from`.
    pub from: Option<StartAt>,
    /// Stop here: close every window, commit and exit (a bounded run).
    pub until: Option<StopAt>,
    /// Discard the recorded positions (outputs committed before are still not written
    /// again).
    pub reset: bool,
    /// How many workers have committed their starting positions (set by the run).
    pub started: Arc<std::sync::atomic::AtomicUsize>,
    /// The offsets `until` resolved to (set by the run), so that a restart stops at the
    /// same place.
    pub resolved_until: Arc<std::sync::Mutex<Option<BTreeMap<i32, i64>>>>,
    /// Records a bounded run has to read (set by the run once it has resolved where each
    /// partition starts and ends: the sum of end − start; 0 until then, for unbounded runs,
    /// and again from a failure until the restart has planned anew). For progress display.
    pub planned: Arc<AtomicU64>,
    /// Drain requests.
    pub control: SourceControl,
    /// Set to stop (flush and exit, leaving open windows).
    pub shutdown: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Metrics,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every window closed and every output was flushed.
    Completed,
    /// Stopped on request; outputs written so far were flushed.
    Stopped,
}

impl RunError {
    /// Whether running again from the committed progress can succeed: the broker was
    /// unreachable, a commit failed or timed out, a transaction was aborted. Not: a bad
    /// dataflow, config or flag, a missing topic, progress this run cannot resume, or a
    /// newer instance of the job that fenced this one.
    pub fn is_retriable(&self) -> bool {
        use rdkafka::error::KafkaError;
        match self {
            RunError::Kafka(KafkaSetupError::Client { source, .. }) => !matches!(
                source,
                KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..)
            ),
            RunError::Kafka(
                KafkaSetupError::MissingTopic(..) | KafkaSetupError::MissingOtherTopic { .. },
            ) => false,
            RunError::Start(_) | RunError::Recovery(_) => false,
            RunError::Cluster(e) => e.is_retriable(),
            RunError::Worker { message, .. } => {
                !(message.contains("fenced") || message.contains("cannot create the Kafka"))
            }
        }
    }
}

/// The first pause before running again after a retriable failure; it doubles on each
/// failure in a row, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long before failing starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `spec` like [`run`], and when a run fails in a way that running again can fix
/// (see [`RunError::is_retriable`]), runs it again from the committed progress after a
/// pause that doubles from 1 s to 30 s (Flink's exponential-delay restart strategy). A
/// restart is exactly a crash recovery, without losing the process. A stop request during
/// the pause stops at once.
pub fn run_with_restarts(
    spec: PipelineSpec,
    config: Config,
    mut options: RunOptions,
) -> Result<Outcome, RunError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = std::time::Instant::now();
        options.started.store(0, Ordering::SeqCst);
        let error = match run(spec.clone(), config.clone(), options.clone()) {
            Ok(outcome) => return Ok(outcome),
            Err(e) if !e.is_retriable() => return Err(e),
            Err(e) => e,
        };
        if options.shutdown.load(Ordering::Relaxed) {
            return Ok(Outcome::Stopped);
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        options.metrics.restarts.inc();
        // The restart plans what is left from its committed positions.
        options.planned.store(0, Ordering::Relaxed);
        tracing::warn!(dataflow = %spec.name, error = %error, delay = ?backoff, "run failed; restarting from the committed progress");
        let until = std::time::Instant::now() + backoff;
        while std::time::Instant::now() < until {
            if options.shutdown.load(Ordering::Relaxed) {
                return Ok(Outcome::Stopped);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // Once every worker has committed where it starts, a restart resumes from there:
        // `--from` must not move it again.
        if options.started.load(Ordering::SeqCst) >= options.workers {
            options.from = None;
            options.reset = false;
        }
        if let Some(ends) = options.resolved_until.lock().ok().and_then(|e| e.clone()) {
            options.until = Some(StopAt::Offsets(ends));
        }
    }
}

/// Runs `spec` against the Kafka cluster of `config`: in this process alone, or as one
/// process of the job `options.cluster` describes, after meeting the others.
pub fn run(spec: PipelineSpec, config: Config, options: RunOptions) -> Result<Outcome, RunError> {
    let Some(layout) = options.cluster.clone() else {
        return run_once(spec, config, options, None);
    };
    let hello = cluster::Hello {
        protocol: cluster::PROTOCOL,
        process: layout.process,
        processes: layout.processes,
        workers: options.workers,
        app_id: config.app_id.clone(),
        dataflow: spec.name.clone(),
        fingerprint: progress::fingerprint(&spec),
        hosts: layout.hosts.clone(),
        bounded: options.until.is_some(),
    };
    // Every line this process writes names its place in the job.
    let _span = tracing::info_span!("cluster", process = layout.process).entered();
    let mesh = match Mesh::join(&layout, hello, Arc::clone(&options.shutdown)) {
        Ok(mesh) => mesh,
        Err(ClusterError::Stopped) => return Ok(Outcome::Stopped),
        Err(e) => return Err(e.into()),
    };
    // A stop requested on any process stops every process.
    let run_options = RunOptions {
        shutdown: mesh.stop_flag(),
        ..options
    };
    let result = run_once(spec, config, run_options, Some(&mesh));
    // When a peer failed first, that is why this process stopped.
    let result = match (result, mesh.failure()) {
        (Err(RunError::Worker { message, .. }), Some(peer))
            if message.contains("another worker failed") =>
        {
            Err(peer.into())
        }
        (result, _) => result,
    };
    mesh.finish(
        result
            .as_ref()
            .err()
            .map(|e| (e.to_string(), e.is_retriable())),
    );
    match result {
        Err(RunError::Cluster(ClusterError::Stopped)) => Ok(Outcome::Stopped),
        result => result,
    }
}

/// Creates the missing output and progress topics (with `kafka.create_topics`) and waits
/// for them to appear. Returns the output topics' partition counts, and whether this call
/// created the progress topic.
fn set_up_topics(
    spec: &PipelineSpec,
    config: &Config,
    probe: &rdkafka::consumer::BaseConsumer,
    progress_topic: &str,
    timeout: Duration,
) -> Result<(BTreeMap<String, i32>, bool), KafkaSetupError> {
    let provisional = Topics::new(spec, |_| spec.output.partitions);
    // Only missing topics are asked for, all in one request: asking to create existing
    // ones costs a client and a round trip to the controller.
    let mut created = Vec::new();
    if config.create_topics {
        let max_bytes = MAX_MESSAGE_BYTES.to_string();
        let mut requests: Vec<TopicRequest> = provisional
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| TopicRequest {
                name,
                partitions: spec.output.partitions,
                config: if i as u16 == provisional.dead_letter {
                    vec![("max.message.bytes", max_bytes.as_str())]
                } else {
                    vec![]
                },
            })
            .collect();
        requests.push(TopicRequest {
            name: progress_topic,
            partitions: 1,
            // Only each worker's latest record matters.
            config: vec![("cleanup.policy", "compact")],
        });
        let mut missing = Vec::new();
        for request in requests {
            if kafka::partition_count(probe, request.name, timeout)?.is_none() {
                missing.push(request);
            }
        }
        if !missing.is_empty() {
            created = kafka::ensure_topics(config, &missing)?;
        }
    }
    // Topics just created can take a moment to appear in the metadata.
    let appear = if config.create_topics {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    let mut counts = std::collections::BTreeMap::new();
    for name in &provisional.names {
        match kafka::partition_count_after_create(probe, name, timeout, appear)? {
            Some(n) => {
                counts.insert(name.clone(), n);
            }
            None => {
                return Err(KafkaSetupError::MissingOtherTopic {
                    role: "output",
                    topic: name.clone(),
                    bootstrap: config.bootstrap_servers.clone(),
                    hint: "create it, or set kafka.create_topics = true",
                });
            }
        }
    }
    if kafka::partition_count_after_create(probe, progress_topic, timeout, appear)?.is_none() {
        return Err(KafkaSetupError::MissingOtherTopic {
            role: "progress",
            topic: progress_topic.to_string(),
            bootstrap: config.bootstrap_servers.clone(),
            hint: if config.create_topics {
                "it was created but did not appear in the broker's metadata within 30 s"
            } else {
                "create it compacted with one partition, or set kafka.create_topics = true"
            },
        });
    }
    // A progress topic this run created holds no progress: there is nothing to read.
    Ok((counts, created.iter().any(|t| t == progress_topic)))
}

/// What every process of a run starts from. Process 0 decides it for a job of several.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    recovery: Recovery,
    starts: BTreeMap<i32, Position>,
    ends: Option<BTreeMap<i32, i64>>,
    reference: Option<ReferenceTopic>,
}

fn run_once(
    mut spec: PipelineSpec,
    config: Config,
    options: RunOptions,
    mesh: Option<&Mesh>,
) -> Result<Outcome, RunError> {
    // Start-up lines name the dataflow; each worker enters a span of its own.
    let _span = tracing::info_span!("run", dataflow = %spec.name).entered();
    let bounded = options.until.is_some();
    if bounded {
        // In a bounded run every partition has data waiting until it reaches its end, so
        // none is idle: results then depend on the input alone, not on read speed.
        spec.input.idle_timeout = Duration::MAX;
    }
    let probe = kafka::metadata_consumer(&config)?;
    let timeout = Duration::from_secs(30);
    let input_partitions =
        kafka::partition_count(&probe, &spec.input.topic, timeout)?.ok_or_else(|| {
            KafkaSetupError::MissingTopic(
                spec.input.topic.clone(),
                config.bootstrap_servers.clone(),
            )
        })?;

    // Global worker indices: process I of a job runs workers I·N .. (I+1)·N.
    let first_worker = mesh.map_or(0, |m| m.process() * options.workers);
    let total_workers = options.workers * mesh.map_or(1, Mesh::processes);
    // This process's workers get their producers (exactly-once: fencing their earlier
    // incarnations) meanwhile: both the topics and the producers wait on the broker.
    let fencing = {
        let (config, metrics) = (config.clone(), options.metrics.clone());
        let (input, dataflow) = (spec.input.topic.clone(), spec.name.clone());
        let workers = first_worker..first_worker + options.workers;
        std::thread::spawn(move || {
            crate::sink::kafka::fence_workers(&config, workers, &input, &metrics, |w| {
                worker_span(&dataflow, w)
            })
        })
    };

    let progress_topic = progress::topic(&config.app_id);
    let set_up = set_up_topics(&spec, &config, &probe, &progress_topic, timeout);
    // Joined whatever the set-up's outcome, so that a retry never fences alongside it.
    let fenced = fencing.join().expect("the fencing thread does not panic");
    let (counts, progress_is_new) = set_up?;
    let topics = Topics::new(&spec, |name| counts.get(name).copied().unwrap_or(1));
    let fingerprint = progress::fingerprint(&spec);
    let prepared = std::sync::Mutex::new(fenced?.into_iter().collect::<BTreeMap<_, _>>());
    // No process may read the progress before every process has fenced its zombies.
    if let Some(m) = mesh {
        m.barrier("fenced")?;
    }
    let Plan {
        recovery,
        starts,
        ends,
        reference,
    } = match mesh {
        Some(m) if !m.is_leader() => m.receive_plan()?,
        _ => {
            let plan = plan(
                &spec,
                &config,
                &options,
                (total_workers, input_partitions),
                (&probe, &progress_topic, &fingerprint),
                progress_is_new,
            )?;
            if let Some(m) = mesh {
                m.share_plan(&plan)?;
            }
            plan
        }
    };
    if let (Some(ends), Ok(mut slot)) = (&ends, options.resolved_until.lock()) {
        *slot = Some(ends.clone());
    }
    if let Some(ends) = &ends {
        // What this process reads: the partitions of its workers.
        let mine = |p: &i32| {
            (first_worker..first_worker + options.workers).contains(&(*p as usize % total_workers))
        };
        let starts: BTreeMap<i32, Position> = starts
            .iter()
            .filter(|(p, _)| mine(p))
            .map(|(p, s)| (*p, *s))
            .collect();
        options
            .planned
            .store(planned_records(&starts, ends), Ordering::Relaxed);
    }
    drop(probe);
    let template = Progress {
        dataflow: spec.name.clone(),
        fingerprint,
        workers: total_workers,
        ..Progress::default()
    };
    tracing::info!(
        topic = %spec.input.topic,
        partitions = input_partitions,
        workers = options.workers,
        processes = mesh.map_or(1, Mesh::processes),
        process = mesh.map_or(0, Mesh::process),
        bounded,
        "starting"
    );

    let spec = Arc::new(spec);
    let config = Arc::new(config);
    let topics = Arc::new(topics);
    let prepared = Arc::new(prepared);
    let abort = mesh.map_or_else(|| Arc::new(AtomicBool::new(false)), Mesh::abort_flag);
    // With exactly-once, a job whose commits stall is not ready (see `Metrics::readiness`).
    let max_commit_delay = (config.guarantee == crate::config::Guarantee::ExactlyOnce)
        .then(|| config.commit_interval * config.ready_commit_intervals);
    options
        .metrics
        .run_started(options.workers, max_commit_delay);
    let work = {
        let options = options.clone();
        let abort = Arc::clone(&abort);
        move |worker: &mut timely::worker::Worker| {
            let _panic = AbortOnPanic(&abort);
            let result = run_worker(
                worker,
                &spec,
                &config,
                &topics,
                input_partitions,
                &options,
                &abort,
                (&recovery, &starts, &template, &progress_topic),
                ends.as_ref(),
                reference.as_ref(),
                &prepared,
            );
            if result.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            result
        }
    };
    let guards = match mesh {
        None => timely::execute(timely::Config::process(options.workers), work),
        Some(m) => m.execute(work),
    }
    .map_err(|e| {
        options.metrics.run_ended();
        RunError::Start(e)
    })?;

    let joined = guards.join();
    options.metrics.run_ended();
    let mut outcome = Outcome::Completed;
    let mut first_error = None;
    for (worker, joined) in joined.into_iter().enumerate() {
        let worker = first_worker + worker;
        match joined {
            Ok(Ok(Outcome::Stopped)) => outcome = Outcome::Stopped,
            Ok(Ok(Outcome::Completed)) => {}
            Ok(Err(message)) | Err(message) => {
                if first_error.is_none() || !message.contains("another worker failed") {
                    first_error = Some(RunError::Worker { worker, message });
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// Tells the other workers to stop when a worker's thread unwinds from a panic. They would
/// otherwise wait for its progress forever, and the process would hang instead of failing
/// (and restarting from the committed progress).
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads the committed progress and resolves where every partition starts and (bounded)
/// stops, once for the whole job.
fn plan(
    spec: &PipelineSpec,
    config: &Config,
    options: &RunOptions,
    (total_workers, input_partitions): (usize, i32),
    (probe, progress_topic, fingerprint): (&rdkafka::consumer::BaseConsumer, &str, &str),
    progress_is_new: bool,
) -> Result<Plan, RunError> {
    let timeout = Duration::from_secs(30);
    let records = if progress_is_new {
        BTreeMap::new()
    } else {
        progress::read(config, progress_topic)?
    };
    if !records.is_empty() && options.from.is_some() && !options.reset {
        return Err(RunError::Recovery(format!(
            "application `{}` has committed progress, which --from would override; add \
             --reset to discard its recorded positions (outputs it committed are still not \
             written again), or run under another app id",
            config.app_id
        )));
    }
    let mut recovery = Recovery::from_records(
        &records,
        total_workers,
        if options.reset {
            None
        } else {
            Some(fingerprint)
        },
    )
    .map_err(RunError::Recovery)?;
    if options.reset && !records.is_empty() {
        tracing::warn!(
            progress = %progress_topic,
            frontiers = ?recovery.frontiers,
            "--reset: recorded positions discarded; outputs below each worker's committed frontier are not written again"
        );
        recovery.positions.clear();
    }
    crate::fault::point("during-recovery");
    if !records.is_empty() && recovery.frontiers.iter().all(|f| *f == u64::MAX) {
        // Every window of this job was closed and committed: resuming would drop all new
        // output as already committed. Say so rather than write nothing.
        return Err(RunError::Recovery(format!(
            "application `{}` already completed (a bounded run closed every window and \
             committed it); run new input under another app id (WATERLINE_APP_ID or \
             `app_id` in the config)",
            config.app_id
        )));
    }
    if records.is_empty() {
        tracing::info!(progress = %progress_topic, "no committed progress: starting from `start_from`");
    } else {
        tracing::info!(
            progress = %progress_topic,
            frontiers = ?recovery.frontiers,
            positions = recovery.positions.len(),
            "resuming from committed progress"
        );
    }
    // Every partition's start and bound, resolved once to exact offsets.
    let topic = &spec.input.topic;
    let at_times = |t: i64| offsets_for_time(probe, topic, input_partitions, t, timeout);
    let from_time = match &options.from {
        Some(StartAt::Time(t)) => Some(at_times(*t)?),
        _ => None,
    };
    let mut starts = BTreeMap::new();
    for p in 0..input_partitions {
        let (low, high) = probe
            .fetch_watermarks(topic, p, timeout)
            .map_err(|source| KafkaSetupError::Client {
                what: format!("cannot read the offsets of {topic}/{p}"),
                source,
            })?;
        // Consumer lag is known from the start, before the client's first statistics.
        options.metrics.partition_end(topic, p, high);
        let default = match spec.input.start_from {
            StartFrom::Earliest => low,
            StartFrom::Latest => high,
        };
        let position = match (&options.from, recovery.positions.get(&p)) {
            (None, Some(position)) => *position,
            (None, None) => Position::start(p, default),
            (Some(StartAt::Earliest), _) => Position::start(p, low),
            (Some(StartAt::Latest), _) => Position::start(p, high),
            (Some(StartAt::Time(_)), _) => Position::start(
                p,
                from_time
                    .as_ref()
                    .and_then(|o| o.get(&p))
                    .copied()
                    .unwrap_or(high),
            ),
            (Some(StartAt::Offsets(given)), _) => match given.get(&p) {
                Some(o) if (low..=high).contains(o) => Position::start(p, *o),
                Some(o) => {
                    return Err(RunError::Recovery(format!(
                        "--from {p}:{o}: partition {p} of `{topic}` holds offsets {low}..{high}"
                    )));
                }
                None => Position::start(p, default),
            },
        };
        starts.insert(p, position);
    }
    if let Some(StartAt::Offsets(given)) = &options.from
        && let Some(p) = given.keys().find(|p| **p >= input_partitions)
    {
        return Err(RunError::Recovery(format!(
            "--from names partition {p}, but `{topic}` has {input_partitions} partitions"
        )));
    }
    let ends: Option<BTreeMap<i32, i64>> = match &options.until {
        None => None,
        Some(StopAt::End) => Some(high_watermarks(probe, topic, input_partitions, timeout)?),
        Some(StopAt::Time(t)) => {
            let mut ends = high_watermarks(probe, topic, input_partitions, timeout)?;
            ends.extend(at_times(*t)?);
            Some(ends)
        }
        Some(StopAt::Offsets(given)) => {
            if let Some(p) = given.keys().find(|p| **p >= input_partitions) {
                return Err(RunError::Recovery(format!(
                    "--until names partition {p}, but `{topic}` has {input_partitions} partitions"
                )));
            }
            let mut ends = high_watermarks(probe, topic, input_partitions, timeout)?;
            ends.extend(given.iter().map(|(p, o)| (*p, *o)));
            Some(ends)
        }
    };
    if options.from.is_some() || options.until.is_some() {
        tracing::info!(
            starts = ?starts.values().map(|s| (s.partition, s.offset)).collect::<Vec<_>>(),
            ends = ?ends,
            "replay: (partition, offset) to start from, and where to stop"
        );
    }
    // The reference topic ([enrich]): every partition is read from its beginning (see
    // `crate::enrich`); a bounded run reads it to the end it has now.
    let reference = match &spec.enrich {
        None => None,
        Some(e) => {
            let probe = kafka::metadata_consumer(config)?;
            let n = kafka::partition_count(&probe, &e.topic, timeout)?.ok_or_else(|| {
                KafkaSetupError::MissingOtherTopic {
                    role: "reference",
                    topic: e.topic.clone(),
                    bootstrap: config.bootstrap_servers.clone(),
                    hint: "create it (compacted), or check [enrich].topic",
                }
            })?;
            let ends = match &options.until {
                None => None,
                Some(_) => Some(high_watermarks(&probe, &e.topic, n, timeout)?),
            };
            Some((e.topic.clone(), n, ends))
        }
    };
    Ok(Plan {
        recovery,
        starts,
        ends,
        reference,
    })
}

/// Worker `index`'s span: every line it writes, and those of the clients it creates,
/// name it.
fn worker_span(dataflow: &str, index: usize) -> tracing::Span {
    tracing::info_span!(parent: None, "worker", dataflow = %dataflow, worker = index)
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: &Arc<PipelineSpec>,
    config: &Config,
    topics: &Arc<Topics>,
    input_partitions: i32,
    options: &RunOptions,
    abort: &AtomicBool,
    (recovery, starts, template, progress_topic): (
        &Recovery,
        &BTreeMap<i32, Position>,
        &Progress,
        &str,
    ),
    ends: Option<&BTreeMap<i32, i64>>,
    reference: Option<&ReferenceTopic>,
    prepared: &std::sync::Mutex<BTreeMap<usize, PreparedProducer>>,
) -> Result<Outcome, String> {
    let index = worker.index();
    let peers = worker.peers();
    let _span = worker_span(&spec.name, index).entered();
    let mine: Vec<Position> = (0..input_partitions)
        .filter(|p| *p as usize % peers == index)
        .filter_map(|p| starts.get(&p).copied())
        .collect();
    let spec = Rc::new(PipelineSpec::clone(spec));
    let topics = Rc::new(Topics::clone(topics));
    // Clients are created before the dataflow so that a failure here fails every worker
    // the same way (they share the config) instead of leaving peers waiting.
    let producer = prepared.lock().ok().and_then(|mut p| p.remove(&index));
    let writer = Rc::new(RefCell::new(match producer {
        Some(producer) => KafkaWriter::with_producer(
            config,
            producer,
            Rc::clone(&topics),
            progress_topic,
            index,
            options.metrics.clone(),
        ),
        None => KafkaWriter::new(
            config,
            Rc::clone(&topics),
            progress_topic,
            index,
            options.metrics.clone(),
        )
        .map_err(|e| e.to_string())?,
    }));
    // Before anything is read, the worker commits where it starts: a restart before its
    // first regular commit then resumes from the same offsets, even when they were
    // resolved from `latest` or a time, which mean other offsets later. The frontier and
    // the recorded idle moves are carried over unchanged.
    let mut positions = starts.clone();
    // Reference positions carry over too: a restart before the first regular commit must
    // find the same base.
    positions.extend(
        recovery
            .positions
            .iter()
            .filter(|(p, _)| crate::enrich::reference_partition(**p).is_some()),
    );
    let initial = Progress {
        worker: index,
        frontier: recovery.frontiers.get(index).copied().unwrap_or(0),
        positions,
        idle_moves: recovery.idle_moves(),
        passed: recovery.passed(),
        ..template.clone()
    };
    writer
        .borrow_mut()
        .commit(&initial)
        .map_err(|e| format!("cannot commit the starting positions: {e}"))?;
    options.started.fetch_add(1, Ordering::SeqCst);
    options.metrics.worker_assigned(index);
    // The reader comes after the producer: its partitions are assigned (and fetching
    // starts) only once the transactional producer is ready, which can take a while.
    let reader = KafkaReader::new(
        config,
        &spec.input.topic,
        &mine,
        ends,
        index,
        Some(options.metrics.clone()),
    )
    .map_err(|e| e.to_string())?;
    let reference = match reference {
        None => None,
        Some((topic, n, ref_ends)) => {
            let from_start: Vec<Position> = (0..*n)
                .filter(|r| *r as usize % peers == index)
                .map(|r| Position::start(r, 0))
                .collect();
            let reader =
                KafkaReader::new(config, topic, &from_start, ref_ends.as_ref(), index, None)
                    .map_err(|e| e.to_string())?;
            Some(pipeline::reference_input(Box::new(reader), recovery))
        }
    };
    let sink_config = SinkConfig {
        template: Progress {
            worker: index,
            ..template.clone()
        },
        recovered_frontiers: recovery.frontiers.clone(),
        commit_interval: config.commit_interval,
    };
    tracing::info!(
        topic = %spec.input.topic,
        partitions = ?mine.iter().map(|s| (s.partition, s.offset)).collect::<Vec<_>>(),
        "worker assigned (partition, offset)"
    );
    let state = pipeline::build(
        worker,
        spec,
        topics,
        reader,
        recovery.replay.clone(),
        Rc::clone(&writer),
        sink_config,
        options.control.clone(),
        options.metrics.clone(),
        reference,
    );
    loop {
        if options.shutdown.load(Ordering::Relaxed) {
            // What was committed stays; what was written since is abandoned and will be
            // produced again by the next run.
            writer.borrow_mut().abort();
            // timely steps every installed dataflow to completion after this closure
            // returns; a stop must not wait for (or emit) windows still open.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            tracing::info!(committed = state.borrow().committed, "stopped on request");
            return Ok(Outcome::Stopped);
        }
        let failure = if abort.load(Ordering::Relaxed) {
            Some("stopping: another worker failed".to_string())
        } else {
            state.borrow_mut().error.take()
        };
        if let Some(e) = failure {
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            return Err(e);
        }
        if !worker.step_or_park(Some(Duration::from_millis(50))) {
            break;
        }
    }
    if let Some(e) = state.borrow_mut().error.take() {
        return Err(e);
    }
    if !state.borrow().complete {
        return Err("the dataflow ended before its sink committed everything".into());
    }
    Ok(Outcome::Completed)
}

/// Records between each partition's start and its end (none where the end is not past the
/// start).
fn planned_records(starts: &BTreeMap<i32, Position>, ends: &BTreeMap<i32, i64>) -> u64 {
    starts
        .iter()
        .map(|(p, start)| {
            let end = ends.get(p).copied().unwrap_or(start.offset);
            u64::try_from(end - start.offset).unwrap_or(0)
        })
        .sum()
}

/// The reference topic of `[enrich]`: its name, partition count, and the end offsets a
/// bounded run reads it to.
type ReferenceTopic = (String, i32, Option<BTreeMap<i32, i64>>);

fn high_watermarks(
    probe: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaSetupError> {
    (0..partitions)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, timeout)
                .map(|(_, high)| (p, high))
                .map_err(|source| KafkaSetupError::Client {
                    what: format!("cannot read the end offset of {topic}/{p}"),
                    source,
                })
        })
        .collect()
}

/// Each partition's first offset stamped at or after `time_ms`; partitions with no such
/// record yet are left out.
fn offsets_for_time(
    probe: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partitions: i32,
    time_ms: i64,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaSetupError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(time_ms))
            .map_err(|source| KafkaSetupError::Client {
                what: format!("cannot look up offsets by time in `{topic}`"),
                source,
            })?;
    }
    let found =
        probe
            .offsets_for_times(tpl, timeout)
            .map_err(|source| KafkaSetupError::Client {
                what: format!("cannot look up offsets by time in `{topic}`"),
                source,
            })?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_sums_end_minus_start_over_partitions() {
        let starts: BTreeMap<i32, Position> = [(0, 10), (1, 0), (2, 50), (3, 7)]
            .into_iter()
            .map(|(p, o)| (p, Position::start(p, o)))
            .collect();
        // Partition 2 starts past its end (a recovered position beyond an --until time);
        // partition 3 has no end and so nothing to read.
        let ends = BTreeMap::from([(0, 110), (1, 5), (2, 40)]);
        assert_eq!(planned_records(&starts, &ends), 105);
    }

    /// A worker that panics tells the others, which stop instead of waiting for it.
    #[test]
    fn a_panicking_worker_stops_the_others() {
        let abort = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&abort);
        let guards = timely::execute(timely::Config::process(2), move |worker| {
            let _panic = AbortOnPanic(&flag);
            let index = worker.index();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                use timely::dataflow::operators::{Input, Probe};
                let (input, stream) = scope.new_input::<Vec<u64>>();
                (input, stream.probe().0)
            });
            input.send(1);
            input.advance_to(1);
            if index == 0 {
                while probe.less_than(&1) {
                    worker.step();
                }
                panic!("worker 0 fails");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !flag.load(Ordering::SeqCst) {
                assert!(std::time::Instant::now() < deadline, "never told to stop");
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            // As `run_worker` does: the dataflow can never complete without worker 0.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            "stopped"
        })
        .expect("timely starts");
        let joined = guards.join();
        assert!(joined[0].is_err(), "worker 0 panicked");
        assert_eq!(joined[1], Ok("stopped"));
        assert!(abort.load(Ordering::SeqCst));
    }
}
