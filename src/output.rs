//! What waterline writes to Kafka: window results, dead letters and late records, each
//! encoded as JSON and routed to a topic partition.
//!
//! Routing is deterministic, so a replay writes every record to the same place:
//! window results and late records go to the partition of their key (Kafka's own
//! murmur2 partitioner, so keyed consumers and Kafka Streams agree); dead letters follow
//! their source partition, keeping a partition's rejects in order.
//!
//! Decimals are written as JSON strings holding the exact value (`"50000.25"`), so no
//! consumer parses them through a binary float by accident.

use base64::Engine;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::codec::Rejection;
use crate::correlation::{Headers, record_headers};
use crate::spec::{Aggregate, PipelineSpec, WindowSpec};
use crate::time::rfc3339_ms;
use crate::window::Accumulator;

/// A record ready for Kafka.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutRecord {
    /// Index into [`Topics`].
    pub topic: u16,
    /// Partition within that topic.
    pub partition: i32,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value; empty for a tombstone (written as a null value). Every other
    /// output is a JSON document, never empty.
    pub payload: Vec<u8>,
    /// Kafka headers, in order: correlation ids ([`crate::correlation`]). Empty (and
    /// unallocated) without them. Last, so records sort as they did without headers.
    pub headers: Headers,
    /// The greatest Kafka timestamp (epoch ms) of the input records this output stems from,
    /// 0 when unknown; not written, only measured (`since="append"` latency).
    pub appended_ms: u64,
}

/// The output topics of a dataflow, each with its partition count, indexed by `u16`.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Topic names; index = `OutRecord::topic`.
    pub names: Vec<String>,
    /// Partition counts, same order.
    pub partitions: Vec<i32>,
    /// Topic index of each window's results, in `spec.windows` order.
    pub window: Vec<u16>,
    /// Topic index of dead letters.
    pub dead_letter: u16,
    /// Topic index of late records.
    pub late: u16,
}

impl Topics {
    /// The topics `spec` writes to, with partition counts from `partitions_of` (the
    /// broker's metadata, or the spec's default for topics about to be created).
    pub fn new(spec: &PipelineSpec, mut partitions_of: impl FnMut(&str) -> i32) -> Topics {
        let mut names: Vec<String> = Vec::new();
        let mut index = |name: &str| -> u16 {
            match names.iter().position(|n| n == name) {
                Some(i) => i as u16,
                None => {
                    names.push(name.to_string());
                    (names.len() - 1) as u16
                }
            }
        };
        let window = spec.windows.iter().map(|w| index(&w.topic)).collect();
        let dead_letter = index(&spec.output.dead_letter_topic);
        let late = index(&spec.output.late_topic);
        let partitions = names.iter().map(|n| partitions_of(n).max(1)).collect();
        Topics {
            names,
            partitions,
            window,
            dead_letter,
            late,
        }
    }

    fn partition_for_key(&self, topic: u16, key: &[u8]) -> i32 {
        let n = self.partitions[topic as usize];
        ((murmur2(key) & 0x7fff_ffff) as i64 % n as i64) as i32
    }
}

/// Kafka's default partitioner hash (murmur2 with Kafka's seed), as Java clients compute it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record's Kafka timestamp, if it had one.
    pub timestamp_ms: Option<i64>,
    /// The record's key, base64, if it had one.
    pub key_base64: Option<String>,
}

impl SourceRef {
    /// Describes a Kafka record.
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
    ) -> Self {
        SourceRef {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms,
            key_base64: key.map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
        }
    }
}

/// A dead letter as written to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dataflow that refused the record.
    pub dataflow: String,
    /// Stable error kind, e.g. `rule_violation`.
    pub error_kind: String,
    /// Human-readable reason.
    pub reason: String,
    /// Where the record came from.
    pub source: SourceRef,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// The raw payload, base64 (always present, lossless).
    pub payload_base64: String,
    /// The payload as text, when it is valid UTF-8.
    pub payload_utf8: Option<String>,
    /// When it was refused (wall clock, RFC 3339).
    pub rejected_at: String,
}

