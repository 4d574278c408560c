//! Progress records: what each worker has committed, and where to restart from.
//!
//! Every commit of a worker's sink writes, in the same Kafka transaction as its outputs, a
//! [`Progress`] record to the compacted topic `<app_id>.progress` (key: the worker):
//! its frontier `F` — every output with a timestamp below `F` is committed — and a restart
//! [`Position`] for every input partition that is valid for `F`.
//!
//! Validity. Position `(o, m)` of partition `p` says: resume at offset `o`, with `m` the
//! greatest event time read before `o`. No record before `o` can change an output at or
//! after `m + R + 1`, where `R` is the dataflow's reach (largest window size + grace): its
//! windows close by `t + R <= m + R`, and its dead letters and late records carry a
//! watermark below `m`. So the sources send each position at time `m + R + 1`, and a sink
//! whose frontier is `F` has received every position valid for `F`.
//!
//! Recovery. Read every worker's latest record (`read_committed`); the least frontier
//! `F_min` picks the record whose positions every partition restarts from, with its
//! `max_seen` and watermark restored; each worker then drops the outputs below its own
//! frontier, which it had committed, and everything at or above is produced again,
//! identically, because the dataflow is deterministic.
//!
//! Idleness. The one input to the dataflow that is not in the partitions is the wall clock:
//! a partition idle for `idle_timeout` stops holding the watermark back, and when it wakes
//! its records are judged against the watermark it was left behind by. Those decisions
//! are recorded as [`WatermarkMove`]s: whenever a source worker's watermark rises to `h`,
//! it sends, for each of its partitions, "from offset `o` (the next to read) on, this
//! partition's watermark is at least `h`" — flagged `idle` when the partition's own
//! watermark is below `h`, that is when it is idle. A commit at frontier `F` records every
//! idle move sent below `F` and, per partition, the latest move sent below `F` (`passed`:
//! from its offset on, everything was read with the watermark at or above `F`). A resumed
//! partition replays the idle moves at their offsets and never turns idle before its
//! `passed` offset, where it takes that move's watermark; from there on, everything it
//! produces is at or above every committed frontier, so new idleness decisions are free.
//! Idle moves below the positions of the least frontier any worker is known to have
//! committed are pruned.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka::{KafkaSetupError, client_config};
use crate::spec::PipelineSpec;

/// Where to resume reading one input partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Input partition.
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
    /// Greatest event time read before `offset`, if any.
    pub max_seen: Option<u64>,
    /// The partition's watermark after reading up to `offset` (idleness can have raised it
    /// above `max_seen − max_out_of_orderness`).
    #[serde(default)]
    pub watermark: u64,
}

impl Position {
    /// A position at `offset` with nothing read before it.
    pub fn start(partition: i32, offset: i64) -> Position {
        Position {
            partition,
            offset,
            max_seen: None,
            watermark: 0,
        }
    }

    /// The earliest timestamp at which this position is valid: past every window a record
    /// before it can reach (`max_seen + reach`) and every watermark its dead letters and late
    /// records were written at.
    pub fn valid_from(&self, reach_ms: u64) -> u64 {
        let windows = self
            .max_seen
            .map_or(0, |m| m.saturating_add(reach_ms).saturating_add(1));
        let side = if self.watermark > 0 {
            self.watermark.saturating_add(1)
        } else {
            0
        };
        windows.max(side)
    }
}

/// From `offset` on, the records of `partition` were read with its watermark at or above
/// `watermark`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WatermarkMove {
    /// Input partition.
    pub partition: i32,
    /// The next offset to read when the watermark moved.
    pub offset: i64,
    /// Where the watermark moved to.
    pub watermark: u64,
}

/// What the sources tell the sinks about their partitions (broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Note {
    /// A restart position, sent at the time from which it is valid.
    Position(Position),
    /// The source's watermark moved, sent at the time it moved from; `idle`: the partition
    /// was left behind (its own watermark is lower), so the move is a decision to replay.
    Moved {
        /// The move.
        to: WatermarkMove,
        /// Whether the partition was idle.
        idle: bool,
    },
}

/// How a resumed partition replays the idleness decisions of the run that committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// Before reading each offset, raise the watermark to at least this.
    pub moves: BTreeMap<i64, u64>,
    /// Until this offset the partition never turns idle; there its watermark rises to at
    /// least the given one, and the replay is over.
    pub until: Option<(i64, u64)>,
}

