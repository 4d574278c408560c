//! Enrichment against a naive recomputation: random events over several partitions, and
//! reference partitions with updates (some late for their partition's watermark, some
//! tombstones, some malformed, one partition that goes quiet mid-way), through the real
//! dataflow for 1, 2 and 4 workers; then crashes at chosen commits, whose committed outputs
//! must equal one uninterrupted run's.
//!
//! The recomputation follows the rules alone: a reference record with effective time `e`
//! read when its partition's watermark (the greatest `e` before it) is `w` is visible from
//! `τ = max(e, w)`; an event at `t` takes, among its key's versions with `τ <= t`, the one
//! with the greatest `(e, partition, offset)`; a tombstone deletes; no version: a
//! `missing_reference` dead letter.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;

use waterline::output::{OutRecord, Topics};
use waterline::pipeline::{self, MemoryRun, ReferenceRun};
use waterline::progress::{self, Progress, Recovery};
use waterline::sink::memory::Committed;
use waterline::source::memory::KeyedRecord;
use waterline::spec::PipelineSpec;

const SIZE: u64 = 1_000;
const GRACE: u64 = 100;
const OOO: u64 = 150;
const KEYS: [&str; 5] = ["A", "B", "C", "D", "E"];
const PARTITIONS: i32 = 3;
const REF_PARTITIONS: i32 = 2;
const BASE: u64 = 1_700_000_000_000;

fn spec() -> PipelineSpec {
    let text = format!(
        r#"
name = "enriched"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = {OOO}
idle_timeout = "1h"
[validation.fields]
v = "decimal"
[enrich]
topic = "rates"
effective_time_field = "effective_from"
[enrich.fields]
rate = "decimal"
flag = "bool"
[[windows]]
name = "rate"
kind = "tumbling"
size = {SIZE}
grace = {GRACE}
field = "rate"
aggregates = ["count", "sum", "min", "max"]
[[windows]]
name = "v"
kind = "tumbling"
size = {SIZE}
grace = {GRACE}
field = "v"
aggregates = ["count", "sum"]
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
partitions = 3
"#
    );
    PipelineSpec::from_toml("enriched", &text).expect("the test dataflow is valid")
}

#[derive(Clone, Debug)]
struct Ev {
    t: u64,
    key: &'static str,
    v: Decimal,
}

#[derive(Clone, Debug)]
struct Rf {
    key: &'static str,
    e: u64,
    rate: Option<Decimal>,
    malformed: bool,
}

struct Input {
    events: Vec<Vec<Ev>>,
    refs: Vec<Vec<Rf>>,
    /// Reference partition 1 stalls at this offset; every record from there on is
    /// effective after the last event, so idleness cannot change which version applies.
    stall_at: usize,
}

fn generate(seed: u64, per_partition: usize) -> Input {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut last = 0;
    for p in 0..PARTITIONS {
        let mut clock = BASE + rng.random_range(0..200);
        let mut evs = Vec::new();
        for i in 0..per_partition {
            clock += rng.random_range(0..20);
            // Out of order, within the bound: never late.
            let t = clock - rng.random_range(0..OOO - 1).min(clock - BASE);
            evs.push(Ev {
                t,
                key: KEYS[rng.random_range(0..KEYS.len())],
                v: Decimal::new(rng.random_range(1..10_000), 2),
            });
            last = last.max(t);
            let _ = (p, i);
        }
        events.push(evs);
    }
    let span = last - BASE;
    let mut refs = Vec::new();
    let stall_at = 25;
    for r in 0..REF_PARTITIONS {
        let mut rs = Vec::new();
        let mut clock = BASE - 500;
        for i in 0..40 {
            let key = KEYS[rng.random_range(0..KEYS.len())];
            clock += rng.random_range(0..span / 25);
            // Some updates are effective earlier than what the partition already read: late.
            let e = if rng.random_bool(0.2) {
                clock.saturating_sub(rng.random_range(0..2_000))
            } else {
                clock
            };
            let e = if r == 1 && i >= stall_at {
                last + 1 + i as u64
            } else {
                e
            };
            rs.push(Rf {
                key,
                e,
                rate: (!rng.random_bool(0.1)).then(|| Decimal::new(rng.random_range(1..5_000), 3)),
                malformed: rng.random_bool(0.05),
            });
        }
        refs.push(rs);
    }
    Input {
        events,
        refs,
        stall_at,
    }
}