/// Encodes a dead letter. Its key is the source record's key; its partition follows the
/// source partition.
pub fn dead_letter(
    spec: &PipelineSpec,
    topics: &Topics,
    source: SourceRef,
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    rejection: &Rejection,
    rejected_at_ms: u64,
) -> OutRecord {
    let bytes = payload.unwrap_or_default();
    let letter = DeadLetter {
        dataflow: spec.name.clone(),
        error_kind: rejection.kind.as_str().to_string(),
        reason: rejection.reason.clone(),
        payload_bytes: bytes.len(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        payload_utf8: std::str::from_utf8(bytes).ok().map(str::to_string),
        rejected_at: rfc3339_ms(rejected_at_ms),
        source,
    };
    let topic = topics.dead_letter;
    let n = topics.partitions[topic as usize];
    OutRecord {
        topic,
        partition: letter.source.partition.rem_euclid(n),
        key: key.map(<[u8]>::to_vec),
        headers: record_headers(rejection.correlation_id.as_deref()),
        appended_ms: appended(&letter.source),
        payload: serde_json::to_vec(&letter).expect("a dead letter always serializes to JSON"),
    }
}

/// The Kafka timestamp of the record `source` names, as an append time for the metrics.
pub fn appended(source: &SourceRef) -> u64 {
    source.timestamp_ms.map_or(0, |t| t.max(0) as u64)
}

/// A late record as written to the late topic.
#[derive(Debug, Serialize, Deserialize)]
pub struct LateRecord<'a> {
    /// The dataflow.
    pub dataflow: &'a str,
    /// The window spec it was too late for.
    pub window: &'a str,
    /// Why, in words.
    pub reason: String,
    /// The record's key.
    pub key: &'a str,
    /// The record's event time (epoch ms).
    pub event_time_ms: u64,
    /// Start of the window it belonged to (epoch ms).
    pub window_start_ms: u64,
    /// End of that window (epoch ms, exclusive).
    pub window_end_ms: u64,
    /// The source partition's watermark when the record was read (epoch ms).
    pub partition_watermark_ms: u64,
    /// Where it came from.
    pub source: SourceRef,
    /// The original event, verbatim.
    #[serde(borrow)]
    pub event: &'a serde_json::value::RawValue,
}

/// Encodes a late record for `window`, keyed like a result, with the correlation id of
/// its record as a header.
#[allow(clippy::too_many_arguments)]
pub fn late_record(
    spec: &PipelineSpec,
    topics: &Topics,
    window: &WindowSpec,
    key: &str,
    event_time: u64,
    watermark: u64,
    source: SourceRef,
    payload: &[u8],
    correlation_id: Option<&str>,
) -> OutRecord {
    let (start, end) = crate::window::assign(window.kind, event_time);
    let raw_text = std::str::from_utf8(payload).unwrap_or("null");
    let event = serde_json::from_str::<&serde_json::value::RawValue>(raw_text.trim())
        .unwrap_or_else(|_| serde_json::from_str("null").expect("null is JSON"));
    let record = LateRecord {
        dataflow: &spec.name,
        window: &window.name,
        reason: match window.kind {
            crate::spec::WindowKind::Session { .. } => format!(
                "sessions of `{}` take a record until the watermark passes its time + grace {}; \
                 partition {} watermark was {}",
                window.name,
                humantime::format_duration(std::time::Duration::from_millis(window.grace_ms)),
                source.partition,
                rfc3339_ms(watermark),
            ),
            _ => format!(
                "window [{}, {}) of `{}` closed at {} (end + grace {}); partition {} watermark was {}",
                rfc3339_ms(start),
                rfc3339_ms(end),
                window.name,
                rfc3339_ms(crate::window::close_time(window, end)),
                humantime::format_duration(std::time::Duration::from_millis(window.grace_ms)),
                source.partition,
                rfc3339_ms(watermark),
            ),
        },
        key,
        event_time_ms: event_time,
        window_start_ms: start,
        window_end_ms: end,
        partition_watermark_ms: watermark,
        source,
        event,
    };
    let appended_ms = appended(&record.source);
    let topic = topics.late;
    OutRecord {
        topic,
        partition: topics.partition_for_key(topic, key.as_bytes()),
        key: Some(key.as_bytes().to_vec()),
        payload: serde_json::to_vec(&record).expect("a late record always serializes to JSON"),
        headers: record_headers(correlation_id),
        appended_ms,
    }
}

/// A closed window's result as written to its topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowResult {
    /// Window spec name.
    pub window: String,
    /// Group key.
    pub key: String,
    /// Window start, RFC 3339.
    pub window_start: String,
    /// Window end (exclusive), RFC 3339.
    pub window_end: String,
    /// Window start, epoch ms.
    pub window_start_ms: u64,
    /// Window end (exclusive), epoch ms.
    pub window_end_ms: u64,
    /// Number of events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// Exact sum.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "opt_decimal")]
    pub sum: Option<Decimal>,
    /// Least value.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "opt_decimal")]
    pub min: Option<Decimal>,
    /// Greatest value.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "opt_decimal")]
    pub max: Option<Decimal>,
    /// Average, rounded half-to-even to the window's `avg_scale`.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "opt_decimal")]
    pub avg: Option<Decimal>,
    /// Sessions: last event time − first event time, ms.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<u64>,
    /// Sessions: exactly one counted event.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bounce: Option<bool>,
    /// With `emit = "updates"`: whether this is the window's final value (absent in final
    /// mode, where every result is final).
    #[serde(rename = "final", skip_serializing_if = "Option::is_none", default)]
    pub is_final: Option<bool>,
}

