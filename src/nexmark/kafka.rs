//! Nexmark events in Kafka: produce the generator's events into a topic, and read a
//! topic back as a timely source.
//!
//! ```text
//! Generator ─► JSON (the model's tagged encoding) ─► ThreadedProducer ─► topic, partition n % P
//! topic partition p ─► worker p % W ─► decode (borrowed) ─► Event at max(date_time, wm_p)
//! ```
//!
//! Encoding: one event per record, `serde_json` of [`Event`] (`{"type":"bid",…}`); key =
//! the event number, 8 bytes big-endian; Kafka timestamp = the event's `date_time`.
//! Event `n` goes to partition `n % P`, so every partition is in event-time order.
//!
//! Source: each worker `assign`s the partitions `p` with `p % W == index` from their
//! beginning, reads them up to the end offsets they had when it started, and stops.
//! Per partition `wm_p = max date_time seen − bound`; an event enters at
//! `max(date_time, wm_p)` with `wm_p` taken before it, and the worker's capability is
//! `min wm_p` over the partitions it has not finished (dropped when all are finished), so
//! the frontier is the watermark. Records that do not decode are counted in
//! [`SourceCounts::decode_errors`] and logged (the first per worker, with partition and
//! offset), never a panic.
//!
//! End: a partition is finished when the record before its end offset arrives, or when
//! librdkafka says it reached the partition's end (`enable.partition.eof`) with the
//! consumer's position at or past the end offset: the last offsets can be transaction
//! markers or aborted records, which are never delivered as records (the position steps
//! over them). At the end with the position short of the end offset, the partition is
//! finished if its log still reaches the end offset (the offsets between hold no records)
//! and an error if not. Records at or past the end offset (the topic is still being
//! written) are skipped: not emitted, not counted.
//!
//! Errors: records deleted (retention, DeleteRecords) before they were read, or a log
//! truncated below the end offset, make the read unable to finish. The source records a
//! [`SourceError`] naming the topic, partition and offset in [`SourceCounts::error`] and
//! ends its stream; every source sharing those counts ends too, so the run stops instead
//! of waiting forever, and its output is incomplete.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use timely::dataflow::operators::generic::source;
use timely::dataflow::{Scope, StreamVec};

use super::generator::{Generator, GeneratorConfig};
use super::model::{Auction, Bid, Event, Person};
use crate::config::Config;
use crate::kafka::{self, TopicRequest};

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum NexmarkKafkaError {
    /// Creating a client or topic, or reading metadata, failed.
    #[error(transparent)]
    Setup(#[from] kafka::KafkaSetupError),
    /// The broker refused an operation.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
}

fn kafka_err(what: impl Into<String>) -> impl FnOnce(KafkaError) -> NexmarkKafkaError {
    let what = what.into();
    move |source| NexmarkKafkaError::Kafka { what, source }
}

fn client(bootstrap: &str) -> ClientConfig {
    let config = Config {
        bootstrap_servers: bootstrap.to_string(),
        app_id: "waterline-nexmark".into(),
        ..Config::default()
    };
    kafka::client_config(&config)
}

/// Writes events `0..n` of `generator` into `topic` (created with `partitions`
/// partitions and no time-based retention if missing), event `n` to partition `n % partitions`, and waits until the
/// broker has them all. Returns the bytes of payload written.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    generator: &GeneratorConfig,
    n: u64,
) -> Result<u64, NexmarkKafkaError> {
    let config = Config {
        bootstrap_servers: bootstrap.to_string(),
        ..Config::default()
    };
    kafka::ensure_topics(
        &config,
        &[TopicRequest {
            name: topic,
            partitions,
            // Kafka timestamps are the events' date_time, which can lie weeks in the past:
            // time-based retention would delete the records at its next check.
            config: vec![("retention.ms", "-1")],
        }],
    )?;
    let probe = kafka::metadata_consumer(&config)?;
    let wait = Duration::from_secs(30);
    let partitions = kafka::partition_count_after_create(&probe, topic, wait, wait)?
        .ok_or_else(|| NexmarkKafkaError::NoTopic(topic.to_string()))?;
    let producer: ThreadedProducer<DefaultProducerContext> = client(bootstrap)
        // Batches of up to 1 MiB, sent every 20 ms or when full: throughput, not latency.
        .set("linger.ms", "20")
        .set("batch.size", "1048576")
        // Room for a few seconds of records before send reports a full queue.
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        // The event order within a partition is the watermark's basis: keep it on retries.
        .set("enable.idempotence", "true")
        .create()
        .map_err(kafka_err("cannot create a Kafka producer"))?;
    let mut payload = Vec::with_capacity(1024);
    let mut bytes = 0u64;
    let events = Generator::new(generator.clone(), n);
    for i in 0..n {
        let event = events.event(i);
        payload.clear();
        serde_json::to_writer(&mut payload, &event).expect("an Event always serializes");
        bytes += payload.len() as u64;
        let key = i.to_be_bytes();
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % partitions as u64) as i32)
            .key(&key[..])
            .payload(&payload[..])
            .timestamp(event.date_time() as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(kafka_err("cannot produce")(e)),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(kafka_err("cannot flush the producer"))?;
    Ok(bytes)
}

