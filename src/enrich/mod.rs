//! Enrichment: a temporal join of events with a compacted reference topic.
//!
//! ```text
//!  reference topic (compacted; key = reference key)      events (source)
//!    │ partition r read by worker r % W                     │
//!    ▼                                                      │
//!  reference source ── malformed ──► dead letter            │
//!    │ Version {key, τ, e, row | tombstone} at τ            │
//!    └──(exchanged by key)──► join ◄──(exchanged by key)────┘
//!                               │ an event at T waits until the reference frontier passes T
//!                               ├─ no version ──► dead letter `missing_reference` (or passes on)
//!                               ▼
//!                         (event + reference values, wm) at T ──► windows
//! ```
//!
//! Time semantics. Each reference partition has a watermark: the greatest effective time
//! read from it (no out-of-orderness). A record with effective time `e` read when its
//! partition's watermark is `w` becomes visible at `τ = max(e, w)`. An event at time `t` is
//! joined with the version of its key that has the greatest `(e, partition, offset)` among
//! those with `τ <= t`; a tombstone (null value) is a version without a row. Since `τ >= e`,
//! no version applies before its effective time, and a version read late gets `τ = w`, so
//! it never changes a result for an event before `w` — updates are never retroactive, and
//! deterministic because `w` is.
//!
//! Quiet reference topics. A reference partition that has caught up with its end counts as
//! idle at once and stops holding the join back; the reference worker then follows the
//! events' frontier. When the partition receives a record again, its watermark is first
//! raised to the time it was left behind at, so the record's `τ` is at least that. These
//! wall-clock decisions are recorded and replayed exactly like the inputs' idle moves
//! ([`crate::progress`]); reference partitions appear there as partition `-1 - r`
//! ([`note_partition`]).
//!
//! Recovery. Outputs at or after a frontier `F` depend only on events with `t >= F − R`
//! (`R` = [`crate::spec::PipelineSpec::reach_ms`]); those need every version with `τ <= t`,
//! but the exact `τ` only of versions with `τ >= F − R`. A reference position `(o, τ_max)`
//! (`τ_max` the greatest `τ` before offset `o`) is therefore valid for `F > τ_max + R`. A
//! restart reads every reference partition from its beginning: records before `o` are the
//! *base* (visible to every event, `τ = 0`; their dead letters were committed already),
//! records from `o` on are read with the restored watermark and the replayed idle moves.
//! Until its base is read, a reference worker holds its capability where it is.
//!
//! Because the base is read from the compacted topic, a version superseded and compacted
//! away before a restart is gone: the topic needs `min.compaction.lag.ms` of at least the
//! reach, so that every version a replayed event can still select is retained.

pub mod join;
pub mod source;

use std::collections::BTreeMap;
use std::str::FromStr;

use base64::Engine;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codec::{Event, MAX_EVENT_TIME_MS, parse_decimal};
use crate::fields::{Problems, Table};
use crate::output::{DeadLetter, OutRecord, SourceRef, Topics, murmur2};
use crate::spec::{FieldSpec, FieldType, PipelineSpec, WindowSpec};
use crate::time::rfc3339_ms;

/// What to do with an event whose key has no reference version at its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissing {
    /// Write it to the dead-letter topic (kind `missing_reference`).
    DeadLetter,
    /// Pass it on without reference values.
    Null,
}

/// The `[enrich]` section of a dataflow.
#[derive(Clone, Debug)]
pub struct EnrichSpec {
    /// The compacted reference topic; a message's key is the reference key.
    pub topic: String,
    /// The event field joined on (the input's key field).
    pub key_field: String,
    /// The member of a reference value holding its effective time.
    pub effective_time_field: String,
    /// What happens to events without reference data.
    pub on_missing: OnMissing,
    /// The reference value fields added to events, with their types.
    pub fields: Vec<FieldSpec>,
    /// The enriched fields windows aggregate, as indices into `fields`; their values are
    /// appended to [`Event::values`] in this order, after the input's numeric fields.
    pub numeric: Vec<usize>,
}

