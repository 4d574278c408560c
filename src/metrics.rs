//! Every Prometheus metric waterline exports, defined once, and the live state behind the
//! derived ones (watermark lag, consumer lag, readiness).
//!
//! Operators receive a clone of [`Metrics`] (cheap: the handles are shared) and never
//! register anything themselves. Hot paths take pre-resolved handles ([`Metrics::partition`],
//! [`Metrics::window`]) so that a record costs an atomic add, never a label lookup.
//!
//! Names carry the `waterline_` prefix and their unit; every series carries the const label
//! `dataflow`. Gauges that depend on the wall clock (watermark lag, consumer lag, `ready`)
//! are computed when scraped, by [`Metrics::refresh`], so a stalled watermark shows a
//! growing lag even when nothing is read. The process collector adds the standard
//! `process_*` series (RSS, CPU, file descriptors).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `waterline_records_read_total` | topic, partition | input records read |
//! | `waterline_bytes_read_total` | topic, partition | key + payload bytes read |
//! | `waterline_records_decoded_total` | | records that decoded and validated |
//! | `waterline_records_rejected_total` | kind | decode or validation failures |
//! | `waterline_dead_letters_total` | reason | dead letters written |
//! | `waterline_late_records_total` | window | (record, window) pairs routed late |
//! | `waterline_duplicates_dropped_total` | | repeats of an event id dropped |
//! | `waterline_window_results_total` | window, kind | final, update, tombstone |
//! | `waterline_records_written_total` | topic | records handed to the producer |
//! | `waterline_commits_total` | worker | commits (transactions) |
//! | `waterline_commit_failures_total` | worker | commits that failed |
//! | `waterline_delivery_errors_total` | | producer delivery failures |
//! | `waterline_producer_retries_total` | worker | librdkafka produce retries |
//! | `waterline_restarts_total` | | in-process restarts after a failure |
//! | `waterline_reference_records_read_total` | topic, partition | `[enrich]` input |
//! | `waterline_enriched_total`, `waterline_missing_reference_total` | | join outcomes |
//! | `waterline_watermark_seconds` | | the dataflow's watermark (least over workers) |
//! | `waterline_watermark_lag_seconds` | | wall clock − watermark |
//! | `waterline_partition_watermark_seconds` | topic, partition | per partition |
//! | `waterline_partition_watermark_lag_seconds` | topic, partition | per partition |
//! | `waterline_consumer_lag_records` | topic, partition | end offset − position |
//! | `waterline_partition_idle` | topic, partition | 1 while idle |
//! | `waterline_open_windows` | window | (key, window) aggregates open |
//! | `waterline_window_state_entries` | window | entries the window operator holds |
//! | `waterline_dedupe_state_entries` | | event ids remembered |
//! | `waterline_producer_queue_messages` | worker | messages in the producer queue |
//! | `waterline_last_commit_timestamp_seconds` | worker | wall clock of the last commit |
//! | `waterline_ready` | | 1 when `/ready` answers 200 |
//! | `waterline_build_info` | version | always 1 |
//! | `waterline_end_to_end_latency_seconds` | since | histogram, see below |
//! | `waterline_commit_duration_seconds` | worker | histogram of one commit |
//! | `waterline_stage_latency_seconds` | stage | histogram, see below |
//!
//! End-to-end latency is observed when a commit succeeds: `since="event_time"` is the commit's
//! wall clock minus each written record's event time (a window result's is its close, end +
//! grace; a dead letter's the watermark it was rejected at), so its p99 is what a consumer of
//! the outputs waits beyond event time. `since="append"` is the commit's wall clock minus the
//! greatest Kafka timestamp of the input records an output stems from (a dead letter's or a
//! late record's own record; a window result's latest record), as Kafka Streams measures its
//! record end-to-end latency; for a window result it includes the wait for its close.
//!
//! `waterline_stage_latency_seconds` splits that time into where it is spent, so that a
//! latency tail can be traced to its stage:
//!
//! | stage | per | from → to |
//! | --- | --- | --- |
//! | `fetch` | input record | its Kafka timestamp (its producer's create time, or the broker's append time on a `LogAppendTime` topic) → the source polls it |
//! | `frontier` | output | it reaches the sink → the frontier passes its time (it is final) |
//! | `commit_wait` | output | final → its commit starts (the commit interval, or a commit still running) |
//! | `commit` | output | its commit starts → it succeeds |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A stage of `waterline_stage_latency_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// An input record's Kafka timestamp → the source polls it.
    Fetch,
    /// An output reaches the sink → the frontier passes its time.
    Frontier,
    /// An output is final → its commit starts.
    CommitWait,
    /// An output's commit starts → it succeeds.
    Commit,
}