/// A decoded record of any of the three kinds: every field optional, strings borrowed
/// from the payload unless they hold escapes. One pass, no intermediate tree (serde's
/// internally tagged enums buffer every field first).
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<u64>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    email_address: Option<Cow<'a, str>>,
    #[serde(borrow)]
    credit_card: Option<Cow<'a, str>>,
    #[serde(borrow)]
    city: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state: Option<Cow<'a, str>>,
    date_time: Option<u64>,
    #[serde(borrow)]
    extra: Option<Cow<'a, str>>,
    #[serde(borrow)]
    item_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    initial_bid: Option<u64>,
    reserve: Option<u64>,
    expires: Option<u64>,
    seller: Option<u64>,
    category: Option<u64>,
    auction: Option<u64>,
    bidder: Option<u64>,
    price: Option<u64>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
}

/// Why a payload is not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("not a Nexmark event: {0}")]
    Json(String),
    /// A field the event's type needs is missing.
    #[error("{kind} event without field `{field}`")]
    Missing {
        /// The event type.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// `type` is none of person, auction, bid.
    #[error("unknown event type `{0}`")]
    Kind(String),
}

fn need<T>(v: Option<T>, kind: &'static str, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing { kind, field })
}

fn text(
    v: Option<Cow<'_, str>>,
    kind: &'static str,
    field: &'static str,
) -> Result<String, DecodeError> {
    need(v, kind, field).map(Cow::into_owned)
}

/// Decodes one record's payload.
pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
    let w: Wire<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(match &*w.kind {
        "bid" => {
            const K: &str = "bid";
            Event::Bid(Bid {
                auction: need(w.auction, K, "auction")?,
                bidder: need(w.bidder, K, "bidder")?,
                price: need(w.price, K, "price")?,
                channel: text(w.channel, K, "channel")?,
                url: text(w.url, K, "url")?,
                date_time: need(w.date_time, K, "date_time")?,
                extra: text(w.extra, K, "extra")?,
            })
        }
        "person" => {
            const K: &str = "person";
            Event::Person(Person {
                id: need(w.id, K, "id")?,
                name: text(w.name, K, "name")?,
                email_address: text(w.email_address, K, "email_address")?,
                credit_card: text(w.credit_card, K, "credit_card")?,
                city: text(w.city, K, "city")?,
                state: text(w.state, K, "state")?,
                date_time: need(w.date_time, K, "date_time")?,
                extra: text(w.extra, K, "extra")?,
            })
        }
        "auction" => {
            const K: &str = "auction";
            Event::Auction(Auction {
                id: need(w.id, K, "id")?,
                item_name: text(w.item_name, K, "item_name")?,
                description: text(w.description, K, "description")?,
                initial_bid: need(w.initial_bid, K, "initial_bid")?,
                reserve: need(w.reserve, K, "reserve")?,
                date_time: need(w.date_time, K, "date_time")?,
                expires: need(w.expires, K, "expires")?,
                seller: need(w.seller, K, "seller")?,
                category: need(w.category, K, "category")?,
                extra: text(w.extra, K, "extra")?,
            })
        }
        other => return Err(DecodeError::Kind(other.to_string())),
    })
}