/// The partition under which reference partition `r` appears in progress records (input
/// partitions are `>= 0`, reference partitions `-1 - r`).
pub fn note_partition(r: i32) -> i32 {
    -1 - r
}

/// The reference partition behind a progress-record partition, if it is one.
pub fn reference_partition(note: i32) -> Option<i32> {
    (note < 0).then(|| -1 - note)
}

/// Reads `[enrich]`, if present. `fields` are the input's declared fields, `input_key` the
/// input's key field. Problems name the field.
pub fn read(
    top: &Table,
    fields: &[FieldSpec],
    input_key: Option<&str>,
    problems: &mut Problems,
) -> Option<EnrichSpec> {
    let t = top.table("enrich", false, problems)?;
    let topic = t.string("topic", problems);
    let key_field = match (t.opt_string("key_field", problems), input_key) {
        (None, key) => key.map(str::to_string),
        (Some(k), Some(input)) if k == input => Some(k),
        (Some(k), Some(input)) => {
            problems.field(
                &t.path_of("key_field"),
                format!(
                    "joining on `{k}` is not supported: events are joined on the input's key \
                     field `{input}` (leave key_field out, or set it to `{input}`)"
                ),
            );
            None
        }
        (Some(k), None) => Some(k),
    };
    let effective = t.string("effective_time_field", problems);
    let on_missing = match t.opt_string("on_missing", problems).as_deref() {
        None | Some("dead_letter") => Some(OnMissing::DeadLetter),
        Some("null") => Some(OnMissing::Null),
        Some(other) => {
            problems.field(
                &t.path_of("on_missing"),
                format!("must be \"dead_letter\" or \"null\", found `{other}`"),
            );
            None
        }
    };
    let mut enriched = Vec::new();
    if let Some(f) = t.table("fields", true, problems) {
        for key in f.keys() {
            let Some(ty) = f.string(&key, problems) else {
                continue;
            };
            if fields.iter().any(|x| x.name == key) {
                problems.field(
                    &f.path_of(&key),
                    "is also a field of the input ([validation.fields] or [input]); \
                     give the reference field another name",
                );
            } else if effective.as_deref() == Some(key.as_str()) {
                problems.field(
                    &f.path_of(&key),
                    "is the effective_time_field, which is not added to events",
                );
            }
            match FieldType::parse(&ty) {
                Some(ty) => enriched.push(FieldSpec { name: key, ty }),
                None => problems.field(
                    &f.path_of(&key),
                    format!("unknown type `{ty}`; use string, decimal, integer, bool or timestamp"),
                ),
            }
        }
        if f.keys().is_empty() {
            problems.field(f.path(), "must declare at least one reference field");
        }
        f.finish(problems);
    }
    t.finish(problems);
    Some(EnrichSpec {
        topic: topic?,
        key_field: key_field?,
        effective_time_field: effective?,
        on_missing: on_missing?,
        fields: enriched,
        numeric: Vec::new(),
    })
}

/// After the windows were read against `fields` followed by the enriched fields:
/// separates the enriched numeric fields from the input's (`numeric_fields` keeps only
/// indices into `validation.fields`, which the decoder reads), and renumbers each window's
/// value so that enriched values follow the decoded ones in [`Event::values`].
/// Refuses windows that aggregate an enriched field when `on_missing = "null"` (such
/// events have no value to aggregate), naming the window's field.
pub fn split_numeric(
    enrich: Option<&mut EnrichSpec>,
    input_fields: usize,
    numeric_fields: &mut Vec<usize>,
    windows: &mut [WindowSpec],
    problems: &mut Problems,
) {
    let (input, enriched): (Vec<usize>, Vec<usize>) =
        numeric_fields.iter().partition(|&&i| i < input_fields);
    let renumber: Vec<usize> = numeric_fields
        .iter()
        .map(|i| match input.iter().position(|x| x == i) {
            Some(j) => j,
            None => input.len() + enriched.iter().position(|x| x == i).unwrap_or(0),
        })
        .collect();
    for (wi, w) in windows.iter_mut().enumerate() {
        if let Some(v) = w.value.as_mut() {
            let old = *v;
            *v = renumber.get(old).copied().unwrap_or(old);
            if *v >= input.len()
                && let Some(e) = enrich.as_ref()
                && e.on_missing == OnMissing::Null
            {
                let name = e
                    .fields
                    .get(numeric_fields[old] - input_fields)
                    .map_or("?", |f| f.name.as_str());
                problems.field(
                    &format!("windows[{wi}].field"),
                    format!(
                        "`{name}` comes from [enrich], whose on_missing = \"null\" leaves it \
                         without a value; use on_missing = \"dead_letter\" to aggregate it"
                    ),
                );
            }
        }
    }
    if let Some(e) = enrich {
        e.numeric = enriched.iter().map(|i| i - input_fields).collect();
    }
    *numeric_fields = input;
}