/// One worker's committed progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The dataflow's name.
    pub dataflow: String,
    /// [`fingerprint`] of the dataflow: a changed dataflow is refused at recovery.
    pub fingerprint: String,
    /// This worker.
    pub worker: usize,
    /// How many workers the job has.
    pub workers: usize,
    /// Every output with a timestamp below this is committed (`u64::MAX`: all of them).
    pub frontier: u64,
    /// A restart position for every input partition, valid for `frontier`.
    pub positions: BTreeMap<i32, Position>,
    /// Idleness decisions (sent below `frontier`) that a replay must repeat.
    #[serde(default)]
    pub idle_moves: Vec<WatermarkMove>,
    /// Per input partition, the latest watermark move sent below `frontier`.
    #[serde(default)]
    pub passed: BTreeMap<i32, WatermarkMove>,
}

/// The progress topic of an application.
pub fn topic(app_id: &str) -> String {
    format!("{app_id}.progress")
}

/// A stable fingerprint of everything in a dataflow that shapes its output.
pub fn fingerprint(spec: &PipelineSpec) -> String {
    let text = canonical_text(spec);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What [`fingerprint`] hashes.
fn canonical_text(spec: &PipelineSpec) -> String {
    let mut canonical = spec.clone();
    // Idleness changes when results appear, never what they are.
    canonical.input.idle_timeout = Duration::ZERO;
    // Correlation ids change the headers outputs carry, never their keys or values; a
    // job can start or stop carrying them and resume. Left out, the fingerprint is the one
    // a dataflow had before correlation ids existed.
    canonical.input.correlation = None;
    // A dataflow without [enrich] keeps the fingerprint it had before enrichment existed.
    format!("{canonical:?}")
        .replace(", correlation: None }", " }")
        .replace(", enrich: None }", " }")
}

/// What a job resumes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Each worker's committed frontier (0 for a worker that never committed).
    pub frontiers: Vec<u64>,
    /// Restart positions, from the record with the least frontier; empty: start fresh.
    pub positions: BTreeMap<i32, Position>,
    /// What each partition replays: the idle moves of every record, and where the record
    /// with the greatest frontier says the replay ends.
    pub replay: BTreeMap<i32, Replay>,
}

impl Recovery {
    /// A job that has committed nothing.
    pub fn fresh(workers: usize) -> Recovery {
        Recovery {
            frontiers: vec![0; workers],
            positions: BTreeMap::new(),
            replay: BTreeMap::new(),
        }
    }

    /// Combines the latest record of each worker. Refuses a changed worker count, and a
    /// changed dataflow unless `fingerprint` is `None` (a reset), naming what changed.
    pub fn from_records(
        records: &BTreeMap<usize, Progress>,
        workers: usize,
        fingerprint: Option<&str>,
    ) -> Result<Recovery, String> {
        let mut recovery = Recovery::fresh(workers);
        for (w, p) in records {
            if p.workers != workers {
                return Err(format!(
                    "the job's progress was committed by {} workers and this run has {workers}; \
                     run with -w {} (with several processes: workers per process × \
                     --processes; each worker owns its output partitions' commits; a new \
                     worker count needs a new application id)",
                    p.workers, p.workers
                ));
            }
            if let Some(fingerprint) = fingerprint
                && p.fingerprint != fingerprint
            {
                return Err(format!(
                    "the dataflow `{}` changed since its progress was committed (fingerprint {} → {fingerprint}); \
                     restore it, or run with --reset to start the new dataflow from the \
                     committed frontier",
                    p.dataflow, p.fingerprint
                ));
            }
            if let Some(f) = recovery.frontiers.get_mut(*w) {
                *f = p.frontier;
            }
        }
        let least = recovery
            .frontiers
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, f)| *f);
        match least.and_then(|(w, _)| records.get(&w)) {
            Some(p) => recovery.positions = p.positions.clone(),
            // A worker without a record never started, so nobody committed past 0: any
            // record holds the starting positions every worker resolved.
            None if records.values().all(|p| p.frontier == 0) => {
                if let Some(p) = records.values().next() {
                    recovery.positions = p.positions.clone();
                }
            }
            None => {}
        }
        // Decisions are facts: every record holds those sent below its frontier, so their
        // union holds every one below the greatest frontier.
        for p in records.values() {
            for m in &p.idle_moves {
                let slot = recovery
                    .replay
                    .entry(m.partition)
                    .or_default()
                    .moves
                    .entry(m.offset)
                    .or_insert(m.watermark);
                *slot = (*slot).max(m.watermark);
            }
        }
        if let Some(greatest) = records.values().max_by_key(|p| p.frontier) {
            for (partition, m) in &greatest.passed {
                recovery.replay.entry(*partition).or_default().until =
                    Some((m.offset, m.watermark));
            }
        }
        Ok(recovery)
    }
}

