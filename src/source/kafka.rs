//! Reading assigned Kafka partitions.
//!
//! Partitions are `assign`ed (never `subscribe`d): which worker reads which partition is
//! decided by waterline (`p % W`), not by a group rebalance. In a bounded run each
//! partition stops at the end offset it had when the run started (or when a drain was
//! requested), which the reader reports as [`Polled::End`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::{Polled, Reader, RecordHeaders, RecordRef};
use crate::config::Config;
use crate::kafka::{KafkaSetupError, client_config};
use crate::metrics::Metrics;
use crate::progress::Position;

#[derive(Debug, Default)]
struct PartitionState {
    /// Offset after the last record read, once one was read.
    next: Option<i64>,
    /// Stop when `next` reaches this (bounded runs).
    end: Option<i64>,
    /// The reader has reported the end.
    ended: bool,
    /// librdkafka reported the end of the log and no record came since.
    at_eof: bool,
}

/// Routes librdkafka's errors to tracing, except the end-of-partition notices that
/// `enable.partition.eof` asks for: those are expected, and handled in [`KafkaReader::poll`].
/// They are served by `poll` on the worker's thread, inside its span.
pub struct SourceContext {
    metrics: Option<Metrics>,
    topic: String,
    /// Partitions whose fetcher had reached the end of the log at the last statistics,
    /// not yet reported by [`KafkaReader::poll`].
    fetched_to_end: Mutex<Vec<i32>>,
}

impl ClientContext for SourceContext {
    /// The client's statistics (every `statistics.interval.ms`): each assigned partition's
    /// last stable offset, the end consumer lag is measured to, and whether its fetcher
    /// has reached it.
    fn stats(&self, statistics: Statistics) {
        let mut at_end = Vec::new();
        for (topic, t) in &statistics.topics {
            for (p, partition) in &t.partitions {
                if *p < 0 || partition.ls_offset < 0 {
                    continue;
                }
                if let Some(metrics) = &self.metrics {
                    metrics.partition_end(topic, *p, partition.ls_offset);
                }
                if *topic == self.topic && fetched_to(partition.next_offset, partition.ls_offset) {
                    at_end.push(*p);
                }
            }
        }
        if !at_end.is_empty() {
            lock(&self.fetched_to_end).extend(at_end);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(topic = %self.topic, error = %error, reason, "Kafka consumer error");
        }
    }
}

impl ConsumerContext for SourceContext {}

/// Whether a partition's fetcher, about to fetch from `next_offset`, has everything up to
/// `end` (the last stable offset the broker gave in its latest answer): the reader is then
/// behind by at most what librdkafka has prefetched (`queued.min.messages`), and caught up
/// once it has read that.
///
/// This is how a run learns that it keeps up with its input when fetches are held for
/// `fetch.min.bytes` and so almost never come back empty, the only time librdkafka raises
/// its end-of-partition notice.
fn fetched_to(next_offset: i64, end: i64) -> bool {
    next_offset >= 0 && end >= 0 && next_offset >= end
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave a list of partition numbers half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads one worker's partitions of the input topic.
pub struct KafkaReader {
    consumer: BaseConsumer<SourceContext>,
    topic: String,
    starts: Vec<Position>,
    partitions: BTreeMap<i32, PartitionState>,
    last_error_log: Option<Instant>,
    last_group_commit: Instant,
    group_committed_at_end: bool,
}

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);
const GROUP_COMMIT_EVERY: Duration = Duration::from_secs(1);