/// One value of a reference row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RefValue {
    /// A string.
    Str(String),
    /// An exact decimal (decimal and integer fields).
    Dec(Decimal),
    /// A boolean.
    Bool(bool),
    /// Epoch milliseconds.
    Time(u64),
}

/// The reference values of one key, in [`EnrichSpec::fields`] order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReferenceRow {
    /// The values.
    pub values: Vec<RefValue>,
}

/// A reference record as decoded: its effective time and its row (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Effective time, epoch ms.
    pub effective: u64,
    /// The row, `None` for a tombstone.
    pub row: Option<ReferenceRow>,
}

/// Decodes a reference value. A tombstone (null or empty value) has no effective time of
/// its own: it takes `tombstone_time` (its Kafka timestamp), deleting the key from then.
pub fn decode_reference(
    spec: &EnrichSpec,
    payload: Option<&[u8]>,
    tombstone_time: Option<i64>,
) -> Result<Decoded, String> {
    let bytes = payload.unwrap_or_default();
    if bytes.is_empty() {
        let effective = tombstone_time
            .and_then(|t| u64::try_from(t).ok())
            .ok_or("a tombstone (null value) without a timestamp cannot be placed in time")?;
        return Ok(Decoded {
            effective,
            row: None,
        });
    }
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(bytes)
        .map_err(|e| format!("the reference value is not a JSON object: {e}"))?;
    let time_raw = members
        .get(&spec.effective_time_field)
        .map(|r| r.get())
        .filter(|r| *r != "null")
        .ok_or_else(|| format!("field `{}` is missing", spec.effective_time_field))?;
    let effective = match read_ref(&spec.effective_time_field, FieldType::Timestamp, time_raw)? {
        RefValue::Time(t) => t,
        _ => unreachable!("a timestamp field reads as a time"),
    };
    let mut values = Vec::with_capacity(spec.fields.len());
    for f in &spec.fields {
        let raw = members
            .get(&f.name)
            .map(|r| r.get())
            .filter(|r| *r != "null")
            .ok_or_else(|| format!("field `{}` is missing", f.name))?;
        values.push(read_ref(&f.name, f.ty, raw)?);
    }
    Ok(Decoded {
        effective,
        row: Some(ReferenceRow { values }),
    })
}

fn read_ref(name: &str, ty: FieldType, raw: &str) -> Result<RefValue, String> {
    let quoted = raw.starts_with('"');
    let text = || serde_json::from_str::<String>(raw).map_err(|e| format!("field `{name}`: {e}"));
    let shown: String = raw.chars().take(40).collect();
    match ty {
        FieldType::String if quoted => Ok(RefValue::Str(text()?)),
        FieldType::Decimal => {
            let t = if quoted { text()? } else { raw.to_string() };
            parse_decimal(&t)
                .map(RefValue::Dec)
                .ok_or_else(|| format!("field `{name}`: `{shown}` is not an exact decimal"))
        }
        FieldType::Integer if !quoted => i64::from_str(raw)
            .map(|i| RefValue::Dec(Decimal::from(i)))
            .map_err(|_| format!("field `{name}`: `{shown}` is not a 64-bit integer")),
        FieldType::Bool if raw == "true" || raw == "false" => Ok(RefValue::Bool(raw == "true")),
        FieldType::Timestamp if quoted => {
            let s = text()?;
            chrono::DateTime::parse_from_rfc3339(&s)
                .ok()
                .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
                .filter(|t| *t <= MAX_EVENT_TIME_MS)
                .map(RefValue::Time)
                .ok_or_else(|| format!("field `{name}`: `{shown}` is not an RFC 3339 time"))
        }
        FieldType::Timestamp => u64::from_str(raw)
            .ok()
            .filter(|t| *t <= MAX_EVENT_TIME_MS)
            .map(RefValue::Time)
            .ok_or_else(|| format!("field `{name}`: `{shown}` is not epoch milliseconds")),
        _ => Err(format!("field `{name}` must be {}, got {shown}", ty.name())),
    }
}