fn event_partitions(input: &Input) -> Vec<(i32, Vec<Option<Vec<u8>>>)> {
    let mut n = 0;
    input
        .events
        .iter()
        .enumerate()
        .map(|(p, evs)| {
            let payloads = evs
                .iter()
                .map(|e| {
                    n += 1;
                    Some(
                        format!(
                            r#"{{"ts":{},"k":"{}","id":"e{n}","v":"{}"}}"#,
                            e.t, e.key, e.v
                        )
                        .into_bytes(),
                    )
                })
                .collect();
            (p as i32, payloads)
        })
        .collect()
}

fn reference(input: &Input, stall: Duration) -> ReferenceRun {
    let partitions = input
        .refs
        .iter()
        .enumerate()
        .map(|(r, rs)| {
            let records = rs
                .iter()
                .map(|x| KeyedRecord {
                    key: Some(x.key.as_bytes().to_vec()),
                    payload: match (&x.rate, x.malformed) {
                        (_, true) => Some(br#"{"effective_from":"soon","rate":1}"#.to_vec()),
                        (Some(rate), false) => Some(
                            format!(
                                r#"{{"effective_from":{},"rate":"{rate}","flag":true}}"#,
                                x.e
                            )
                            .into_bytes(),
                        ),
                        (None, false) => None,
                    },
                    timestamp_ms: Some(x.e as i64),
                })
                .collect();
            (r as i32, records)
        })
        .collect();
    ReferenceRun {
        partitions,
        stalls: if stall.is_zero() {
            Vec::new()
        } else {
            vec![(1, input.stall_at, stall)]
        },
    }
}

/// What the outputs say: per (window, key, start) its aggregates, the missing-reference
/// dead letters as (key, time), and how many reference records were malformed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    windows: BTreeMap<(String, String, u64), Vec<String>>,
    missing: Vec<(String, u64)>,
    malformed: usize,
}

fn naive(input: &Input) -> Outcome {
    // Versions: (key, τ, e, partition, offset, rate).
    let mut versions = Vec::new();
    let mut malformed = 0;
    for (r, rs) in input.refs.iter().enumerate() {
        let mut w = 0;
        for (o, x) in rs.iter().enumerate() {
            if x.malformed {
                malformed += 1;
                continue;
            }
            let tau = x.e.max(w);
            w = tau;
            versions.push((x.key, tau, x.e, r as i32, o as i64, x.rate));
        }
    }
    let mut out = Outcome {
        malformed,
        ..Outcome::default()
    };
    type Acc = (u64, Decimal, Decimal, Decimal);
    let mut accs: BTreeMap<(String, String, u64), Acc> = BTreeMap::new();
    let mut add = |name: &str, key: &str, t: u64, v: Decimal| {
        let start = t - t % SIZE;
        let a = accs
            .entry((name.to_string(), key.to_string(), start))
            .or_insert((0, Decimal::ZERO, v, v));
        a.0 += 1;
        a.1 += v;
        a.2 = a.2.min(v);
        a.3 = a.3.max(v);
    };
    for e in input.events.iter().flatten() {
        let best = versions
            .iter()
            .filter(|v| v.0 == e.key && v.1 <= e.t)
            .max_by_key(|v| (v.2, v.3, v.4));
        match best.and_then(|v| v.5) {
            Some(rate) => {
                add("rate", e.key, e.t, rate);
                add("v", e.key, e.t, e.v);
            }
            None => out.missing.push((e.key.to_string(), e.t)),
        }
    }
    for ((name, key, start), (count, sum, min, max)) in accs {
        let values = if name == "rate" {
            vec![
                count.to_string(),
                sum.normalize().to_string(),
                min.normalize().to_string(),
                max.normalize().to_string(),
            ]
        } else {
            vec![count.to_string(), sum.normalize().to_string()]
        };
        out.windows.insert((name, key, start), values);
    }
    out.missing.sort();
    out
}

fn outcome(records: &[OutRecord], topics: &Topics) -> Outcome {
    let mut out = Outcome::default();
    for r in records {
        let json: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON output");
        if r.topic == topics.dead_letter {
            match json["error_kind"].as_str() {
                Some("missing_reference") => {
                    let payload: serde_json::Value = serde_json::from_str(
                        json["payload_utf8"].as_str().expect("the event as text"),
                    )
                    .expect("JSON");
                    out.missing.push((
                        payload["key"].as_str().expect("key").to_string(),
                        payload["event_time_ms"].as_u64().expect("time"),
                    ));
                }
                Some("malformed_reference") => out.malformed += 1,
                other => panic!("unexpected dead letter {other:?}: {json}"),
            }
            continue;
        }
        assert!(r.topic != topics.late, "nothing is late here: {json}");
        let name = json["window"].as_str().expect("window").to_string();
        let dec = |f: &str| {
            Decimal::from_str(json[f].as_str().expect("decimal"))
                .expect("decimal")
                .normalize()
                .to_string()
        };
        let mut values = vec![json["count"].to_string()];
        values.push(dec("sum"));
        if name == "rate" {
            values.push(dec("min"));
            values.push(dec("max"));
        }
        let key = (
            name,
            json["key"].as_str().expect("key").to_string(),
            json["window_start_ms"].as_u64().expect("start"),
        );
        assert!(
            out.windows.insert(key.clone(), values).is_none(),
            "one result per window: {key:?}"
        );
    }
    out.missing.sort();
    out
}