impl Stage {
    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Frontier => "frontier",
            Stage::CommitWait => "commit_wait",
            Stage::Commit => "commit",
        }
    }
}

/// Latency buckets, seconds: 5 ms to 20 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0,
];
/// Stage latency buckets, seconds: 1 ms to 60 s, fine where the commit interval and the
/// commit take their share.
const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Commit duration buckets, seconds: 1 ms to 60 s.
const COMMIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A worker whose source has not polled for this long is not consuming.
const POLL_STALE: Duration = Duration::from_secs(30);

/// The metric handles, all registered in [`Metrics::registry`], and the live state of the
/// current run.
#[derive(Clone)]
pub struct Metrics {
    /// The registry holding every metric.
    pub registry: Registry,
    records_read: IntCounterVec,
    bytes_read: IntCounterVec,
    /// Records that decoded and validated.
    pub records_decoded: IntCounter,
    records_rejected: IntCounterVec,
    dead_letters: IntCounterVec,
    late_records: IntCounterVec,
    /// Records dropped as duplicates of an earlier event id.
    pub duplicates_dropped: IntCounter,
    window_results: IntCounterVec,
    records_written: IntCounterVec,
    commits: IntCounterVec,
    commit_failures: IntCounterVec,
    /// Producer delivery failures.
    pub delivery_errors: IntCounter,
    producer_retries: IntCounterVec,
    /// Runs restarted in-process after a retriable failure.
    pub restarts: IntCounter,
    reference_records_read: IntCounterVec,
    /// Events joined with a reference version.
    pub enriched: IntCounter,
    /// Events without a reference version at their time.
    pub missing_reference: IntCounter,
    watermark: Gauge,
    watermark_lag: Gauge,
    partition_watermark: GaugeVec,
    partition_watermark_lag: GaugeVec,
    consumer_lag: IntGaugeVec,
    partition_idle: IntGaugeVec,
    open_windows: IntGaugeVec,
    window_state_entries: IntGaugeVec,
    /// Event ids remembered for dedupe, over all workers.
    pub dedupe_state_entries: IntGauge,
    producer_queue: IntGaugeVec,
    last_commit: GaugeVec,
    ready: IntGauge,
    latency: HistogramVec,
    commit_duration: HistogramVec,
    stage_latency: HistogramVec,
    live: Arc<Mutex<Live>>,
    catalogue: Arc<Vec<String>>,
}

/// What the derived gauges and `/ready` are computed from.
#[derive(Default)]
struct Live {
    /// Input partitions: (topic, partition) → where they stand.
    partitions: BTreeMap<(String, i32), PartitionLive>,
    /// The workers of the current run.
    workers: BTreeMap<usize, WorkerLive>,
    /// The run in progress, if any.
    run: Option<RunLive>,
}

#[derive(Default, Clone, Copy)]
struct PartitionLive {
    /// Watermark, epoch ms (0: none yet).
    watermark_ms: u64,
    /// Next offset to read.
    next: Option<i64>,
    /// End offset (last stable offset) from the client's statistics.
    end: Option<i64>,
    idle: bool,
    /// A source of this process reads it.
    read_here: bool,
}

#[derive(Clone, Copy)]
struct WorkerLive {
    /// The worker's held watermark (u64::MAX once released).
    held_ms: u64,
    last_poll: Instant,
    /// Since when a commit has been due (the frontier passed the last commit), if one is.
    due_since: Option<Instant>,
}