/// What the source workers read, summed over workers, and the first error that ended
/// the read early.
#[derive(Debug, Default)]
pub struct SourceCounts {
    /// Records read (below their partitions' end offsets).
    pub records: AtomicU64,
    /// Records that did not decode (skipped).
    pub decode_errors: AtomicU64,
    error: OnceLock<SourceError>,
}

impl SourceCounts {
    /// Why the read stopped before the end offsets, if it did. Every worker's source then
    /// ends its stream early, so what the dataflow emitted is incomplete.
    pub fn error(&self) -> Option<&SourceError> {
        self.error.get()
    }

    /// Keeps the first error only: it is the cause, and the ones after it are likely its
    /// consequences.
    fn fail(&self, e: SourceError) {
        if let Err(later) = self.error.set(e) {
            tracing::debug!(error = %later, "a further source error, after the first");
        }
    }
}

/// Why a topic could not be read to the end offsets it had when the read started.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    /// Records the read still needed were deleted (retention, DeleteRecords) first.
    #[error(
        "records of `{topic}` partition {partition} from offset {offset} are gone (the log now \
         starts at offset {log_start}): they were deleted before they were read"
    )]
    RecordsGone {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The first offset not read.
        offset: i64,
        /// The partition's first offset now.
        log_start: i64,
    },
    /// The partition's log now ends before the end offset it had at the start: it was
    /// truncated, and the records in between are lost.
    #[error(
        "`{topic}` partition {partition} now ends at offset {log_end}, before the end offset \
         {end} it had when the read started: records were lost"
    )]
    Truncated {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where the partition ends now.
        log_end: i64,
        /// Where it ended when the read started.
        end: i64,
    },
    /// The consumer stopped fetching for a reason the partitions' offsets do not explain.
    #[error("cannot read `{topic}` to its end ({unfinished}): {source}")]
    Consume {
        /// The topic.
        topic: String,
        /// The partitions not read to their end, each with its position.
        unfinished: String,
        /// The client's error (boxed: it is larger than the rest of the enum).
        source: Box<KafkaError>,
    },
    /// The partitions could not be assigned to the consumer.
    #[error("cannot assign partitions of `{topic}`: {source}")]
    Assign {
        /// The topic.
        topic: String,
        /// The client's error (boxed: it is larger than the rest of the enum).
        source: Box<KafkaError>,
    },
}

/// The longest a broker look-up made to explain a consumer error may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker's share of a topic, opened before the dataflow is built so that errors
/// surface as errors.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// The partitions to read and their start offsets, assigned at the source's first
    /// activation (`None` after that, or if there is nothing to read).
    assignment: Option<TopicPartitionList>,
    partitions: Vec<PartState>,
    bound_ms: u64,
    worker: usize,
}

struct PartState {
    partition: i32,
    /// The end offset at open; the read stops before it. A last stable offset (the
    /// consumer reads committed records only), so it never falls inside an open
    /// transaction.
    end: i64,
    /// The offset after the last one delivered, record or transaction marker.
    next: i64,
    done: bool,
    /// Fetching stopped for it, once done.
    paused: bool,
    max_seen: Option<u64>,
}

impl PartState {
    fn watermark(&self, bound: u64) -> u64 {
        self.max_seen.map_or(0, |m| m.saturating_sub(bound))
    }
}

/// Whether a consumer error means librdkafka has stopped fetching a partition for good:
/// with `auto.offset.reset=error`, an offset that is no longer in the log (records
/// deleted, log truncated) ends its fetching, and no record or end notice follows.
fn stops_fetching(e: &KafkaError) -> bool {
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::LogTruncation
        ),
        _ => false,
    }
}