fn diff(got: &Outcome, expected: &Outcome) -> String {
    let mut out = Vec::new();
    for (k, v) in &got.windows {
        if expected.windows.get(k) != Some(v) {
            out.push(format!(
                "{k:?}: got {v:?}, expected {:?}",
                expected.windows.get(k)
            ));
        }
    }
    for k in expected.windows.keys() {
        if !got.windows.contains_key(k) {
            out.push(format!("{k:?}: missing"));
        }
    }
    for m in &got.missing {
        if !expected.missing.contains(m) {
            out.push(format!("unexpected missing_reference {m:?}"));
        }
    }
    for m in &expected.missing {
        if !got.missing.contains(m) {
            out.push(format!("no missing_reference for {m:?}"));
        }
    }
    if got.malformed != expected.malformed {
        out.push(format!(
            "malformed: got {}, expected {}",
            got.malformed, expected.malformed
        ));
    }
    out.join("\n")
}

fn memory_run(workers: usize, recovery: Recovery, fail_after: Option<usize>) -> MemoryRun {
    MemoryRun {
        workers,
        chunk: 3,
        recovery,
        fail_after_commits: fail_after,
        commit_interval: Duration::from_millis(1),
        stalls: Vec::new(),
    }
}

fn run(
    spec: &PipelineSpec,
    topics: &Topics,
    input: &Input,
    reference: &ReferenceRun,
    run: &MemoryRun,
) -> (Result<(), String>, Committed) {
    let committed = Arc::new(Mutex::new(Committed::default()));
    let result = pipeline::run_in_memory_enriched(
        spec,
        topics,
        event_partitions(input),
        reference,
        run,
        Arc::clone(&committed),
    );
    let c = std::mem::take(&mut *committed.lock().expect("lock"));
    (result, c)
}

#[test]
fn enriched_windows_match_a_naive_recomputation_for_1_2_and_4_workers() {
    let spec = spec();
    let topics = Topics::new(&spec, |_| 3);
    for (seed, workers) in [(1u64, 1usize), (2, 2), (3, 4)] {
        let input = generate(seed, 400);
        let expected = naive(&input);
        assert!(
            !expected.missing.is_empty() && expected.windows.len() > 20,
            "the input exercises both outcomes"
        );
        for stall in [Duration::ZERO, Duration::from_millis(300)] {
            let (result, c) = run(
                &spec,
                &topics,
                &input,
                &reference(&input, stall),
                &memory_run(workers, Recovery::fresh(workers), None),
            );
            result.expect("completes");
            let got = outcome(&c.records, &topics);
            assert!(
                got == expected,
                "seed {seed}, {workers} workers, reference stall {stall:?}: {}",
                diff(&got, &expected)
            );
        }
    }
}

fn comparable(r: &OutRecord) -> (u16, i32, Option<Vec<u8>>, String) {
    let mut json: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
    if let Some(o) = json.as_object_mut() {
        o.remove("rejected_at");
    }
    (r.topic, r.partition, r.key.clone(), json.to_string())
}