#[derive(Clone, Copy)]
struct RunLive {
    workers: usize,
    /// With exactly-once: a due commit older than this makes the job not ready.
    max_commit_delay: Option<Duration>,
}

/// Pre-resolved counters of one input partition.
#[derive(Clone)]
pub struct PartitionCounters {
    /// Records read.
    pub records: IntCounter,
    /// Key and payload bytes read.
    pub bytes: IntCounter,
}

/// Pre-resolved handles of one window.
#[derive(Clone)]
pub struct WindowMetrics {
    /// Final results emitted.
    pub finals: IntCounter,
    /// Upserts emitted (`emit = "updates"`).
    pub updates: IntCounter,
    /// Tombstones emitted (merged-away sessions).
    pub tombstones: IntCounter,
    /// Records routed late.
    pub late: IntCounter,
    open: IntGauge,
    entries: IntGauge,
}

/// A window operator's contribution to the shared window gauges, kept so that several
/// workers add up: each reports its own counts and the gauge moves by the difference.
#[derive(Default)]
pub struct GaugeShare {
    open: i64,
    entries: i64,
    reported: Option<Instant>,
}

impl WindowMetrics {
    /// Reports this operator's open windows and state entries, at most twice a second.
    pub fn report(&self, share: &mut GaugeShare, open: impl FnOnce() -> (i64, i64)) {
        let now = Instant::now();
        if share
            .reported
            .is_some_and(|at| now.duration_since(at) < Duration::from_millis(500))
        {
            return;
        }
        share.reported = Some(now);
        let (o, e) = open();
        self.open.add(o - share.open);
        self.entries.add(e - share.entries);
        share.open = o;
        share.entries = e;
    }

    /// Withdraws this operator's contribution (the dataflow ended).
    pub fn withdraw(&self, share: &mut GaugeShare) {
        self.open.sub(share.open);
        self.entries.sub(share.entries);
        *share = GaugeShare::default();
    }
}

/// Registers `m` in `r` and notes its name.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    names: &std::cell::RefCell<Vec<String>>,
    m: M,
) -> M {
    names
        .borrow_mut()
        .extend(m.desc().iter().map(|d| d.fq_name.clone()));
    r.register(Box::new(m.clone()))
        .expect("each metric is registered once, under a valid name");
    m
}

fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
    // The state is plain numbers: a panic elsewhere cannot leave it inconsistent.
    live.lock().unwrap_or_else(|e| e.into_inner())
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    /// Creates and registers every metric, each labelled `dataflow = <dataflow>`.
    pub fn new(dataflow: &str) -> Metrics {
        let labels = HashMap::from([("dataflow".to_string(), dataflow.to_string())]);
        let registry =
            Registry::new_custom(None, Some(labels)).expect("`dataflow` is a valid label name");
        let names = std::cell::RefCell::new(Vec::new());
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                &names,
                IntCounter::with_opts(Opts::new(name, help)).expect("metric names are valid"),
            )
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                &names,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                &names,
                Gauge::with_opts(Opts::new(name, help)).expect("metric names are valid"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                &names,
                GaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid"),
            )
        };
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                &names,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid"),
            )
        };
        let histograms = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            register(
                &registry,
                &names,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("metric names and buckets are valid"),
            )
        };
        let tp = &["topic", "partition"];
        let build_info = int_gauges(
            "waterline_build_info",
            "Always 1; the version label says which waterline is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            use prometheus::core::Collector;
            let process = prometheus::process_collector::ProcessCollector::for_self();
            names
                .borrow_mut()
                .extend(process.desc().iter().map(|d| d.fq_name.clone()));
            registry
                .register(Box::new(process))
                .expect("the process collector is registered once");
        }
        Metrics {
            records_read: counters(
                "waterline_records_read_total",
                "Records read from input partitions.",
                tp,
            ),
            bytes_read: counters(
                "waterline_bytes_read_total",
                "Key and payload bytes of the records read from input partitions.",
                tp,
            ),
            records_decoded: counter(
                "waterline_records_decoded_total",
                "Records that decoded and passed validation.",
            ),
            records_rejected: counters(
                "waterline_records_rejected_total",
                "Records that failed to decode or validate, by error kind.",
                &["kind"],
            ),
            dead_letters: counters(
                "waterline_dead_letters_total",
                "Records written to the dead-letter topic, by reason.",
                &["reason"],
            ),
            late_records: counters(
                "waterline_late_records_total",
                "(record, window) pairs routed to the late topic: the record arrived after \
                 the window closed.",
                &["window"],
            ),
            duplicates_dropped: counter(
                "waterline_duplicates_dropped_total",
                "Records dropped as repeats of an earlier event id within the dedupe horizon.",
            ),
            window_results: counters(
                "waterline_window_results_total",
                "Window results emitted, by kind: final, update (an upsert), tombstone.",
                &["window", "kind"],
            ),
            records_written: counters(
                "waterline_records_written_total",
                "Records handed to the Kafka producer, by topic.",
                &["topic"],
            ),
            commits: counters(
                "waterline_commits_total",
                "Commits (with exactly-once, transactions) of outputs and progress.",
                &["worker"],
            ),
            commit_failures: counters(
                "waterline_commit_failures_total",
                "Commits that failed; the run then restarts from the committed progress.",
                &["worker"],
            ),
            delivery_errors: counter(
                "waterline_delivery_errors_total",
                "Kafka producer delivery failures.",
            ),
            producer_retries: counters(
                "waterline_producer_retries_total",
                "Produce requests the Kafka client retried.",
                &["worker"],
            ),
            restarts: counter(
                "waterline_restarts_total",
                "Runs restarted in-process from the committed progress after a retriable \
                 failure.",
            ),
            reference_records_read: counters(
                "waterline_reference_records_read_total",
                "Records read from reference partitions ([enrich]).",
                tp,
            ),
            enriched: counter(
                "waterline_enriched_total",
                "Events joined with the reference version valid at their time.",
            ),
            missing_reference: counter(
                "waterline_missing_reference_total",
                "Events without reference data at their time (dead letters, or passed on).",
            ),
            watermark: gauge(
                "waterline_watermark_seconds",
                "The dataflow's watermark, event time as Unix seconds: the least watermark \
                 any worker holds. Windows ending at or before it (plus grace) are closed.",
            ),
            watermark_lag: gauge(
                "waterline_watermark_lag_seconds",
                "Wall clock minus waterline_watermark_seconds.",
            ),
            partition_watermark: gauges(
                "waterline_partition_watermark_seconds",
                "Each input partition's watermark, event time as Unix seconds.",
                tp,
            ),
            partition_watermark_lag: gauges(
                "waterline_partition_watermark_lag_seconds",
                "Wall clock minus each input partition's watermark.",
                tp,
            ),
            consumer_lag: int_gauges(
                "waterline_consumer_lag_records",
                "Records of each input partition not read yet: its end offset (last stable \
                 offset) minus the next offset to read.",
                tp,
            ),
            partition_idle: int_gauges(
                "waterline_partition_idle",
                "1 while an input partition counts as idle (no record for idle_timeout): it \
                 then holds no watermark back.",
                tp,
            ),
            open_windows: int_gauges(
                "waterline_open_windows",
                "Open (key, window) aggregates; sessions for session windows.",
                &["window"],
            ),
            window_state_entries: int_gauges(
                "waterline_window_state_entries",
                "Entries a window operator holds: open aggregates plus pending changes and \
                 close-index entries.",
                &["window"],
            ),
            dedupe_state_entries: register(
                &registry,
                &names,
                IntGauge::with_opts(Opts::new(
                    "waterline_dedupe_state_entries",
                    "Event ids remembered for deduplication.",
                ))
                .expect("metric names are valid"),
            ),
            producer_queue: int_gauges(
                "waterline_producer_queue_messages",
                "Messages in the Kafka producer's queue, waiting to be sent or acknowledged.",
                &["worker"],
            ),
            last_commit: gauges(
                "waterline_last_commit_timestamp_seconds",
                "Wall clock (Unix seconds) of each worker's last successful commit.",
                &["worker"],
            ),
            ready: register(
                &registry,
                &names,
                IntGauge::with_opts(Opts::new(
                    "waterline_ready",
                    "1 when /ready answers 200: every worker assigned and consuming, and no \
                     due commit overdue.",
                ))
                .expect("metric names are valid"),
            ),
            latency: histograms(
                "waterline_end_to_end_latency_seconds",
                "Seconds from an output's event time (since=event_time) or an input record's \
                 Kafka timestamp (since=append) until the commit that made it durable.",
                LATENCY_BUCKETS,
                &["since"],
            ),
            commit_duration: histograms(
                "waterline_commit_duration_seconds",
                "Seconds one commit (with exactly-once, one transaction) took.",
                COMMIT_BUCKETS,
                &["worker"],
            ),
            stage_latency: histograms(
                "waterline_stage_latency_seconds",
                "Seconds spent in one stage (fetch, frontier, commit_wait, commit) between an \
                 input record's Kafka timestamp and the commit of its outputs.",
                STAGE_BUCKETS,
                &["stage"],
            ),
            live: Arc::new(Mutex::new(Live::default())),
            catalogue: Arc::new(names.into_inner()),
            registry,
        }
    }

    /// The name of every metric registered, labelled or not, with or without series yet
    /// (histograms by their base name).
    pub fn catalogue(&self) -> &[String] {
        &self.catalogue
    }

    /// Records read from input partitions so far, over all partitions.
    pub fn records_read(&self) -> u64 {
        lock(&self.live)
            .partitions
            .iter()
            .filter(|(_, state)| state.read_here)
            .fold(0, |sum, ((topic, p), _)| {
                sum + self
                    .records_read
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .get()
            })
    }

    /// Dead letters written so far, over all reasons.
    pub fn dead_letters_total(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "waterline_dead_letters_total")
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    }

    /// Final window results emitted so far, over all windows.
    pub fn final_results_total(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "waterline_window_results_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == "final"))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The counters of input partition `partition` of `topic`, which the source registers
    /// as its own.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionCounters {
        lock(&self.live)
            .partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .read_here = true;
        let p = partition.to_string();
        PartitionCounters {
            records: self.records_read.with_label_values(&[topic, &p]),
            bytes: self.bytes_read.with_label_values(&[topic, &p]),
        }
    }

    /// The counter of reference partition `partition` of `topic`.
    pub fn reference_partition(&self, topic: &str, partition: i32) -> IntCounter {
        self.reference_records_read
            .with_label_values(&[topic, &partition.to_string()])
    }

    /// The handles of the window named `window`.
    pub fn window(&self, window: &str) -> WindowMetrics {
        WindowMetrics {
            finals: self.window_results.with_label_values(&[window, "final"]),
            updates: self.window_results.with_label_values(&[window, "update"]),
            tombstones: self
                .window_results
                .with_label_values(&[window, "tombstone"]),
            late: self.late_records.with_label_values(&[window]),
            open: self.open_windows.with_label_values(&[window]),
            entries: self.window_state_entries.with_label_values(&[window]),
        }
    }

    /// Counts a record that failed to decode or validate, by its error kind, and the
    /// dead letter it became.
    pub fn rejected(&self, kind: &str) {
        self.records_rejected.with_label_values(&[kind]).inc();
        self.dead_letter(kind);
    }

    /// Counts a dead letter written for `reason`.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters.with_label_values(&[reason]).inc();
    }

    /// The counter of records written to `topic`.
    pub fn written(&self, topic: &str) -> IntCounter {
        self.records_written.with_label_values(&[topic])
    }

    /// The producer-side handles of worker `worker`. Its commit counters start at 0 here,
    /// so that `increase()` sees the first failure.
    pub fn producer(&self, worker: usize) -> ProducerMetrics {
        let w = worker.to_string();
        let _ = self.commits.with_label_values(&[&w]);
        let _ = self.commit_failures.with_label_values(&[&w]);
        ProducerMetrics {
            queue: self.producer_queue.with_label_values(&[&w]),
            retries: self.producer_retries.with_label_values(&[&w]),
            seen_retries: Arc::new(Mutex::new(0)),
        }
    }

    /// A run of `workers` workers starts; with `max_commit_delay` (exactly-once), a due
    /// commit older than that makes the job not ready.
    pub fn run_started(&self, workers: usize, max_commit_delay: Option<Duration>) {
        let mut live = lock(&self.live);
        live.workers.clear();
        live.run = Some(RunLive {
            workers,
            max_commit_delay,
        });
    }

    /// The run ended (completed, stopped or failed).
    pub fn run_ended(&self) {
        let mut live = lock(&self.live);
        live.run = None;
        live.workers.clear();
    }

    /// Worker `worker` committed where it starts and is about to read.
    pub fn worker_assigned(&self, worker: usize) {
        lock(&self.live).workers.insert(
            worker,
            WorkerLive {
                held_ms: 0,
                last_poll: Instant::now(),
                due_since: None,
            },
        );
    }

    /// A source worker polled its partitions. `partitions` gives, for each, its next
    /// offset, watermark and whether it is idle; `held` is the worker's watermark
    /// (`u64::MAX` once released).
    pub fn source_polled(
        &self,
        worker: usize,
        topic: &str,
        partitions: impl Iterator<Item = (i32, i64, u64, bool)>,
        held: u64,
    ) {
        let mut live = lock(&self.live);
        if let Some(w) = live.workers.get_mut(&worker) {
            w.held_ms = held;
            w.last_poll = Instant::now();
        }
        for (p, next, watermark, idle) in partitions {
            let slot = live.partitions.entry((topic.to_string(), p)).or_default();
            slot.next = Some(next);
            slot.watermark_ms = watermark;
            slot.idle = idle;
        }
    }

    /// `end` is where input partition `partition` of `topic` ends now: its high watermark at
    /// start-up, then the last stable offset from the Kafka client's statistics.
    pub fn partition_end(&self, topic: &str, partition: i32, end: i64) {
        lock(&self.live)
            .partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .end = Some(end);
    }

    /// Worker `worker`'s sink has (or no longer has) a commit due.
    pub fn commit_due(&self, worker: usize, due: bool) {
        let mut live = lock(&self.live);
        if let Some(w) = live.workers.get_mut(&worker) {
            match (due, w.due_since) {
                (true, None) => w.due_since = Some(Instant::now()),
                (false, Some(_)) => w.due_since = None,
                _ => {}
            }
        }
    }

    /// Worker `worker` committed in `took`: records at the event times `written` (time,
    /// count) are durable, stemming from inputs appended to Kafka at `appended` (epoch ms,
    /// one per record that has one).
    pub fn committed(
        &self,
        worker: usize,
        took: Duration,
        written: &[(u64, u64)],
        appended: &[u64],
    ) {
        let w = worker.to_string();
        self.commits.with_label_values(&[&w]).inc();
        self.commit_duration
            .with_label_values(&[&w])
            .observe(took.as_secs_f64());
        let now_ms = epoch_ms();
        self.last_commit
            .with_label_values(&[&w])
            .set(now_ms as f64 / 1000.0);
        let event_time = self.latency.with_label_values(&["event_time"]).local();
        let commit_stage = self.stage(Stage::Commit).local();
        for &(time, count) in written {
            for _ in 0..count {
                commit_stage.observe(took.as_secs_f64());
            }
            if time == u64::MAX {
                continue;
            }
            let seconds = now_ms.saturating_sub(time) as f64 / 1000.0;
            for _ in 0..count {
                event_time.observe(seconds);
            }
        }
        event_time.flush();
        commit_stage.flush();
        let append = self.latency.with_label_values(&["append"]).local();
        for &ts in appended {
            append.observe(now_ms.saturating_sub(ts) as f64 / 1000.0);
        }
        append.flush();
        if let Some(w) = lock(&self.live).workers.get_mut(&worker) {
            w.due_since = None;
        }
    }

    /// The histogram of one stage of `waterline_stage_latency_seconds`.
    pub fn stage(&self, stage: Stage) -> prometheus::Histogram {
        self.stage_latency.with_label_values(&[stage.as_str()])
    }

    /// Worker `worker`'s commit failed.
    pub fn commit_failed(&self, worker: usize) {
        self.commit_failures
            .with_label_values(&[&worker.to_string()])
            .inc();
    }

    /// Whether the job is ready: `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        let live = lock(&self.live);
        let Some(run) = live.run else {
            return Err("not running: starting, or restarting after a failure".into());
        };
        if live.workers.len() < run.workers {
            return Err(format!(
                "{} of {} workers assigned",
                live.workers.len(),
                run.workers
            ));
        }
        let now = Instant::now();
        for (index, w) in &live.workers {
            if w.held_ms != u64::MAX && now.duration_since(w.last_poll) > POLL_STALE {
                return Err(format!(
                    "worker {index} has not read its partitions for {:.0?}",
                    now.duration_since(w.last_poll)
                ));
            }
            if let (Some(max), Some(since)) = (run.max_commit_delay, w.due_since)
                && now.duration_since(since) > max
            {
                return Err(format!(
                    "worker {index} has had a commit due for {:.1?} (more than {max:?})",
                    now.duration_since(since)
                ));
            }
        }
        Ok(())
    }

    /// Computes the gauges that depend on the wall clock: watermark lags, consumer lags,
    /// idleness and `waterline_ready`.
    pub fn refresh(&self) {
        let ready = self.readiness().is_ok();
        self.ready.set(i64::from(ready));
        let now_ms = epoch_ms();
        let live = lock(&self.live);
        let lag = |wm: u64| (now_ms as f64 - wm as f64) / 1000.0;
        for ((topic, p), state) in &live.partitions {
            let labels = [topic.as_str(), &p.to_string()];
            if state.watermark_ms > 0 && state.watermark_ms != u64::MAX {
                self.partition_watermark
                    .with_label_values(&labels)
                    .set(state.watermark_ms as f64 / 1000.0);
                self.partition_watermark_lag
                    .with_label_values(&labels)
                    .set(lag(state.watermark_ms));
            }
            if let (Some(end), Some(next)) = (state.end, state.next) {
                self.consumer_lag
                    .with_label_values(&labels)
                    .set((end - next).max(0));
            }
            // Partitions another process reads are not this process's to report.
            if state.read_here {
                self.partition_idle
                    .with_label_values(&labels)
                    .set(i64::from(state.idle));
            }
        }
        let least = live
            .workers
            .values()
            .map(|w| w.held_ms)
            .filter(|t| *t != u64::MAX)
            .min();
        if let Some(wm) = least.filter(|t| *t > 0) {
            self.watermark.set(wm as f64 / 1000.0);
            self.watermark_lag.set(lag(wm));
        }
    }

    /// The Prometheus text exposition of every metric, refreshed.
    pub fn render(&self) -> String {
        self.refresh();
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("the text encoder writes to memory without failing");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// Handles a worker's producer reports to, from the Kafka client's statistics.
#[derive(Clone)]
pub struct ProducerMetrics {
    queue: IntGauge,
    retries: IntCounter,
    seen_retries: Arc<Mutex<u64>>,
}

impl ProducerMetrics {
    /// Takes one statistics report: messages queued, and retries so far (a running total
    /// that the client restarts with each producer).
    pub fn report(&self, queued: u64, retries: u64) {
        self.queue.set(queued as i64);
        let mut seen = self.seen_retries.lock().unwrap_or_else(|e| e.into_inner());
        if retries > *seen {
            self.retries.inc_by(retries - *seen);
        }
        *seen = retries;
    }

    /// A new producer starts counting retries from zero.
    pub fn reset(&self) {
        *self.seen_retries.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` whose labels include `labels`, from a text exposition.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
                let matches = n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                matches.then(|| value.parse().ok()).flatten()
            })
    }

    #[test]
    fn every_series_is_named_with_prefix_unit_and_dataflow() {
        let m = Metrics::new("trades");
        m.partition("trades", 3).records.inc_by(5);
        m.rejected("malformed_json");
        m.window("per_minute").finals.inc();
        let text = m.render();
        let read = [
            ("dataflow", "trades"),
            ("topic", "trades"),
            ("partition", "3"),
        ];
        assert_eq!(
            sample(&text, "waterline_records_read_total", &read),
            Some(5.0),
            "{text}"
        );
        let reason = [("dataflow", "trades"), ("reason", "malformed_json")];
        assert_eq!(
            sample(&text, "waterline_dead_letters_total", &reason),
            Some(1.0)
        );
        let kind = [("kind", "malformed_json")];
        assert_eq!(
            sample(&text, "waterline_records_rejected_total", &kind),
            Some(1.0)
        );
        assert!(
            text.contains("# HELP waterline_records_decoded_total "),
            "{text}"
        );
        assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("dataflow=\"trades\""), "{line}");
        }
        assert_eq!(m.records_read(), 5);
        assert_eq!(m.dead_letters_total(), 1);
        assert_eq!(m.final_results_total(), 1);
    }

    #[test]
    fn readiness_needs_every_worker_and_no_overdue_commit() {
        let m = Metrics::new("d");
        assert!(m.readiness().is_err(), "not running");
        m.run_started(2, Some(Duration::from_millis(50)));
        m.worker_assigned(0);
        let e = m.readiness().expect_err("one worker missing");
        assert!(e.contains("1 of 2"), "{e}");
        m.worker_assigned(1);
        assert_eq!(m.readiness(), Ok(()));
        m.commit_due(1, true);
        std::thread::sleep(Duration::from_millis(80));
        let e = m.readiness().expect_err("overdue");
        assert!(e.contains("worker 1"), "{e}");
        m.committed(1, Duration::from_millis(3), &[], &[]);
        assert_eq!(m.readiness(), Ok(()));
        m.run_ended();
        assert!(m.readiness().is_err());
    }

    #[test]
    fn lags_follow_the_positions_and_ends() {
        let m = Metrics::new("d");
        m.run_started(1, None);
        m.worker_assigned(0);
        let _ = m.partition("in", 0);
        let wm = epoch_ms() - 10_000;
        m.source_polled(0, "in", [(0, 40, wm, true)].into_iter(), wm);
        m.partition_end("in", 0, 100);
        let text = m.render();
        let p0 = [("topic", "in"), ("partition", "0")];
        assert_eq!(
            sample(&text, "waterline_consumer_lag_records", &p0),
            Some(60.0),
            "{text}"
        );
        assert_eq!(sample(&text, "waterline_partition_idle", &p0), Some(1.0));
        let lag = sample(&text, "waterline_watermark_lag_seconds", &[]).expect("exported");
        assert!((9.0..60.0).contains(&lag), "{lag}");
        let p_lag = sample(&text, "waterline_partition_watermark_lag_seconds", &p0);
        assert!(p_lag.is_some_and(|l| (9.0..60.0).contains(&l)), "{p_lag:?}");
        // A commit observes each record written and each append time.
        m.committed(0, Duration::from_millis(1), &[(wm, 2)], &[wm - 5_000]);
        let text = m.render();
        let count = "waterline_end_to_end_latency_seconds_count";
        assert_eq!(
            sample(&text, count, &[("since", "append")]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, count, &[("since", "event_time")]), Some(2.0));
        let sum = sample(
            &text,
            "waterline_end_to_end_latency_seconds_sum",
            &[("since", "event_time")],
        );
        assert!(sum.is_some_and(|s| (18.0..120.0).contains(&s)), "{sum:?}");
        assert_eq!(
            sample(&text, "waterline_commits_total", &[("worker", "0")]),
            Some(1.0)
        );
    }
}