impl TopicReader {
    /// Worker `index` of `peers`'s partitions of `topic` (`p % peers == index`), from the
    /// beginning to the end offsets they have now. `bound_ms`: the watermark's allowance
    /// for out-of-order events (0 for the in-order generator).
    ///
    /// Fetching starts at the source's first activation: nothing is buffered while the
    /// dataflow is being built, and records deleted in between are reported like those
    /// deleted mid-read, as a [`SourceError`].
    pub fn open(
        bootstrap: &str,
        topic: &str,
        index: usize,
        peers: usize,
        bound_ms: u64,
    ) -> Result<TopicReader, NexmarkKafkaError> {
        let consumer: BaseConsumer = client(bootstrap)
            // Positions come from `assign`; nothing is committed.
            .set("group.id", "waterline-nexmark")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // librdkafka's default, stated because the end offsets read below are then
            // last stable offsets: the read never waits on an open transaction.
            .set("isolation.level", "read_committed")
            // A partition's last offset can be no record (a transaction marker, aborted
            // records): the end-of-partition notice, with the consumer's position (which
            // steps over markers), says the end is reached.
            .set("enable.partition.eof", "true")
            // Records deleted before they were read are an error. librdkafka's default
            // (`largest`) jumps to the log's end, past the end offset without delivering
            // it: the read would never finish.
            .set("auto.offset.reset", "error")
            // Large fetches: the source reads a backlog as fast as it can.
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760")
            .set("queued.min.messages", "1000000")
            // As the trades source (`src/source/kafka.rs`): refetch for a partition 10 ms
            // after its queue was full, not librdkafka's default 1 s, during which a worker
            // that has drained its queue sits idle.
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .map_err(kafka_err("cannot create a Kafka consumer"))?;
        let timeout = Duration::from_secs(30);
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(kafka_err(format!(
                "cannot read metadata of topic `{topic}`"
            )))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .ok_or_else(|| NexmarkKafkaError::NoTopic(topic.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for p in (0..count as i32).filter(|p| *p as usize % peers == index) {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(kafka_err(format!("cannot read the offsets of {topic}/{p}")))?;
            let done = high <= low;
            if !done {
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(kafka_err("cannot build an assignment"))?;
            }
            partitions.push(PartState {
                partition: p,
                end: high,
                next: low,
                done,
                paused: done,
                max_seen: None,
            });
        }
        Ok(TopicReader {
            consumer,
            topic: topic.to_string(),
            assignment: (tpl.count() > 0).then_some(tpl),
            partitions,
            bound_ms,
            worker: index,
        })
    }

    fn low_watermark(&self) -> Option<u64> {
        self.partitions
            .iter()
            .filter(|p| !p.done)
            .map(|p| p.watermark(self.bound_ms))
            .min()
    }

    /// The consumer's position in `partition`: the offset after the last record or
    /// transaction marker it delivered.
    fn position(&self, partition: i32) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// librdkafka reached the end `partition` has now. That end is never below the one
    /// it had at open, so every offset before that has been delivered, as a record or a
    /// marker, unless it holds neither (compacted away, or truncated).
    fn at_eof(&mut self, partition: i32) -> Result<(), SourceError> {
        let position = self.position(partition);
        let Some(state) = self
            .partitions
            .iter_mut()
            .find(|s| s.partition == partition && !s.done)
        else {
            return Ok(());
        };
        state.next = state.next.max(position.unwrap_or(state.next));
        if state.next < state.end {
            match self
                .consumer
                .fetch_watermarks(&self.topic, partition, LOOKUP_TIMEOUT)
            {
                Ok((_, log_end)) if log_end < state.end => {
                    return Err(SourceError::Truncated {
                        topic: self.topic.clone(),
                        partition,
                        log_end,
                        end: state.end,
                    });
                }
                // The offsets stepped over held no records: nothing is missing.
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    worker = self.worker,
                    partition,
                    position = state.next,
                    end = state.end,
                    error = %e,
                    "partition read to its end short of the end offset, and its offsets \
                     cannot be checked; taking it as done"
                ),
            }
        }
        state.done = true;
        Ok(())
    }

    /// Explains an error after which librdkafka fetches no more of some partition. The
    /// error does not say which: the partitions' current offsets do.
    fn diagnose(&self, source: KafkaError) -> SourceError {
        let mut unfinished = Vec::new();
        for state in self.partitions.iter().filter(|s| !s.done) {
            let p = state.partition;
            let at = state.next.max(self.position(p).unwrap_or(state.next));
            match self
                .consumer
                .fetch_watermarks(&self.topic, p, LOOKUP_TIMEOUT)
            {
                Ok((log_start, _)) if at < log_start => {
                    return SourceError::RecordsGone {
                        topic: self.topic.clone(),
                        partition: p,
                        offset: at,
                        log_start,
                    };
                }
                Ok((_, log_end)) if log_end < state.end => {
                    return SourceError::Truncated {
                        topic: self.topic.clone(),
                        partition: p,
                        log_end,
                        end: state.end,
                    };
                }
                _ => unfinished.push(format!("partition {p} at offset {at}")),
            }
        }
        SourceError::Consume {
            topic: self.topic.clone(),
            unfinished: unfinished.join(", "),
            source: Box::new(source),
        }
    }

    /// Stops fetching the partitions that are done: a topic still being written would
    /// otherwise fill the consumer's queue with records the read skips.
    fn pause_finished(&mut self) {
        if !self.partitions.iter().any(|s| s.done && !s.paused) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for state in self.partitions.iter_mut().filter(|s| s.done && !s.paused) {
            state.paused = true;
            tpl.add_partition(&self.topic, state.partition);
        }
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::debug!(worker = self.worker, error = %e, "cannot pause finished partitions");
        }
    }
}