#[test]
fn crashes_and_recovery_commit_every_enriched_output_exactly_once() {
    let spec = spec();
    let topics = Topics::new(&spec, |_| 3);
    let fingerprint = progress::fingerprint(&spec);
    for (seed, workers) in [(11u64, 1usize), (12, 2), (13, 4)] {
        let input = generate(seed, 600);
        let reference = reference(&input, Duration::ZERO);
        let (result, whole) = run(
            &spec,
            &topics,
            &input,
            &reference,
            &memory_run(workers, Recovery::fresh(workers), None),
        );
        result.expect("completes");
        let mut expected: Vec<_> = whole.records.iter().map(comparable).collect();
        expected.sort();

        let mut all: Vec<OutRecord> = Vec::new();
        let mut recovery = Recovery::fresh(workers);
        let mut crashes = 0;
        let mut resumed_with_base = false;
        // Crashes at a worker's 2nd or 3rd commit: early in whatever work is left, however
        // many 1 ms commits a loaded machine makes (a threshold scaled by the whole run's
        // commit count let a run on a loaded machine finish before it).
        for fail_after in [Some(1), Some(1), Some(2), Some(2), None] {
            let (result, c) = run(
                &spec,
                &topics,
                &input,
                &reference,
                &memory_run(workers, recovery.clone(), fail_after),
            );
            all.extend(c.records);
            match (fail_after, result) {
                (None, r) => r.expect("the last run completes"),
                (Some(_), Err(_)) => crashes += 1,
                (Some(_), Ok(())) => {}
            }
            let mut latest: BTreeMap<usize, Progress> = BTreeMap::new();
            for p in c.progress {
                latest.insert(p.worker, p);
            }
            for (w, f) in recovery.frontiers.iter().enumerate() {
                latest.entry(w).or_insert_with(|| Progress {
                    dataflow: spec.name.clone(),
                    fingerprint: fingerprint.clone(),
                    worker: w,
                    workers,
                    frontier: *f,
                    positions: recovery.positions.clone(),
                    idle_moves: recovery.idle_moves(),
                    passed: recovery.passed(),
                });
            }
            latest.retain(|_, p| p.frontier > 0);
            recovery =
                Recovery::from_records(&latest, workers, Some(&fingerprint)).expect("same job");
            resumed_with_base |= recovery
                .positions
                .iter()
                .any(|(p, pos)| *p < 0 && pos.offset > 0);
        }
        assert!(
            crashes >= 2,
            "the runs crashed mid-way ({crashes}), seed {seed}"
        );
        assert!(
            resumed_with_base,
            "some restart read part of the reference topic as its base"
        );
        let mut got: Vec<_> = all.iter().map(comparable).collect();
        got.sort();
        assert_eq!(
            got.len(),
            expected.len(),
            "{workers} workers: as many outputs as one uninterrupted run"
        );
        assert_eq!(got, expected, "{workers} workers: the same outputs");
        assert_eq!(
            outcome(&all, &topics),
            naive(&input),
            "{workers} workers: and they are right"
        );
    }
}

#[test]
fn bad_enrich_sections_name_the_field() {
    let text = r#"
name = "x"
[input]
topic = "t"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "1s"
idle_timeout = "1s"
[validation.fields]
v = "decimal"
[enrich]
key_field = "id"
on_missing = "ignore"
colour = "blue"
[enrich.fields]
v = "decimal"
rate = "money"
[[windows]]
name = "w"
kind = "tumbling"
size = "1s"
field = "v"
aggregates = ["sum"]
[output]
topic = "o"
dead_letter_topic = "d"
late_topic = "l"
"#;
    let err = PipelineSpec::from_toml("bad.toml", text).expect_err("must fail");
    let all = err.problems.join("\n");
    for needle in [
        "`enrich.topic`: is required",
        "`enrich.effective_time_field`: is required",
        "`enrich.key_field`: joining on `id` is not supported",
        "`enrich.on_missing`: must be \"dead_letter\" or \"null\"",
        "`enrich.colour`: is not a known setting",
        "`enrich.fields.v`: is also a field of the input",
        "`enrich.fields.rate`: unknown type `money`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }

    let null_rate = r#"
name = "x"
[input]
topic = "t"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "1s"
idle_timeout = "1s"
[enrich]
topic = "r"
effective_time_field = "e"
on_missing = "null"
[enrich.fields]
rate = "decimal"
flag = "bool"
[[windows]]
name = "w"
kind = "tumbling"
size = "1s"
field = "rate"
aggregates = ["sum"]
[[windows]]
name = "f"
kind = "tumbling"
size = "1s"
field = "flag"
aggregates = ["sum"]
[output]
topic = "o"
dead_letter_topic = "d"
late_topic = "l"
"#;
    let err = PipelineSpec::from_toml("null.toml", null_rate).expect_err("must fail");
    let all = err.problems.join("\n");
    assert!(
        all.contains("`windows[0].field`: `rate` comes from [enrich]"),
        "{all}"
    );
    assert!(
        all.contains("`windows[1].field`: `flag` is declared as bool"),
        "{all}"
    );
}

#[test]
fn the_shipped_enriched_trades_dataflow_is_valid() {
    let spec = PipelineSpec::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dataflows/trades_enriched.toml"
    )))
    .expect("valid");
    let enrich = spec.enrich.as_ref().expect("has [enrich]");
    assert_eq!(enrich.topic, "reference_rates");
    let rate = spec
        .windows
        .iter()
        .find_map(|w| w.value.filter(|v| *v >= spec.numeric_fields.len()))
        .expect("a window aggregates the enriched rate");
    assert_eq!(rate, spec.numeric_fields.len());
}
