//! Writing output records and progress to Kafka.
//!
//! Each worker has its own producer and writes only the topic partitions routed to it, in
//! timestamp order. Exactly-once: the producer is transactional
//! (`transactional.id = <app_id>-<worker>`; `init_transactions` fences any zombie of an
//! earlier incarnation), and each commit is one transaction holding the outputs and the
//! progress record. At-least-once: the idempotent producer, and a commit is a flush
//! followed by the progress record, which is sent only once every output before it has
//! been delivered. Delivery failures fail the commit: an output that could not be written
//! is never silently dropped.
//!
//! Commits run off the worker thread. Exactly-once, [`Writer::start_commit`] sends the
//! progress record into the transaction; then the flush and `commit_transaction`
//! (at-least-once: the flush, the progress record and its own flush), which wait for the
//! broker (a few tens of milliseconds per commit on a busy broker, see [`flush`]), run on a
//! thread of their own; the sink keeps buffering outputs meanwhile and writes nothing until
//! [`Writer::finish_commit`] reports the outcome, so a transaction holds exactly what it
//! held before, while the worker goes on reading and computing instead of waiting.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;

use super::Writer;
use crate::config::{Config, Guarantee};
use crate::kafka::{KafkaSetupError, MAX_MESSAGE_BYTES, client_config};
use crate::metrics::{Metrics, ProducerMetrics};
use crate::output::{OutRecord, Topics};
use crate::progress::Progress;

/// Counts delivery failures and keeps the first one's message.
pub struct DeliveryTracker {
    first_error: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
    producer: ProducerMetrics,
    /// The span the writer was created in (its worker's): the producer's own thread logs
    /// librdkafka's lines inside it, so they name the worker too.
    span: tracing::Span,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.span
            .in_scope(|| crate::kafka::librdkafka_log(level, fac, message));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.span
            .in_scope(|| tracing::error!(target: "librdkafka", error = %error, "{reason}"));
    }

    /// The client's statistics (every `statistics.interval.ms`): queue depth and retries.
    fn stats(&self, statistics: Statistics) {
        let retries = statistics.brokers.values().map(|b| b.txretries).sum();
        self.producer.report(statistics.msg_cnt, retries);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::message::Message;
            record_failure(
                &self.metrics,
                &self.first_error,
                format!("delivery to {}/{} failed: {e}", m.topic(), m.partition()),
            );
        }
    }
}

/// Counts a failure and keeps its message if it is the first since the last commit.
fn record_failure(metrics: &Metrics, first_error: &Mutex<Option<String>>, message: String) {
    metrics.delivery_errors.inc();
    let mut slot = first_error
        .lock()
        .expect("no thread panics holding the delivery lock");
    if slot.is_none() {
        *slot = Some(message);
    }
}

/// A worker's Kafka writer.
pub struct KafkaWriter {
    /// Polled by the sink itself ([`Writer::poll`], and while flushing), not by a thread of
    /// rdkafka's `ThreadedProducer`: that thread takes the delivery reports a flush waits
    /// for, so each flush (and so each commit) sat out rdkafka's 100 ms poll slices after
    /// the last delivery, which blocked the worker for half of a 200 ms commit interval
    /// (the commit thread now flushes in short steps, see [`flush`]).
    producer: Arc<BaseProducer<DeliveryTracker>>,
    topics: Rc<Topics>,
    progress_topic: String,
    progress_key: String,
    transactional: bool,
    in_transaction: bool,
    first_error: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
    /// Records written, per topic index.
    written: Vec<prometheus::IntCounter>,
    /// The commit running on its own thread: its outcome, and whether the transaction is
    /// still open afterwards (a failed commit leaves it to [`Writer::abort`]).
    committing: Option<std::thread::JoinHandle<(Result<(), String>, bool)>>,
}

const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`flush`] checks every [`POLL_STEP`] before it leaves the rest to rdkafka's own.
const PROMPT_FLUSH: Duration = Duration::from_secs(1);
/// How long [`flush`] serves delivery reports between its checks. rdkafka's `poll` waits
/// for them in whole milliseconds and spins through the last fraction of one (its
/// timeout is truncated to 0 ms there), so a 1 ms step spun the commit thread for the
/// whole flush: at-least-once backfills spent a third more CPU. With 10 ms, at most a
/// tenth of a flush spins, and it ends at most 10 ms after its last delivery.
const POLL_STEP: Duration = Duration::from_millis(10);

