//! The reference test: the dataflow's output on random, out-of-order input with late and
//! invalid records, compared with a naive batch recomputation written from the rules
//! alone (per-partition watermarks, lateness against end + grace, exact sums), for 1, 2
//! and 4 workers.

mod common;

use common::{
    Dedupe, Expected, Input, Win, absorb, assert_matches, recompute_deduped, recompute_with_late,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;

use waterline::output::{OutRecord, Topics, murmur2};
use waterline::pipeline;
use waterline::spec::PipelineSpec;

const OOO_MS: u64 = 200;
/// The windows of the test dataflow: two tumbling, one hopping, one of sessions.
const WINDOWS: [Win; 4] = [
    Win {
        name: "small",
        size: 1_000,
        slide: 1_000,
        gap: 0,
        grace: 300,
        avg_scale: 2,
    },
    Win {
        name: "large",
        size: 5_000,
        slide: 5_000,
        gap: 0,
        grace: 0,
        avg_scale: 3,
    },
    Win {
        name: "hop",
        size: 2_000,
        slide: 500,
        gap: 0,
        grace: 200,
        avg_scale: 4,
    },
    Win {
        name: "sess",
        size: 4_000,
        slide: 4_000,
        gap: 150,
        grace: 100,
        avg_scale: 2,
    },
];
/// The tumbling ones: with idleness the test knows only which records were late for a
/// whole window spec, not for which of a hopping record's windows.
const TUMBLING: [Win; 2] = [WINDOWS[0], WINDOWS[1]];
const PARTITIONS: i32 = 5;
const DEDUPE_MS: u64 = 10_000;
const DEDUPE: Dedupe = Dedupe {
    field: "id",
    horizon: DEDUPE_MS,
    dead_letter: true,
};
const OUT_PARTITIONS: i32 = 3;

fn spec() -> PipelineSpec {
    spec_with("1h", &WINDOWS)
}

fn spec_with(idle_timeout: &str, windows: &[Win]) -> PipelineSpec {
    let mut text = format!(
        r#"
name = "reference"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = {OOO_MS}
idle_timeout = "{idle_timeout}"
[validation.fields]
v = "decimal"
[[validation.rules]]
field = "v"
ge = "-1000"
[dedupe]
horizon = {DEDUPE_MS}
dead_letter = true
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
partitions = {OUT_PARTITIONS}
"#
    );
    for w in windows {
        let kind = if w.gap > 0 {
            format!(
                "kind = \"session\"\ngap = {}\nmax_duration = {}",
                w.gap, w.size
            )
        } else if w.slide == w.size {
            format!("kind = \"tumbling\"\nsize = {}", w.size)
        } else {
            format!("kind = \"hopping\"\nsize = {}\nslide = {}", w.size, w.slide)
        };
        text.push_str(&format!(
            r#"[[windows]]
name = "{}"
{kind}
grace = {}
field = "v"
aggregates = ["count", "sum", "min", "max", "avg"]
avg_scale = {}
topic = "out-{}"
"#,
            w.name, w.grace, w.avg_scale, w.name
        ));
    }
    PipelineSpec::from_toml("reference", &text).expect("the test dataflow is valid")
}

fn generate(seed: u64, per_partition: usize) -> Vec<Vec<Input>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    (0..PARTITIONS)
        .map(|p| {
            let mut clock: u64 = 1_700_000_000_000 + rng.random_range(0..3_000);
            let mut out: Vec<Input> = Vec::with_capacity(per_partition);
            // Offsets of the valid records so far.
            let mut valid: Vec<usize> = Vec::new();
            for i in 0..per_partition {
                if !valid.is_empty() && rng.random_bool(0.03) {
                    // A retry: an earlier record, byte for byte, usually a recent one.
                    let window = if rng.random_bool(0.8) { 30 } else { 3_000 };
                    let back = rng.random_range(1..=valid.len().min(window));
                    out.push(out[valid[valid.len() - back]].clone());
                    continue;
                }
                let reused = if !valid.is_empty() && rng.random_bool(0.02) {
                    let window = if rng.random_bool(0.7) {
                        300
                    } else {
                        valid.len()
                    };
                    let back = rng.random_range(1..=valid.len().min(window));
                    let earlier = &out[valid[valid.len() - back]];
                    let v: serde_json::Value =
                        serde_json::from_slice(earlier.payload.as_deref().expect("valid"))
                            .expect("JSON");
                    v["id"].as_str().map(str::to_string)
                } else {
                    None
                };
                clock += rng.random_range(0..60);
                let roll: f64 = rng.random();
                let time = if roll < 0.03 {
                    clock.saturating_sub(rng.random_range(1_000..8_000)) // far behind: usually late
                } else {
                    clock.saturating_sub(rng.random_range(0..400)) // within or just past the bound
                };
                let key = keys[rng.random_range(0..keys.len())].to_string();
                let scale = rng.random_range(0..4u32);
                let mantissa: i64 = rng.random_range(-999..500_000); // ≥ -999 passes the rule `v >= -1000`
                let value = Decimal::new(mantissa, scale);
                let v_json = if rng.random_bool(0.5) {
                    value.to_string()
                } else {
                    format!("\"{value}\"")
                };
                let ts_json = if rng.random_bool(0.3) {
                    let t =
                        chrono::DateTime::from_timestamp_millis(time as i64).expect("valid time");
                    format!(
                        "\"{}\"",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    )
                } else {
                    time.to_string()
                };
                // Now and then an id is used again for another event: a duplicate only
                // when the two are within the horizon.
                let id = reused.unwrap_or_else(|| format!("{p}-{i}"));
                let good = format!(r#"{{"id":"{id}","ts":{ts_json},"k":"{key}","v":{v_json}}}"#);
                let input = if rng.random_bool(0.04) {
                    let (payload, kind): (Option<Vec<u8>>, &str) = match rng.random_range(0..6) {
                        0 => (None, "empty_payload"),
                        1 => (
                            Some(good.as_bytes()[..good.len() - 3].to_vec()),
                            "malformed_json",
                        ),
                        2 => (
                            Some(
                                format!(r#"{{"id":"x","ts":{ts_json},"k":"{key}"}}"#).into_bytes(),
                            ),
                            "missing_field",
                        ),
                        3 => (
                            Some(
                                format!(r#"{{"id":"x","ts":{ts_json},"k":"{key}","v":"-1000.5"}}"#)
                                    .into_bytes(),
                            ),
                            "rule_violation",
                        ),
                        4 => (Some(vec![b'{', 0xc3, 0x28, b'}']), "not_utf8"),
                        _ => (
                            Some(
                                format!(r#"{{"id":"x","ts":{ts_json},"k":7,"v":1}}"#).into_bytes(),
                            ),
                            "wrong_type",
                        ),
                    };
                    Input {
                        payload,
                        truth: Err(kind),
                    }
                } else {
                    Input {
                        payload: Some(good.into_bytes()),
                        truth: Ok((time, key, value)),
                    }
                };
                if input.truth.is_ok() {
                    valid.push(out.len());
                }
                out.push(input);
            }
            out
        })
        .collect()
}

/// Reads what the dataflow wrote, checking routing on the way.
fn collect(records: &[OutRecord], topics: &Topics) -> Expected {
    let mut got = Expected::default();
    for r in records {
        let name = &topics.names[r.topic as usize];
        let n = topics.partitions[r.topic as usize];
        let v: serde_json::Value =
            serde_json::from_slice(&r.payload).expect("every output is JSON");
        let role = match name.as_str() {
            "dlq" => {
                let p = v["source"]["partition"].as_i64().expect("partition") as i32;
                assert_eq!(
                    r.partition,
                    p % n,
                    "dead letters follow their source partition"
                );
                assert!(v["payload_base64"].is_string());
                "dead"
            }
            "late" => "late",
            "out-small" | "out-large" | "out-hop" | "out-sess" => "window",
            other => panic!("unexpected topic {other}"),
        };
        if role != "dead" {
            let key = v["key"].as_str().expect("key");
            assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
            assert_eq!(
                r.partition,
                (murmur2(key.as_bytes()) & 0x7fff_ffff) % n,
                "keyed records go to their key's partition"
            );
        }
        absorb(&mut got, role, &r.payload);
    }
    got
}

fn run(input: &[Vec<Input>], workers: usize, chunk: usize) -> (Vec<OutRecord>, Topics) {
    let spec = spec();
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    let parts = input
        .iter()
        .enumerate()
        .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
        .collect();
    let records = pipeline::run_in_memory(&spec, &topics, parts, workers, chunk)
        .expect("the dataflow completes");
    (records, topics)
}

#[test]
fn windows_match_a_naive_recomputation_for_1_2_and_4_workers() {
    for seed in 0..4u64 {
        let input = generate(seed, 1_500);
        let expected = recompute_deduped(&input, OOO_MS, &WINDOWS, DEDUPE);
        assert!(
            expected.late.len() > 20,
            "the input exercises lateness ({})",
            expected.late.len()
        );
        assert!(expected.dead.len() > 20, "the input exercises dead letters");
        let duplicates = expected.dead.iter().filter(|d| d.2 == "duplicate").count();
        assert!(
            duplicates > 100,
            "the input exercises dedupe ({duplicates} duplicates)"
        );
        assert!(expected.windows.len() > 50);
        let sessions: Vec<u64> = expected
            .windows
            .iter()
            .filter(|(k, _)| k.0 == "sess")
            .map(|(_, v)| v.0)
            .collect();
        assert!(
            sessions.len() > 50 && sessions.iter().any(|c| *c >= 3) && sessions.contains(&1),
            "the input exercises sessions of one and of many records ({} sessions)",
            sessions.len()
        );
        for workers in [1, 2, 4] {
            let chunk = 1 + (seed as usize * 37 + workers * 11) % 200;
            let (records, topics) = run(&input, workers, chunk);
            let got = collect(&records, &topics);
            assert_matches(&got, &expected, &format!("seed {seed}, {workers} workers"));
        }
    }
}

#[test]
fn output_bytes_do_not_depend_on_the_worker_count_or_read_interleaving() {
    let input = generate(99, 800);
    let (one, topics) = run(&input, 1, 7);
    assert_eq!(
        topics.names,
        vec![
            "out-small",
            "out-large",
            "out-hop",
            "out-sess",
            "dlq",
            "late"
        ]
    );
    let sorted = |mut v: Vec<OutRecord>| {
        // Dead letters carry the wall-clock time they were refused; everything else is a
        // pure function of the input.
        v.retain(|r| r.topic != topics.dead_letter);
        v.sort();
        v
    };
    // Eight workers for five partitions: three have none and must release at once.
    let (eight, _) = run(&input, 8, 131);
    assert_eq!(sorted(one), sorted(eight));
}

/// An output as it can be compared across runs: dead letters lose the wall-clock time they
/// were refused at; everything else is compared byte for byte.
fn comparable(r: &OutRecord) -> (u16, i32, Option<Vec<u8>>, Vec<u8>) {
    let mut payload = r.payload.clone();
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.payload)
        && let Some(o) = v.as_object_mut()
        && o.remove("rejected_at").is_some()
    {
        payload = serde_json::to_vec(&v).expect("JSON");
    }
    (r.topic, r.partition, r.key.clone(), payload)
}

/// Crashes (a commit fails, every worker stops) after a few commits, resumes from the
/// committed progress, crashes again, and finally completes. What was committed across all
/// runs must be exactly what one uninterrupted run commits: nothing twice, nothing missing.
#[test]
fn crashes_and_recovery_commit_every_output_exactly_once() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use waterline::pipeline::MemoryRun;
    use waterline::progress::Recovery;
    use waterline::sink::memory::Committed;

    let spec = spec();
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    for (seed, workers) in [(7u64, 1usize), (8, 2), (9, 4)] {
        let input = generate(seed, 1_200);
        let parts: Vec<(i32, Vec<Option<Vec<u8>>>)> = input
            .iter()
            .enumerate()
            .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
            .collect();
        let mut whole: Vec<_> = run(&input, workers, 50).0.iter().map(comparable).collect();
        whole.sort();

        // Crash points spread over a run: how many commits does one make?
        let counted = Arc::new(Mutex::new(Committed::default()));
        let uninterrupted = MemoryRun {
            workers,
            chunk: 3,
            recovery: Recovery::fresh(workers),
            fail_after_commits: None,
            commit_interval: Duration::from_millis(1),
            stalls: Vec::new(),
        };
        pipeline::run_in_memory_with(
            &spec,
            &topics,
            parts.clone(),
            &uninterrupted,
            Arc::clone(&counted),
        )
        .expect("completes");
        let n = (counted.lock().expect("lock").progress.len() / workers).max(8);
        let runs = [
            Some(1),
            Some(n / 4),
            Some(n / 8),
            Some(n / 2),
            Some(n / 3),
            Some(n / 2),
            None,
        ];
        let (committed_all, crashes) =
            common::run_with_crashes(&spec, &topics, &parts, workers, &runs);
        assert!(
            crashes >= 2,
            "the runs crashed mid-way ({crashes} crashes), seed {seed}"
        );
        let mut got: Vec<_> = committed_all.iter().map(comparable).collect();
        got.sort();
        let missing = whole.iter().filter(|r| !got.contains(r)).count();
        assert_eq!(
            got.len(),
            whole.len(),
            "{workers} workers: {missing} missing, and the rest duplicated"
        );
        assert_eq!(
            got, whole,
            "{workers} workers: the committed outputs equal one uninterrupted run's"
        );
    }
}

/// A partition goes quiet mid-run, long enough to turn idle: the others move the watermark
/// on, and its records after the pause are judged late against it — a wall-clock decision.
/// The run crashes at various points and resumes; the resumed partition, which pauses at
/// another offset this time, must repeat the recorded decisions and no others, so that
/// across both runs every valid record is in its window or in the late topic, exactly
/// once, and every window is exact.
#[test]
fn idleness_decisions_are_replayed_after_a_crash() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use waterline::pipeline::MemoryRun;
    use waterline::progress::{self, Recovery};
    use waterline::sink::memory::Committed;

    let spec = spec_with("2ms", &TUMBLING);
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    let workers = 2;
    let input = generate(21, 3_000);
    let parts: Vec<(i32, Vec<Option<Vec<u8>>>)> = input
        .iter()
        .enumerate()
        .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
        .collect();
    let without_idleness = recompute_deduped(&input, OOO_MS, &TUMBLING, DEDUPE);
    let stalls = vec![(1, 300, Duration::from_millis(200))];
    let resumed_stalls = vec![(1, 150, Duration::from_millis(100))];
    let mut idled = 0;
    for fail_after in [2, 3, 6, 10, 20, 30, 45, 60, 80] {
        let mut all: Vec<OutRecord> = Vec::new();
        let mut recovery = Recovery::fresh(workers);
        for crash in [Some(fail_after), None] {
            let committed = Arc::new(Mutex::new(Committed::default()));
            let run = MemoryRun {
                workers,
                chunk: 20,
                recovery: recovery.clone(),
                fail_after_commits: crash,
                commit_interval: Duration::from_millis(1),
                // The resumed run pauses elsewhere: left to itself, it would find the
                // partition idle where it was not, and active where it was idle.
                stalls: if crash.is_some() {
                    stalls.clone()
                } else {
                    resumed_stalls.clone()
                },
            };
            let result = pipeline::run_in_memory_with(
                &spec,
                &topics,
                parts.clone(),
                &run,
                Arc::clone(&committed),
            );
            if crash.is_none() {
                result.expect("the resumed run completes");
            }
            let c = std::mem::take(&mut *committed.lock().expect("lock"));
            all.extend(c.records);
            let mut latest = std::collections::BTreeMap::new();
            for p in c.progress {
                latest.insert(p.worker, p);
            }
            recovery =
                Recovery::from_records(&latest, workers, Some(&progress::fingerprint(&spec)))
                    .expect("same job");
        }
        let got = collect(&all, &topics);
        assert!(
            got.late.is_superset(&without_idleness.late),
            "crash after {fail_after} commits: idleness only adds late records"
        );
        eprintln!(
            "crash after {fail_after} commits: {} late, {} without idleness",
            got.late.len(),
            without_idleness.late.len()
        );
        if got.late.len() > without_idleness.late.len() {
            idled += 1;
        }
        let expected = recompute_with_late(&input, &TUMBLING, &got.late, Some(DEDUPE));
        assert_matches(
            &got,
            &expected,
            &format!("crash after {fail_after} commits"),
        );
    }
    assert!(
        idled >= 5,
        "the quiet partition turned idle and its records were late in most runs ({idled})"
    );
}
