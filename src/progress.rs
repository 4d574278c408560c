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
//! `max_seen` restored; each worker then drops the outputs below its own frontier, which it
//! had committed, and everything at or above is produced again, identically, because the
//! dataflow is deterministic.

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
}

impl Position {
    /// The earliest timestamp at which this position is valid: `max_seen + reach + 1`
    /// (any time, when nothing was read before it).
    pub fn valid_from(&self, reach_ms: u64) -> u64 {
        self.max_seen
            .map_or(0, |m| m.saturating_add(reach_ms).saturating_add(1))
    }
}

/// One worker's committed progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The progress topic of an application.
pub fn topic(app_id: &str) -> String {
    format!("{app_id}.progress")
}

/// A stable fingerprint of everything in a dataflow that shapes its output.
pub fn fingerprint(spec: &PipelineSpec) -> String {
    let mut canonical = spec.clone();
    // Idleness changes when results appear, never what they are.
    canonical.input.idle_timeout = Duration::ZERO;
    let text = format!("{canonical:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What a job resumes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Each worker's committed frontier (0 for a worker that never committed).
    pub frontiers: Vec<u64>,
    /// Restart positions, from the record with the least frontier; empty: start fresh.
    pub positions: BTreeMap<i32, Position>,
}

impl Recovery {
    /// A job that has committed nothing.
    pub fn fresh(workers: usize) -> Recovery {
        Recovery {
            frontiers: vec![0; workers],
            positions: BTreeMap::new(),
        }
    }

    /// Combines the latest record of each worker. Refuses a changed worker count or
    /// dataflow, naming what changed.
    pub fn from_records(
        records: &BTreeMap<usize, Progress>,
        workers: usize,
        fingerprint: &str,
    ) -> Result<Recovery, String> {
        let mut recovery = Recovery::fresh(workers);
        for (w, p) in records {
            if p.workers != workers {
                return Err(format!(
                    "the job's progress was committed by {} workers and this run has {workers}; \
                     run with -w {} (changing the worker count needs a reset of the job's progress)",
                    p.workers, p.workers
                ));
            }
            if p.fingerprint != fingerprint {
                return Err(format!(
                    "the dataflow `{}` changed since its progress was committed (fingerprint {} → {fingerprint}); \
                     restore it, or reset the job's progress",
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
        if let Some((w, f)) = least
            && f > 0
            && let Some(p) = records.get(&w)
        {
            recovery.positions = p.positions.clone();
        }
        Ok(recovery)
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
    let mut latest = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
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
                },
            )]
            .into(),
        }
    }

    #[test]
    fn recovery_takes_the_positions_of_the_least_frontier() {
        let records = [(0, record(0, 500, 40)), (1, record(1, 300, 30))].into();
        let r = Recovery::from_records(&records, 2, "f").expect("compatible");
        assert_eq!(r.frontiers, vec![500, 300]);
        assert_eq!(r.positions[&0].offset, 30);
    }

    #[test]
    fn a_worker_that_never_committed_means_a_fresh_start() {
        let records = [(0, record(0, 500, 40))].into();
        let r = Recovery::from_records(&records, 2, "f").expect("compatible");
        assert_eq!(r.frontiers, vec![500, 0]);
        assert!(r.positions.is_empty());
    }

    #[test]
    fn changed_worker_counts_and_dataflows_are_refused() {
        let records = [(0, record(0, 500, 40))].into();
        let e = Recovery::from_records(&records, 4, "f").expect_err("worker count changed");
        assert!(e.contains("2 workers") && e.contains("-w 2"), "{e}");
        let e = Recovery::from_records(&records, 2, "g").expect_err("dataflow changed");
        assert!(e.contains("changed"), "{e}");
    }

    #[test]
    fn positions_are_valid_after_max_seen_plus_reach() {
        let p = Position {
            partition: 0,
            offset: 5,
            max_seen: Some(1_000),
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
}