/// A worker's producer, created (and, exactly-once, with its transactions initialised)
/// before the worker starts: [`fence_workers`] makes these while it fences, so a worker
/// does not initialise its transactions a second time.
pub struct PreparedProducer {
    producer: BaseProducer<DeliveryTracker>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl PreparedProducer {
    /// Worker `worker`'s producer. Exactly-once, `init_transactions` with the worker's
    /// `transactional.id`, which fences its earlier incarnations; `known_topic` is any
    /// topic that exists, for [`crate::kafka::connect`]. `span` is the worker's: the
    /// producer's own thread logs librdkafka's lines inside it.
    pub fn new(
        config: &Config,
        known_topic: &str,
        worker: usize,
        metrics: &Metrics,
        span: tracing::Span,
    ) -> Result<Self, KafkaSetupError> {
        let first_error = Arc::new(Mutex::new(None));
        let mut c = client_config(config);
        // Retries never duplicate or reorder records within a partition.
        c.set("enable.idempotence", "true")
            // Batch for throughput; results are already in order, a few ms cost nothing.
            .set("linger.ms", "5")
            // Dead letters carry whole rejected payloads.
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // Cheap on CPU, good on JSON.
            .set("compression.type", "lz4")
            // Queue depth and retries for the metrics, once a second.
            .set("statistics.interval.ms", "1000")
            .set(
                "client.id",
                format!("waterline-{}-sink-{worker}", config.app_id),
            );
        let transactional = config.guarantee == Guarantee::ExactlyOnce;
        if transactional {
            // One id per worker: a restarted worker fences its previous incarnation.
            c.set("transactional.id", format!("{}-{worker}", config.app_id))
                // Long enough that a slow commit is not aborted under us, short enough
                // that a crashed worker's open transaction stops blocking read_committed
                // consumers soon (its next incarnation aborts it at once anyway).
                .set("transaction.timeout.ms", "60000");
        }
        for (k, v) in &config.kafka_properties {
            c.set(k, v);
        }
        let producer: BaseProducer<DeliveryTracker> = c
            .create_with_context(DeliveryTracker {
                first_error: Arc::clone(&first_error),
                metrics: metrics.clone(),
                producer: {
                    let p = metrics.producer(worker);
                    p.reset();
                    p
                },
                span,
            })
            .map_err(|source| KafkaSetupError::Client {
                what: "cannot create the Kafka producer".into(),
                source,
            })?;
        // Idempotent producers acquire a producer id too, with the same retry timers.
        crate::kafka::connect(producer.client(), known_topic);
        if transactional {
            producer
                .init_transactions(Timeout::After(FLUSH_TIMEOUT))
                .map_err(|source| KafkaSetupError::Client {
                    what: format!(
                        "cannot initialise transactions for {}-{worker} (which fences its \
                         earlier instances)",
                        config.app_id
                    ),
                    source,
                })?;
        }
        Ok(PreparedProducer {
            producer,
            first_error,
        })
    }
}

impl KafkaWriter {
    /// A writer for `topics` and the job's progress topic.
    pub fn new(
        config: &Config,
        topics: Rc<Topics>,
        progress_topic: &str,
        worker: usize,
        metrics: Metrics,
    ) -> Result<Self, KafkaSetupError> {
        let prepared = PreparedProducer::new(
            config,
            progress_topic,
            worker,
            &metrics,
            tracing::Span::current(),
        )?;
        Ok(Self::with_producer(
            config,
            prepared,
            topics,
            progress_topic,
            worker,
            metrics,
        ))
    }

