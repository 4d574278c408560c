//! An in-memory reader: partitions as vectors of payloads, for tests and benchmarks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Polled, Reader, RecordRef};
use crate::progress::Position;

/// A partition's payloads in offset order (`None` for a null value).
pub type Payloads = Vec<Option<Vec<u8>>>;

/// A keyed record's key and timestamp.
type Meta = (Option<Vec<u8>>, Option<i64>);

/// A record with a key and a Kafka timestamp (for reference partitions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyedRecord {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Payload, `None` for a null value (a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Kafka timestamp.
    pub timestamp_ms: Option<i64>,
}

/// Reads fixed partition contents in offset order, `chunk` records per partition at a
/// time, then reports each partition's end.
pub struct MemoryReader {
    partitions: Vec<(i32, Payloads, usize)>,
    chunk: usize,
    restored: BTreeMap<i32, Position>,
    /// Partition → (offset, how long it stalls there, when the stall began).
    stalls: BTreeMap<i32, (usize, Duration, Option<Instant>)>,
    /// Keys and timestamps of keyed partitions, by offset.
    meta: BTreeMap<i32, Vec<Meta>>,
}

impl MemoryReader {
    /// Reads `partitions` (index, payloads), interleaving them `chunk` records at a time.
    pub fn new(partitions: Vec<(i32, Payloads)>, chunk: usize) -> Self {
        MemoryReader {
            partitions: partitions.into_iter().map(|(p, v)| (p, v, 0)).collect(),
            chunk: chunk.max(1),
            restored: BTreeMap::new(),
            stalls: BTreeMap::new(),
            meta: BTreeMap::new(),
        }
    }

    /// Reads keyed partitions (a stalled partition reports [`Polled::CaughtUp`] while it
    /// stalls, as a Kafka partition read to its current end does, keyed or not).
    pub fn keyed(partitions: Vec<(i32, Vec<KeyedRecord>)>, chunk: usize) -> Self {
        let mut meta = BTreeMap::new();
        let mut payloads = Vec::new();
        for (p, records) in partitions {
            let (m, v): (Vec<_>, Vec<_>) = records
                .into_iter()
                .map(|r| ((r.key, r.timestamp_ms), r.payload))
                .unzip();
            meta.insert(p, m);
            payloads.push((p, v));
        }
        MemoryReader {
            meta,
            ..MemoryReader::new(payloads, chunk)
        }
    }

    /// Makes `partition` deliver nothing for `pause` when it reaches `offset`, as a
    /// producer that goes quiet would (to exercise idleness).
    pub fn stall(mut self, partition: i32, offset: usize, pause: Duration) -> Self {
        self.stalls.insert(partition, (offset, pause, None));
        self
    }

    /// Resumes each partition found in `positions` at its offset, with its `max_seen`.
    pub fn resume(mut self, positions: &BTreeMap<i32, Position>) -> Self {
        for (p, _, next) in self.partitions.iter_mut() {
            if let Some(pos) = positions.get(p) {
                *next = usize::try_from(pos.offset).unwrap_or(0);
                self.restored.insert(*p, *pos);
            }
        }
        self
    }
}

impl Reader for MemoryReader {
    fn partitions(&self) -> Vec<Position> {
        self.partitions
            .iter()
            .map(|(p, _, next)| {
                self.restored
                    .get(p)
                    .copied()
                    .unwrap_or_else(|| Position::start(*p, *next as i64))
            })
            .collect()
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Polled<'_>)) -> usize {
        let mut read = 0;
        for (p, records, next) in self.partitions.iter_mut() {
            if *next > records.len() {
                continue;
            }
            let mut stop = (*next + self.chunk).min(records.len());
            if let Some((at, pause, began)) = self.stalls.get_mut(p) {
                if *next < *at {
                    stop = stop.min(*at);
                } else if *next == *at && *at < records.len() {
                    let began = *began.get_or_insert_with(Instant::now);
                    if began.elapsed() < *pause {
                        f(Polled::CaughtUp(*p));
                        continue;
                    }
                }
            }
            while *next < stop && read < max {
                let meta = self.meta.get(p).and_then(|m| m.get(*next));
                f(Polled::Record(RecordRef {
                    partition: *p,
                    offset: *next as i64,
                    timestamp_ms: meta.and_then(|m| m.1),
                    key: meta.and_then(|m| m.0.as_deref()),
                    payload: records[*next].as_deref(),
                    headers: Default::default(),
                }));
                *next += 1;
                read += 1;
            }
            if *next == records.len() {
                f(Polled::End(*p));
                *next += 1;
            }
        }
        read
    }

    fn bound_to_current_end(&mut self) {}
}