/// Adds the reference values of `row` to `event`: the enriched numeric fields are appended
/// to its values (zero when there is no row; no window reads them then, see
/// [`split_numeric`]).
///
/// A window that aggregates an enriched `field` takes its value from there (the decoder
/// gave it zero, not having the value).
pub fn enrich(
    spec: &EnrichSpec,
    windows: &[WindowSpec],
    event: &mut Event,
    row: Option<&ReferenceRow>,
) {
    let decoded = event.values.len();
    for &i in &spec.numeric {
        let v = match row.and_then(|r| r.values.get(i)) {
            Some(RefValue::Dec(d)) => *d,
            _ => Decimal::ZERO,
        };
        event.values.push(v);
    }
    for (w, grouped) in windows.iter().zip(event.windows.iter_mut()) {
        if let (Some(j), None, Some(g)) = (w.value, &w.value_expr, grouped.as_mut())
            && j >= decoded
            && let Some(v) = event.values.get(j)
        {
            g.value = *v;
        }
    }
}

/// One version of a reference key, as the join keeps it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    /// The reference key.
    pub key: String,
    /// From this event time on the version is visible: `max(e, w)` (0 for a restart's base).
    pub tau: u64,
    /// Its effective time `e`.
    pub effective: u64,
    /// Reference partition.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The values; `None`: a tombstone.
    pub row: Option<ReferenceRow>,
}

impl Version {
    fn rank(&self) -> (u64, i32, i64) {
        (self.effective, self.partition, self.offset)
    }
}

/// The versions of every reference key, with as-of lookup.
#[derive(Clone, Debug, Default)]
pub struct VersionedTable {
    keys: BTreeMap<String, Vec<Version>>,
}

impl VersionedTable {
    /// Adds a version.
    pub fn insert(&mut self, v: Version) {
        self.keys.entry(v.key.clone()).or_default().push(v);
    }

    /// The version of `key` an event at `t` is joined with: the greatest `(e, partition,
    /// offset)` among those with `τ <= t`. `None` when there is none, or when that version is
    /// a tombstone.
    pub fn lookup(&self, key: &str, t: u64) -> Option<&ReferenceRow> {
        self.keys
            .get(key)?
            .iter()
            .filter(|v| v.tau <= t)
            .max_by_key(|v| v.rank())
            .and_then(|v| v.row.as_ref())
    }

    /// Forgets what no event at or after `cutoff` can select: per key, of the versions with
    /// `τ <= cutoff`, only the greatest survives (it hides the rest from every such event).
    pub fn prune(&mut self, cutoff: u64) {
        self.keys.retain(|_, versions| {
            let best = versions
                .iter()
                .filter(|v| v.tau <= cutoff)
                .map(Version::rank)
                .max();
            if let Some(best) = best {
                versions.retain(|v| v.tau > cutoff || v.rank() == best);
            }
            // A key whose only version is a visible tombstone is the same as no key.
            !(versions.len() == 1 && versions[0].tau <= cutoff && versions[0].row.is_none())
        });
    }