impl Recovery {
    /// The idle moves to carry into a new record.
    pub fn idle_moves(&self) -> Vec<WatermarkMove> {
        self.replay
            .iter()
            .flat_map(|(partition, r)| {
                r.moves.iter().map(|(offset, watermark)| WatermarkMove {
                    partition: *partition,
                    offset: *offset,
                    watermark: *watermark,
                })
            })
            .collect()
    }

    /// Where each partition's replay ends, to carry into a new record.
    pub fn passed(&self) -> BTreeMap<i32, WatermarkMove> {
        self.replay
            .iter()
            .filter_map(|(partition, r)| {
                r.until.map(|(offset, watermark)| {
                    (
                        *partition,
                        WatermarkMove {
                            partition: *partition,
                            offset,
                            watermark,
                        },
                    )
                })
            })
            .collect()
    }
}

/// Reads the latest committed progress record of every worker.
pub fn read(config: &Config, topic: &str) -> Result<BTreeMap<usize, Progress>, KafkaSetupError> {
    let mut c = client_config(config);
    c.set("group.id", format!("{}-progress-reader", config.app_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Only what was committed counts.
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = c.create().map_err(|source| KafkaSetupError::Client {
        what: "cannot create the progress reader".into(),
        source,
    })?;
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| KafkaSetupError::Client {
            what: format!("cannot read metadata of `{topic}`"),
            source,
        })?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    // The end to read to is the high watermark, not the end a read_committed client is
    // told (the last stable offset, which stops before a transaction whose markers are not
    // written yet): the reader waits for those, so that no commit is missed.
    let mut ends_client = client_config(config);
    ends_client.set("isolation.level", "read_uncommitted");
    let ends_consumer: BaseConsumer =
        ends_client
            .create()
            .map_err(|source| KafkaSetupError::Client {
                what: "cannot create the progress reader".into(),
                source,
            })?;
    let mut latest = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = crate::kafka::settled_watermarks(&ends_consumer, topic, p, timeout)
            .map_err(|source| KafkaSetupError::Client {
                what: format!("cannot read the end of {topic}/{p}"),
                source,
            })?;
        if high > 0 {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| KafkaSetupError::Client {
                    what: "cannot assign the progress topic".into(),
                    source,
                })?;
        }
    }
    if ends.is_empty() {
        return Ok(latest);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| KafkaSetupError::Client {
            what: "cannot assign the progress topic".into(),
            source,
        })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // With read_committed the last offsets may be transaction markers: the
            // position, not a record, says when a partition is done.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset()
                        && ends.get(&e.partition()).is_some_and(|&high| o >= high)
                    {
                        ends.remove(&e.partition());
                    }
                }
            }
            continue;
        };
        let m = m.map_err(|source| KafkaSetupError::Client {
            what: "cannot read the progress topic".into(),
            source,
        })?;
        if ends
            .get(&m.partition())
            .is_some_and(|&high| m.offset() + 1 >= high)
        {
            ends.remove(&m.partition());
        }
        if let Some(p) = m
            .payload()
            .and_then(|b| serde_json::from_slice::<Progress>(b).ok())
        {
            latest.insert(p.worker, p);
        }
    }
    if !ends.is_empty() {
        return Err(KafkaSetupError::Client {
            what: format!("timed out reading `{topic}` to its end"),
            source: rdkafka::error::KafkaError::Global(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ),
        });
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_leave_the_fingerprint_alone() {
        let trades = include_str!("../dataflows/trades.toml");
        let plain = PipelineSpec::from_toml("t", trades).expect("valid");
        let traced = PipelineSpec::from_toml(
            "t",
            &trades.replace(
                "start_from = \"earliest\"",
                "start_from = \"earliest\"\ncorrelation_id = { header = \"traceparent\" }",
            ),
        )
        .expect("valid");
        assert!(traced.input.correlation.is_some());
        assert_eq!(fingerprint(&plain), fingerprint(&traced));
        // What the fingerprint hashes is what it hashed before correlation ids existed.
        let text = canonical_text(&traced);
        assert!(!text.contains("correlation"), "{text}");
        assert!(text.contains("filter: None }"), "{text}");
        let changed =
            PipelineSpec::from_toml("t", &trades.replace("grace = \"10s\"", "grace = \"11s\""))
                .expect("valid");
        assert_ne!(fingerprint(&plain), fingerprint(&changed));
    }

    fn record(worker: usize, frontier: u64, offset: i64) -> Progress {
        Progress {
            dataflow: "d".into(),
            fingerprint: "f".into(),
            worker,
            workers: 2,
            frontier,
            positions: [(
                0,
                Position {
                    partition: 0,
                    offset,
                    max_seen: Some(10),
                    watermark: 0,
                },
            )]
            .into(),
            ..Progress::default()
        }
    }

    #[test]
    fn recovery_takes_the_positions_of_the_least_frontier() {
        let records = [(0, record(0, 500, 40)), (1, record(1, 300, 30))].into();
        let r = Recovery::from_records(&records, 2, Some("f")).expect("compatible");
        assert_eq!(r.frontiers, vec![500, 300]);
        assert_eq!(r.positions[&0].offset, 30);
    }

    #[test]
    fn a_worker_that_never_committed_means_a_fresh_start() {
        let records = [(0, record(0, 500, 40))].into();
        let r = Recovery::from_records(&records, 2, Some("f")).expect("compatible");
        assert_eq!(r.frontiers, vec![500, 0]);
        assert!(r.positions.is_empty());
    }

    #[test]
    fn before_any_commit_every_worker_restarts_from_the_starting_positions() {
        let records = [(0, record(0, 0, 17))].into();
        let r = Recovery::from_records(&records, 2, Some("f")).expect("compatible");
        assert_eq!(r.frontiers, vec![0, 0]);
        assert_eq!(
            r.positions[&0].offset, 17,
            "the positions worker 0 resolved and committed before reading"
        );
    }

    #[test]
    fn changed_worker_counts_and_dataflows_are_refused() {
        let records = [(0, record(0, 500, 40))].into();
        let e = Recovery::from_records(&records, 4, Some("f")).expect_err("worker count changed");
        assert!(e.contains("2 workers") && e.contains("-w 2"), "{e}");
        let e = Recovery::from_records(&records, 2, Some("g")).expect_err("dataflow changed");
        assert!(e.contains("changed"), "{e}");
    }

    #[test]
    fn positions_are_valid_after_max_seen_plus_reach() {
        let p = Position {
            partition: 0,
            offset: 5,
            max_seen: Some(1_000),
            watermark: 0,
        };
        assert_eq!(p.valid_from(70_000), 71_001);
        assert_eq!(
            Position {
                max_seen: None,
                ..p
            }
            .valid_from(70_000),
            0
        );
    }

    #[test]
    fn recovery_replays_every_idle_move_and_ends_where_the_greatest_frontier_says() {
        let mv = |partition, offset, watermark| WatermarkMove {
            partition,
            offset,
            watermark,
        };
        let mut a = record(0, 500, 40);
        a.idle_moves = vec![mv(0, 42, 450), mv(1, 7, 300)];
        a.passed = [(0, mv(0, 60, 500))].into();
        let mut b = record(1, 900, 70);
        b.idle_moves = vec![mv(0, 42, 800), mv(0, 75, 850)];
        b.passed = [(0, mv(0, 80, 900)), (1, mv(1, 9, 950))].into();
        let r = Recovery::from_records(&[(0, a), (1, b)].into(), 2, Some("f")).expect("compatible");
        assert_eq!(
            r.positions[&0].offset, 40,
            "positions of the least frontier"
        );
        assert_eq!(
            r.replay[&0].moves,
            [(42, 800), (75, 850)].into(),
            "the union, the greatest watermark per offset"
        );
        assert_eq!(r.replay[&0].until, Some((80, 900)));
        assert_eq!(r.replay[&1].moves, [(7, 300)].into());
        assert_eq!(r.replay[&1].until, Some((9, 950)));
    }
}