mod opt_decimal {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::str::FromStr;

    pub fn serialize<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&d.normalize().to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| Decimal::from_str(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn result_of(
    window: &WindowSpec,
    key: &str,
    start: u64,
    end: u64,
    acc: &Accumulator,
) -> WindowResult {
    let has = |a| window.aggregates.contains(&a);
    WindowResult {
        window: window.name.clone(),
        key: key.to_string(),
        window_start: rfc3339_ms(start),
        window_end: rfc3339_ms(end),
        window_start_ms: start,
        window_end_ms: end,
        count: has(Aggregate::Count).then_some(acc.count),
        sum: has(Aggregate::Sum).then_some(acc.sum),
        min: has(Aggregate::Min).then_some(acc.min),
        max: has(Aggregate::Max).then_some(acc.max),
        avg: has(Aggregate::Avg).then(|| acc.avg(window.avg_scale)),
        duration_ms: has(Aggregate::Duration).then(|| acc.duration_ms()),
        bounce: has(Aggregate::Bounce).then(|| acc.bounce()),
        is_final: None,
    }
}

/// The headers of a result with aggregates `acc`: its correlation ids, if any.
fn result_headers(acc: &Accumulator) -> Headers {
    acc.ids
        .as_ref()
        .map(|ids| ids.headers())
        .unwrap_or_default()
}

/// Encodes the final result of one (key, window) of an `emit = "final"` window; its
/// message key is the group key.
pub fn window_result(
    topics: &Topics,
    window_index: usize,
    window: &WindowSpec,
    key: &str,
    start: u64,
    end: u64,
    acc: &Accumulator,
) -> OutRecord {
    let result = result_of(window, key, start, end, acc);
    let topic = topics.window[window_index];
    OutRecord {
        topic,
        partition: topics.partition_for_key(topic, key.as_bytes()),
        key: Some(key.as_bytes().to_vec()),
        payload: serde_json::to_vec(&result).expect("a window result always serializes to JSON"),
        headers: result_headers(acc),
        appended_ms: acc.appended_ms,
    }
}

/// The message key of an `emit = "updates"` window's records: the JSON array
/// `["<window>","<key>",<window_start_ms>]`, one per (key, window), so a compacted topic
/// keeps the latest value of each window and a tombstone deletes one.
pub fn update_key(window: &WindowSpec, key: &str, start: u64) -> Vec<u8> {
    serde_json::to_vec(&(&window.name, key, start)).expect("strings and integers serialize")
}

/// Encodes a changelog record of one (key, window) of an `emit = "updates"` window: its
/// value so far, or (`is_final`) its final value. Routed by the group key, like final
/// results, so one partition holds every window of a key in order.
#[allow(clippy::too_many_arguments)]
pub fn window_update(
    topics: &Topics,
    window_index: usize,
    window: &WindowSpec,
    key: &str,
    start: u64,
    end: u64,
    acc: &Accumulator,
    is_final: bool,
) -> OutRecord {
    let mut result = result_of(window, key, start, end, acc);
    result.is_final = Some(is_final);
    let topic = topics.window[window_index];
    OutRecord {
        topic,
        partition: topics.partition_for_key(topic, key.as_bytes()),
        key: Some(update_key(window, key, start)),
        payload: serde_json::to_vec(&result).expect("a window result always serializes to JSON"),
        headers: result_headers(acc),
        appended_ms: acc.appended_ms,
    }
}

/// Encodes the deletion of a (key, window) of an `emit = "updates"` window: a Kafka
/// tombstone (null value, [`OutRecord::payload`] empty) under its [`update_key`]. Written
/// for a session that merged into an earlier-starting one.
pub fn window_tombstone(
    topics: &Topics,
    window_index: usize,
    window: &WindowSpec,
    key: &str,
    start: u64,
) -> OutRecord {
    let topic = topics.window[window_index];
    OutRecord {
        topic,
        partition: topics.partition_for_key(topic, key.as_bytes()),
        key: Some(update_key(window, key, start)),
        payload: Vec::new(),
        headers: Headers::new(),
        appended_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_partitioner() {
        // Reference values from Apache Kafka's own Utils tests.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