    /// How many versions are kept.
    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Whether no version is kept.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A dead letter for a reference record or an event without reference data.
#[allow(clippy::too_many_arguments)]
pub fn dead_letter(
    spec: &PipelineSpec,
    topics: &Topics,
    kind: &str,
    reason: String,
    source: SourceRef,
    payload: &[u8],
    key: Option<&[u8]>,
    rejected_at_ms: u64,
) -> OutRecord {
    let topic = topics.dead_letter;
    let n = topics.partitions[topic as usize].max(1);
    let partition = if source.partition >= 0 {
        source.partition.rem_euclid(n)
    } else {
        ((murmur2(key.unwrap_or_default()) & 0x7fff_ffff) % n).max(0)
    };
    let letter = DeadLetter {
        dataflow: spec.name.clone(),
        error_kind: kind.to_string(),
        reason,
        payload_bytes: payload.len(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
        payload_utf8: std::str::from_utf8(payload).ok().map(str::to_string),
        rejected_at: rfc3339_ms(rejected_at_ms),
        source,
    };
    OutRecord {
        topic,
        partition,
        key: key.map(<[u8]>::to_vec),
        appended_ms: crate::output::appended(&letter.source),
        payload: serde_json::to_vec(&letter).expect("a dead letter always serializes to JSON"),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, tau: u64, effective: u64, offset: i64, rate: Option<i64>) -> Version {
        Version {
            key: key.into(),
            tau,
            effective,
            partition: 0,
            offset,
            row: rate.map(|r| ReferenceRow {
                values: vec![RefValue::Dec(Decimal::from(r))],
            }),
        }
    }

    fn rate(t: &VersionedTable, key: &str, at: u64) -> Option<i64> {
        t.lookup(key, at).map(|r| match &r.values[0] {
            RefValue::Dec(d) => i64::try_from(*d).expect("small"),
            other => panic!("not a decimal: {other:?}"),
        })
    }

    #[test]
    fn lookup_is_as_of_the_event_time() {
        let mut t = VersionedTable::default();
        t.insert(v("A", 100, 100, 0, Some(1)));
        t.insert(v("A", 200, 200, 1, Some(2)));
        t.insert(v("B", 150, 150, 2, Some(7)));
        assert_eq!(rate(&t, "A", 99), None, "before the first version");
        assert_eq!(rate(&t, "A", 100), Some(1), "at its effective time");
        assert_eq!(rate(&t, "A", 199), Some(1));
        assert_eq!(rate(&t, "A", 200), Some(2));
        assert_eq!(rate(&t, "A", 10_000), Some(2));
        assert_eq!(rate(&t, "B", 149), None);
        assert_eq!(rate(&t, "C", 1_000), None, "an unknown key");
    }

    #[test]
    fn a_late_version_is_not_retroactive() {
        let mut t = VersionedTable::default();
        t.insert(v("A", 100, 100, 0, Some(1)));
        // Effective at 150 but read when the watermark was 500: visible from 500 only.
        t.insert(v("A", 500, 150, 1, Some(3)));
        assert_eq!(
            rate(&t, "A", 160),
            Some(1),
            "events before τ keep the old rate"
        );
        assert_eq!(rate(&t, "A", 499), Some(1));
        assert_eq!(rate(&t, "A", 500), Some(3));
        // A version with a later effective time but read earlier still wins from its τ on
        // when its effective time is greater.
        t.insert(v("A", 300, 300, 2, Some(4)));
        assert_eq!(rate(&t, "A", 300), Some(4));
        assert_eq!(
            rate(&t, "A", 600),
            Some(4),
            "(e, offset) decides among visible versions: 300 > 150"
        );
    }

    #[test]
    fn tombstones_delete_from_their_time_and_a_new_version_restores() {
        let mut t = VersionedTable::default();
        t.insert(v("A", 100, 100, 0, Some(1)));
        t.insert(v("A", 200, 200, 1, None));
        t.insert(v("A", 300, 300, 2, Some(5)));
        assert_eq!(rate(&t, "A", 150), Some(1));
        assert_eq!(rate(&t, "A", 200), None, "deleted");
        assert_eq!(rate(&t, "A", 299), None);
        assert_eq!(rate(&t, "A", 300), Some(5));
    }

    #[test]
    fn pruning_keeps_what_later_events_can_select() {
        let mut t = VersionedTable::default();
        t.insert(v("A", 100, 100, 0, Some(1)));
        t.insert(v("A", 200, 200, 1, Some(2)));
        t.insert(v("A", 250, 120, 2, Some(9))); // late: τ 250, e 120
        t.insert(v("A", 400, 400, 3, Some(4)));
        t.insert(v("B", 100, 100, 4, Some(1)));
        t.insert(v("B", 150, 150, 5, None));
        let before: Vec<_> = [260, 300, 399, 400, 1_000]
            .iter()
            .map(|at| rate(&t, "A", *at))
            .collect();
        t.prune(260);
        assert_eq!(t.len(), 2, "A keeps e=200 (best below 260) and e=400");
        let after: Vec<_> = [260, 300, 399, 400, 1_000]
            .iter()
            .map(|at| rate(&t, "A", *at))
            .collect();
        assert_eq!(
            before, after,
            "no event at or after the cutoff sees a change"
        );
        assert_eq!(rate(&t, "B", 300), None, "a deleted key is gone");
    }

    #[test]
    fn reference_values_decode_exactly_and_refuse_bad_ones() {
        let spec = EnrichSpec {
            topic: "r".into(),
            key_field: "symbol".into(),
            effective_time_field: "effective_from".into(),
            on_missing: OnMissing::DeadLetter,
            fields: vec![
                FieldSpec {
                    name: "rate".into(),
                    ty: FieldType::Decimal,
                },
                FieldSpec {
                    name: "flag".into(),
                    ty: FieldType::Bool,
                },
            ],
            numeric: vec![0],
        };
        let ok = decode_reference(
            &spec,
            Some(br#"{"effective_from":"2026-01-13T14:30:00Z","rate":"1.0850","flag":true}"#),
            None,
        )
        .expect("valid");
        assert_eq!(ok.effective, 1_768_314_600_000);
        assert_eq!(
            ok.row,
            Some(ReferenceRow {
                values: vec![
                    RefValue::Dec(Decimal::from_str("1.0850").expect("decimal")),
                    RefValue::Bool(true)
                ]
            })
        );
        let ms = decode_reference(
            &spec,
            Some(br#"{"effective_from":5,"rate":2,"flag":false}"#),
            None,
        )
        .expect("epoch ms");
        assert_eq!(ms.effective, 5);
        let tomb = decode_reference(&spec, None, Some(77)).expect("tombstone");
        assert_eq!(
            tomb,
            Decoded {
                effective: 77,
                row: None
            }
        );
        for (bad, needle) in [
            (&br#"{"rate":1,"flag":true}"#[..], "effective_from"),
            (br#"{"effective_from":5,"flag":true}"#, "`rate` is missing"),
            (br#"{"effective_from":5,"rate":"x","flag":true}"#, "rate"),
            (br#"{"effective_from":5,"rate":1,"flag":"yes"}"#, "flag"),
            (br#"[1,2]"#, "JSON object"),
            (b"\xff\xfe", "JSON object"),
        ] {
            let e = decode_reference(&spec, Some(bad), None).expect_err("bad");
            assert!(e.contains(needle), "{e}");
        }
        assert!(decode_reference(&spec, None, None).is_err());
    }

    #[test]
    fn enriched_numeric_fields_follow_the_decoded_ones() {
        let spec = EnrichSpec {
            topic: "r".into(),
            key_field: "k".into(),
            effective_time_field: "e".into(),
            on_missing: OnMissing::DeadLetter,
            fields: vec![
                FieldSpec {
                    name: "flag".into(),
                    ty: FieldType::Bool,
                },
                FieldSpec {
                    name: "rate".into(),
                    ty: FieldType::Decimal,
                },
            ],
            numeric: vec![1],
        };
        let mut e = Event {
            time: 1,
            key: "A".into(),
            id: "1".into(),
            values: vec![Decimal::from(10)],
            windows: Default::default(),
            correlation_id: None,
            appended_ms: 0,
        };
        let row = ReferenceRow {
            values: vec![RefValue::Bool(false), RefValue::Dec(Decimal::from(3))],
        };
        enrich(&spec, &[], &mut e, Some(&row));
        assert_eq!(e.values, vec![Decimal::from(10), Decimal::from(3)]);
    }
}