impl KafkaReader {
    /// Assigns `starts` (partitions of `topic`, each at the position it resumes from);
    /// with `ends`, each partition stops before the offset given for it.
    pub fn new(
        config: &Config,
        topic: &str,
        starts: &[Position],
        ends: Option<&BTreeMap<i32, i64>>,
        worker: usize,
        metrics: Option<Metrics>,
    ) -> Result<KafkaReader, KafkaSetupError> {
        let mut c = client_config(config);
        c.set("group.id", &config.app_id)
            // Positions are chosen by waterline, never by the group's committed offsets.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Bounded runs need to know when a partition has been read to its end.
            .set("enable.partition.eof", "true")
            // Only committed records of transactional producers are input.
            .set("isolation.level", "read_committed")
            // A partition whose stored position has been deleted restarts from the oldest data.
            .set("auto.offset.reset", "earliest")
            // End offsets for the consumer-lag metric, and whether the fetcher has reached
            // them: a run is live while its source caught up within the last second
            // (`sink::Prompt`), so four times a second.
            .set("statistics.interval.ms", "250")
            // Each fetch waits until 64 KiB are there, or 10 ms. With the default of one
            // byte, a broker answers a consumer that keeps up with every few records: live
            // at 82k trades/s on this project's 2-core machine, 64 KiB / 10 ms took the
            // run from 0.40-0.42 cores to 0.28-0.30 and the broker from 0.57-0.58 to
            // 0.38-0.41; at 252k/s, 5% and 13% less. 10 ms bounds what it adds to latency.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "10")
            // When a partition's local queue is over its thresholds, librdkafka waits this
            // long before fetching for it again (default 1 s). A worker that consumes more
            // slowly than the broker delivers (decoding costs more than fetching) then
            // drains the queue and sits idle for most of that second: `run --until end` of
            // 1M trades took 9 s with the default and 4 s with 10 ms (one worker, this
            // project's 2-core machine). 10 ms refetches as soon as there is room.
            .set("fetch.queue.backoff.ms", "10")
            // Records prefetched per partition (default 100,000). A worker behind its
            // input kept its queues full: 260 MiB resident in a 2-worker backfill, with
            // every record's fresh allocation zeroing new pages on the fetching thread.
            // 10,000 is still two full fetches (1 MiB) of 200-byte records per partition;
            // the backfill then peaked at 170-190 MiB and used 5-9% less CPU.
            .set("queued.min.messages", "10000")
            .set(
                "client.id",
                format!("waterline-{}-source-{worker}", config.app_id),
            );
        for (k, v) in &config.kafka_properties {
            c.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> = c
            .create_with_context(SourceContext {
                metrics,
                topic: topic.to_string(),
                fetched_to_end: Mutex::new(Vec::new()),
            })
            .map_err(|source| KafkaSetupError::Client {
                what: "cannot create the Kafka consumer".into(),
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for start in starts {
            // Explicit offsets, resolved by the caller before any consumer is assigned: the
            // recorded position is then exactly where reading starts.
            tpl.add_partition_offset(topic, start.partition, Offset::Offset(start.offset))
                .map_err(|source| KafkaSetupError::Client {
                    what: format!("cannot assign partition {}", start.partition),
                    source,
                })?;
        }
        consumer
            .assign(&tpl)
            .map_err(|source| KafkaSetupError::Client {
                what: format!("cannot assign partitions of `{topic}`"),
                source,
            })?;
        let mut reader = KafkaReader {
            consumer,
            topic: topic.to_string(),
            starts: starts.to_vec(),
            partitions: starts
                .iter()
                .map(|s| {
                    let state = PartitionState {
                        next: Some(s.offset),
                        ..PartitionState::default()
                    };
                    (s.partition, state)
                })
                .collect(),
            last_error_log: None,
            last_group_commit: Instant::now(),
            group_committed_at_end: false,
        };
        if let Some(ends) = ends {
            for (p, state) in reader.partitions.iter_mut() {
                let end = ends.get(p).copied().unwrap_or(i64::MAX);
                state.end = Some(end);
                if state.next.is_some_and(|next| next >= end) {
                    state.at_eof = true;
                }
            }
        }
        Ok(reader)
    }

    /// Sets every unfinished partition's end to its current high watermark.
    fn bound(&mut self) -> Result<(), KafkaSetupError> {
        for (&p, state) in self.partitions.iter_mut() {
            if state.ended {
                continue;
            }
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, WATERMARK_TIMEOUT)
                .map_err(|source| KafkaSetupError::Client {
                    what: format!("cannot read the end offset of {}/{p}", self.topic),
                    source,
                })?;
            state.end = Some(high);
            if state.next.unwrap_or(low).max(low) >= high {
                state.at_eof = true;
            }
        }
        Ok(())
    }
}

impl KafkaReader {
    /// Commits the read positions to the consumer group, about once a second and when
    /// every partition has ended, so standard lag tools (kafka-consumer-groups, Burrow)
    /// see the job. Informational only: restarts use the progress records, and these
    /// offsets run ahead of what was committed downstream.
    fn commit_group_offsets(&mut self) {
        let all_ended = self.partitions.values().all(|s| s.ended);
        if self.group_committed_at_end
            || (!all_ended && self.last_group_commit.elapsed() < GROUP_COMMIT_EVERY)
        {
            return;
        }
        self.last_group_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (&p, state) in &self.partitions {
            if let Some(next) = state.next {
                let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(next));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let mode = if all_ended {
            self.group_committed_at_end = true;
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::debug!(topic = %self.topic, error = %e, "consumer-group offset commit failed (informational)");
        }
    }
}

impl Reader for KafkaReader {
    fn partitions(&self) -> Vec<Position> {
        self.starts.clone()
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Polled<'_>)) -> usize {
        // Report partitions that are already at their end (empty, or bounded at start).
        for (&p, state) in self.partitions.iter_mut() {
            if !state.ended
                && state.end.is_some()
                && state.at_eof
                && state.next.unwrap_or(0) >= state.end.unwrap_or(0)
            {
                state.ended = true;
                f(Polled::End(p));
            }
        }
        let mut read = 0;
        // Whether everything the client had fetched was handed over.
        let mut drained = false;
        while read < max {
            match self.consumer.poll(Duration::ZERO) {
                None => {
                    drained = true;
                    break;
                }
                Some(Ok(m)) => {
                    read += 1;
                    let p = m.partition();
                    let Some(state) = self.partitions.get_mut(&p) else {
                        continue;
                    };
                    if state.ended {
                        continue;
                    }
                    if let Some(end) = state.end
                        && m.offset() >= end
                    {
                        // The bound fell on a gap (a transaction marker, a compacted record).
                        state.ended = true;
                        f(Polled::End(p));
                        continue;
                    }
                    state.next = Some(m.offset() + 1);
                    state.at_eof = false;
                    f(Polled::Record(RecordRef {
                        partition: p,
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key(),
                        payload: m.payload(),
                        headers: RecordHeaders::Kafka(&m),
                    }));
                    if let Some(end) = state.end
                        && m.offset() + 1 >= end
                    {
                        state.ended = true;
                        f(Polled::End(p));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // The notice may predate the bound (the reader caught up once, then more
                    // was written): only the consumer's position, which also steps over
                    // transaction markers, says whether the bound is reached.
                    let position = self.consumer.position().ok().and_then(|tpl| {
                        tpl.find_partition(&self.topic, p)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            })
                    });
                    if let Some(state) = self.partitions.get_mut(&p) {
                        state.at_eof = true;
                        if let Some(o) = position {
                            state.next = Some(state.next.map_or(o, |n| n.max(o)));
                        }
                        if !state.ended
                            && let Some(end) = state.end
                            && state.next.unwrap_or(0) >= end
                        {
                            state.ended = true;
                            f(Polled::End(p));
                        }
                        if !state.ended {
                            f(Polled::CaughtUp(p));
                        }
                    }
                }
                Some(Err(e)) => {
                    // Transient broker trouble: librdkafka retries by itself. Log, at most
                    // once a second, and keep going.
                    let now = Instant::now();
                    if self
                        .last_error_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_error_log = Some(now);
                        tracing::warn!(topic = %self.topic, error = %e, "consumer error; retrying");
                    }
                    break;
                }
            }
        }
        // A fetcher at the end, and nothing fetched left unread: everything written up to
        // that statistics report has been read, as an end-of-partition notice would say. An
        // `[enrich]` reference relies on that (it turns idle at once). Not drained, the next
        // report will tell.
        let fetched_to_end = std::mem::take(&mut *lock(&self.consumer.context().fetched_to_end));
        if drained {
            for p in fetched_to_end {
                if self.partitions.get(&p).is_some_and(|s| !s.ended) {
                    f(Polled::CaughtUp(p));
                }
            }
        }
        self.commit_group_offsets();
        read
    }

    fn bound_to_current_end(&mut self) {
        if let Err(e) = self.bound() {
            tracing::error!(error = %e, "cannot bound the input to its current end; reading on");
        }
    }
}