    /// A writer on a producer [`fence_workers`] made for worker `worker`.
    pub fn with_producer(
        config: &Config,
        prepared: PreparedProducer,
        topics: Rc<Topics>,
        progress_topic: &str,
        worker: usize,
        metrics: Metrics,
    ) -> Self {
        let written = topics.names.iter().map(|t| metrics.written(t)).collect();
        KafkaWriter {
            producer: Arc::new(prepared.producer),
            topics,
            progress_topic: progress_topic.to_string(),
            progress_key: format!("worker-{worker}"),
            transactional: config.guarantee == Guarantee::ExactlyOnce,
            in_transaction: false,
            first_error: prepared.first_error,
            written,
            metrics,
            committing: None,
        }
    }
}

/// Completes what earlier incarnations of the workers `workers` (global indices: in a job
/// of several processes, each process fences its own) left open, in parallel:
/// `init_transactions` with each worker's `transactional.id` aborts a zombie's open
/// transaction and waits for a commit in flight to be written out. Afterwards the progress
/// topic's committed end is its end, so reading it is not missing a commit whose markers
/// were still on their way.
///
/// It returns each worker's producer, connected and, exactly-once, with its transactions
/// initialised, for [`KafkaWriter::with_producer`]. At-least-once there is nothing to
/// fence, but the producers are still made here, beside the topic set-up: an idempotent
/// producer's first flush otherwise waited up to 500 ms for its producer id (see
/// [`crate::kafka::connect`]). `known_topic` is any topic that exists (see
/// [`PreparedProducer::new`]); `span` gives each worker's span.
pub fn fence_workers(
    config: &Config,
    workers: std::ops::Range<usize>,
    known_topic: &str,
    metrics: &Metrics,
    span: impl Fn(usize) -> tracing::Span + Sync,
) -> Result<Vec<(usize, PreparedProducer)>, KafkaSetupError> {
    let span = &span;
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .map(|worker| {
                scope.spawn(move || {
                    PreparedProducer::new(config, known_topic, worker, metrics, span(worker))
                        .map(|p| (worker, p))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fencing thread does not panic"))
            .collect()
    })
}

/// Aborts the open transaction. librdkafka's abort waits until the delivery reports of
/// the transaction's outstanding records have been served, and nothing else polls this
/// producer: flushing first serves them (records of an aborted transaction are never
/// visible to `read_committed` readers), so the abort does not sit out its timeout.
fn abort_transaction(producer: &BaseProducer<DeliveryTracker>) {
    if let Err(e) = flush(producer) {
        tracing::warn!(error = %e, "could not flush the transaction being aborted");
    }
    if let Err(e) = producer.abort_transaction(Timeout::After(FLUSH_TIMEOUT)) {
        tracing::warn!(error = %e, "could not abort the open transaction; the broker will time it out");
    }
}

/// Waits until every record produced has been delivered (or has failed), serving the
/// delivery reports meanwhile.
///
/// rdkafka's `Producer::flush` checks once, then serves delivery reports for 100 ms before
/// it checks again (its `poll` returns only at the end of its timeout): every commit with
/// anything in flight took at least 100 ms, as `waterline_stage_latency_seconds{stage=
/// "commit"}` showed. Here the first [`PROMPT_FLUSH`] checks every [`POLL_STEP`], which
/// covers a commit against a healthy broker; a flush that takes longer (the broker is
/// away) is left to rdkafka's, up to [`FLUSH_TIMEOUT`] in all.
///
/// What lingers is not sent at once: librdkafka lets a flush send without waiting out
/// `linger.ms` only while `rd_kafka_flush` runs, and rdkafka calls it with a zero timeout,
/// which returns before the broker threads it wakes get to the partitions. So a commit's
/// last outputs wait up to `linger.ms` (5 ms) to be sent. rdkafka's `commit_transaction`
/// flushes the same way before librdkafka's own flush, which would hold that state: with a
/// `linger.ms` longer than a commit interval, meant to send each transaction's outputs in
/// one go at its commit, commits took 0.75–1 s (p50), waiting out the linger.
fn flush(producer: &BaseProducer<DeliveryTracker>) -> rdkafka::error::KafkaResult<()> {
    let start = Instant::now();
    // Once, to check; the broker threads it wakes mostly find it over (see above).
    if producer.flush(Timeout::After(Duration::ZERO)).is_ok() {
        return Ok(());
    }
    while producer.in_flight_count() > 0 {
        if start.elapsed() >= PROMPT_FLUSH {
            return producer.flush(Timeout::After(
                FLUSH_TIMEOUT.saturating_sub(start.elapsed()),
            ));
        }
        producer.poll(POLL_STEP);
    }
    Ok(())
}

/// A progress record, written when a commit's outputs are delivered.
struct ProgressRecord {
    topic: String,
    key: String,
    payload: Vec<u8>,
}

/// The part of a commit that waits for the broker, on the commit thread: flush, then
/// exactly-once commit the transaction (which holds the progress record already), or
/// at-least-once write `deferred`, the progress record, and flush again; then check the
/// deliveries. Returns the outcome and whether the transaction is still open.
fn finish(
    producer: &BaseProducer<DeliveryTracker>,
    transactional: bool,
    first_error: &Mutex<Option<String>>,
    deferred: Option<ProgressRecord>,
) -> (Result<(), String>, bool) {
    crate::fault::point("before-commit");
    if transactional && crate::fault::fails("commit-fails") {
        abort_transaction(producer);
        return (
            Err("commit failed: transaction aborted (injected by WATERLINE_FAULT)".into()),
            false,
        );
    }
    // Before the transaction's commit, which flushes too, but as slowly as [`flush`] says;
    // it then finds nothing in flight.
    if let Err(e) = flush(producer) {
        return (Err(format!("producer flush failed: {e}")), transactional);
    }
    if transactional {
        if let Err(e) = producer.commit_transaction(Timeout::After(FLUSH_TIMEOUT)) {
            let message = match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::ProducerFenced) => {
                    format!("fenced: another instance of this job took over ({e}); this one stops")
                }
                _ => format!("commit failed: {e}"),
            };
            return (Err(message), true);
        }
    }
    if let Some(progress) = deferred {
        // Sent with the outputs, the progress record could land while one of them failed
        // (refused by its partition's leader, on this broker or another): the restart
        // would then start past that output, and it would never be written at all.
        if let Some(e) = take_failure(first_error) {
            return (Err(e), false);
        }
        let mut record = BaseRecord::<str, [u8]>::to(&progress.topic)
            .partition(0)
            .key(&progress.key)
            .payload(&progress.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    return (Err(format!("cannot write the progress record: {e}")), false);
                }
            }
        }
        if let Err(e) = flush(producer) {
            return (Err(format!("producer flush failed: {e}")), false);
        }
    }
    match take_failure(first_error) {
        Some(e) => (Err(e), false),
        None => {
            crate::fault::point("after-commit");
            (Ok(()), false)
        }
    }
}