/// The events of `reader`'s partitions as a stream (see the module docs); counts go to
/// `counts`, and so does the error if the read cannot reach the end offsets: the stream
/// then ends early, on every worker that shares `counts`.
pub fn topic_source<'s>(
    scope: Scope<'s, u64>,
    mut reader: TopicReader,
    counts: std::sync::Arc<SourceCounts>,
) -> StreamVec<'s, u64, Event> {
    source(scope, "NexmarkKafka", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut buffer: Vec<Event> = Vec::with_capacity(1024);
        // This activation's events with their times: sorted by time before they are sent,
        // so the partitions' records of one millisecond share one message.
        let mut pending: Vec<(u64, Event)> = Vec::with_capacity(8192);
        let mut logged_error = false;
        move |output| {
            let Some(held) = cap.as_mut() else { return };
            if counts.error().is_some() {
                // A read failed, here or on another worker: the run has no complete input.
                cap = None;
                return;
            }
            if let Some(tpl) = reader.assignment.take()
                && let Err(source) = reader.consumer.assign(&tpl)
            {
                counts.fail(SourceError::Assign {
                    topic: reader.topic.clone(),
                    source: Box::new(source),
                });
                cap = None;
                return;
            }
            let mut read = 0u64;
            let mut errors = 0u64;
            let mut failed = false;
            // A bounded amount per activation, so that downstream operators run.
            for _ in 0..8192 {
                let Some(result) = reader.consumer.poll(Duration::ZERO) else {
                    break;
                };
                let message = match result {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Err(e) = reader.at_eof(p) {
                            failed = true;
                            counts.fail(e);
                            break;
                        }
                        continue;
                    }
                    Err(e) if stops_fetching(&e) => {
                        let e = reader.diagnose(e);
                        tracing::error!(worker = reader.worker, error = %e, "Kafka read failed");
                        failed = true;
                        counts.fail(e);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(worker = reader.worker, error = %e, "Kafka read error");
                        break;
                    }
                };
                let (p, offset) = (message.partition(), message.offset());
                let Some(state) = reader.partitions.iter_mut().find(|s| s.partition == p) else {
                    continue;
                };
                if offset >= state.end {
                    // Written after the read started: not this run's input.
                    continue;
                }
                state.next = state.next.max(offset + 1);
                if offset + 1 >= state.end {
                    state.done = true;
                }
                read += 1;
                let event = match decode(message.payload().unwrap_or_default()) {
                    Ok(e) => e,
                    Err(e) => {
                        errors += 1;
                        if !logged_error {
                            logged_error = true;
                            tracing::warn!(
                                worker = reader.worker,
                                partition = p,
                                offset,
                                error = %e,
                                "record skipped: it does not decode (further ones are only counted)"
                            );
                        }
                        continue;
                    }
                };
                let t = event.date_time();
                let time = t.max(state.watermark(reader.bound_ms));
                state.max_seen = Some(state.max_seen.map_or(t, |m| m.max(t)));
                pending.push((time, event));
            }
            counts.records.fetch_add(read, Ordering::Relaxed);
            counts.decode_errors.fetch_add(errors, Ordering::Relaxed);
            if failed {
                pending.clear();
                cap = None;
                return;
            }
            // Stable: each partition's records stay in offset order.
            pending.sort_by_key(|(time, _)| *time);
            let mut at = None;
            for (time, event) in pending.drain(..) {
                if at != Some(time) {
                    if let Some(a) = at.filter(|_| !buffer.is_empty()) {
                        output
                            .session(&held.delayed(&a))
                            .give_container(&mut buffer);
                        buffer.clear();
                    }
                    at = Some(time);
                }
                buffer.push(event);
            }
            if let Some(a) = at.filter(|_| !buffer.is_empty()) {
                output
                    .session(&held.delayed(&a))
                    .give_container(&mut buffer);
                buffer.clear();
            }
            reader.pause_finished();
            match reader.low_watermark() {
                None => cap = None,
                Some(wm) => {
                    if wm > *held.time() {
                        held.downgrade(&wm);
                    }
                    if read == 0 {
                        // Nothing fetched yet: look again soon, without spinning.
                        activator.activate_after(Duration::from_millis(1));
                    } else {
                        activator.activate();
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_decoder_reads_what_serde_writes() {
        for e in Generator::new(GeneratorConfig::default(), 2000) {
            let json = serde_json::to_vec(&e).expect("serializes");
            assert_eq!(decode(&json), Ok(e.clone()));
            assert_eq!(serde_json::from_slice::<Event>(&json).ok(), Some(e));
        }
    }

    #[test]
    fn escapes_are_decoded() {
        let json = br#"{"type":"bid","auction":1,"bidder":2,"price":3,"channel":"a\"b","url":"\u00e9","date_time":4,"extra":""}"#;
        match decode(json) {
            Ok(Event::Bid(b)) => assert_eq!((b.channel.as_str(), b.url.as_str()), ("a\"b", "é")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_errors_that_stop_fetching_end_the_read() {
        for code in [
            RDKafkaErrorCode::AutoOffsetReset,
            RDKafkaErrorCode::OffsetOutOfRange,
            RDKafkaErrorCode::LogTruncation,
        ] {
            assert!(
                stops_fetching(&KafkaError::MessageConsumption(code)),
                "{code:?}"
            );
        }
        // librdkafka retries these by itself.
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert!(
                !stops_fetching(&KafkaError::MessageConsumption(code)),
                "{code:?}"
            );
        }
        assert!(!stops_fetching(&KafkaError::PartitionEOF(0)));
    }

    #[test]
    fn bad_records_name_what_is_wrong() {
        assert_eq!(
            decode(br#"{"type":"bid","auction":1}"#),
            Err(DecodeError::Missing {
                kind: "bid",
                field: "bidder"
            })
        );
        assert_eq!(
            decode(br#"{"type":"ask"}"#),
            Err(DecodeError::Kind("ask".into()))
        );
        assert!(matches!(decode(b"{"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(br#"{"type":"bid","price":-1}"#),
            Err(DecodeError::Json(_))
        ));
    }
}