/// The first delivery failure since it was last taken, if any.
fn take_failure(first_error: &Mutex<Option<String>>) -> Option<String> {
    first_error
        .lock()
        .expect("no thread panics holding the delivery lock")
        .take()
}

impl KafkaWriter {
    /// Waits for the commit in flight; its outcome (`Ok` when none was in flight).
    fn join_commit(&mut self) -> Result<(), String> {
        let Some(thread) = self.committing.take() else {
            return Ok(());
        };
        let (result, open) = thread
            .join()
            .unwrap_or_else(|_| (Err("the commit thread panicked".into()), true));
        self.in_transaction = open && self.transactional;
        result
    }

    fn begin(&mut self) -> Result<(), String> {
        if self.transactional && !self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| format!("cannot begin a transaction: {e}"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    fn fail(&mut self, e: String) {
        record_failure(&self.metrics, &self.first_error, e);
    }
}

impl Writer for KafkaWriter {
    fn poll(&mut self) {
        // Delivery reports and statistics, without waiting; not while a commit thread
        // flushes, whose wait they would cut short by taking its delivery reports.
        if self.committing.is_none() {
            self.producer.poll(Duration::ZERO);
        }
    }

    fn write(&mut self, record: &OutRecord) {
        if let Err(e) = self.begin() {
            self.fail(e);
            return;
        }
        let topic = &self.topics.names[record.topic as usize];
        let mut r = BaseRecord::<[u8], [u8]>::to(topic).partition(record.partition);
        if !record.payload.is_empty() {
            r = r.payload(&record.payload); // empty: a tombstone, sent as a null value
        }
        if let Some(k) = &record.key {
            r = r.key(k);
        }
        if !record.headers.is_empty() {
            let headers = record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len()),
                |headers, (name, value)| {
                    headers.insert(Header {
                        key: name.as_str(),
                        value: Some(value.as_slice()),
                    })
                },
            );
            r = r.headers(headers);
        }
        loop {
            match self.producer.send(r) {
                Ok(()) => {
                    if let Some(c) = self.written.get(record.topic as usize) {
                        c.inc();
                    }
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: serve deliveries until it drains.
                    r = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    let message = format!("cannot produce to {topic}/{}: {e}", record.partition);
                    record_failure(&self.metrics, &self.first_error, message);
                    return;
                }
            }
        }
    }

    fn start_commit(&mut self, progress: &Progress) -> Result<(), String> {
        assert!(
            self.committing.is_none(),
            "a sink starts a commit only once the previous one has finished"
        );
        self.begin()?;
        let payload = serde_json::to_vec(progress).map_err(|e| e.to_string())?;
        let deferred = if self.transactional {
            let record = BaseRecord::<str, [u8]>::to(&self.progress_topic)
                .partition(0)
                .key(&self.progress_key)
                .payload(&payload);
            self.producer
                .send(record)
                .map_err(|(e, _)| format!("cannot write the progress record: {e}"))?;
            None
        } else {
            Some(ProgressRecord {
                topic: self.progress_topic.clone(),
                key: self.progress_key.clone(),
                payload,
            })
        };
        let producer = Arc::clone(&self.producer);
        let first_error = Arc::clone(&self.first_error);
        let transactional = self.transactional;
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("waterline-commit".into())
            .spawn(move || {
                let _span = span.entered();
                finish(&producer, transactional, &first_error, deferred)
            })
            .map_err(|e| format!("cannot start the commit thread: {e}"))?;
        self.committing = Some(thread);
        Ok(())
    }

    fn finish_commit(&mut self) -> Option<Result<(), String>> {
        if !self.committing.as_ref()?.is_finished() {
            return None;
        }
        Some(self.join_commit())
    }

    fn commit(&mut self, progress: &Progress) -> Result<(), String> {
        self.start_commit(progress)?;
        self.join_commit()
    }

    fn abort(&mut self) {
        if self.committing.is_some() {
            // Let the commit in flight finish (or fail) first.
            let _ = self.join_commit();
        }
        if self.transactional && self.in_transaction {
            abort_transaction(&self.producer);
            self.in_transaction = false;
        } else if let Err(e) = flush(&self.producer) {
            tracing::warn!(error = %e, "could not flush on stop");
        }
    }
}
