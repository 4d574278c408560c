//! Correlation ids through the dataflow, in memory: each window result carries exactly the
//! ids of the smallest (event time, id) pairs of its events and how many had one; dead
//! letters and late records carry their record's id; all of it the same for 1, 2 and 4
//! workers, and in updates mode too. The expectations come from a naive recomputation
//! written from the rules (per-partition watermarks, lateness against end + grace, session
//! gaps, dedupe within the horizon), not from the code under test.

mod common;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use waterline::correlation::{COUNT_HEADER, ID_HEADER};
use waterline::output::{OutRecord, Topics};
use waterline::pipeline;
use waterline::spec::PipelineSpec;

const OOO_MS: u64 = 200;
const PARTITIONS: i32 = 4;
const OUT_PARTITIONS: i32 = 3;
const PER_RESULT: usize = 4;
const DEDUPE_MS: u64 = 5_000;

/// (name, size, slide, gap, grace): tumbling, hopping, and sessions (size = max_duration).
const WINDOWS: [(&str, u64, u64, u64, u64); 3] = [
    ("small", 1_000, 1_000, 0, 300),
    ("hop", 2_000, 500, 0, 200),
    ("sess", 4_000, 4_000, 150, 100),
];

fn spec(correlation: &str, emit: &str) -> PipelineSpec {
    let mut text = format!(
        r#"
name = "correlation"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = {OOO_MS}
idle_timeout = "1h"
{correlation}
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
    for (name, size, slide, gap, grace) in WINDOWS {
        let kind = if gap > 0 {
            format!("kind = \"session\"\ngap = {gap}\nmax_duration = {size}")
        } else if slide == size {
            format!("kind = \"tumbling\"\nsize = {size}")
        } else {
            format!("kind = \"hopping\"\nsize = {size}\nslide = {slide}")
        };
        text.push_str(&format!(
            "[[windows]]\nname = \"{name}\"\n{kind}\ngrace = {grace}\nfield = \"v\"\n\
             aggregates = [\"count\", \"sum\"]\ntopic = \"out-{name}\"\n{emit}\n"
        ));
    }
    PipelineSpec::from_toml("correlation", &text).expect("the test dataflow is valid")
}

const TRACED: &str = "correlation_id = { field = \"trace\" }\ncorrelation_ids_per_result = 4";

/// One input record and what the test knows about it.
#[derive(Clone, Debug)]
struct Record {
    payload: Option<Vec<u8>>,
    /// A valid event's (time, key, event id), or `None` for an invalid record.
    event: Option<(u64, String, String)>,
    /// The correlation id the record's outputs must carry.
    trace: Option<String>,
}

/// Random out-of-order events, most with a correlation id (some shared by several events,
/// some numeric, some empty or absent); a few repeat an earlier event id; a few are
/// invalid, some of those still readable enough to have an id.
fn generate(seed: u64, per_partition: usize, every_event_traced: bool) -> Vec<Vec<Record>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = ["a", "b", "c", "d", "u"];
    (0..PARTITIONS)
        .map(|p| {
            let mut clock: u64 = 1_700_000_000_000 + rng.random_range(0..2_000);
            let mut ids: Vec<String> = Vec::new();
            (0..per_partition)
                .map(|i| {
                    clock += rng.random_range(0..50);
                    let time = if rng.random_bool(0.03) {
                        clock.saturating_sub(rng.random_range(1_000..6_000)) // usually late
                    } else {
                        clock.saturating_sub(rng.random_range(0..400))
                    };
                    let key = keys[rng.random_range(0..keys.len())];
                    let (member, trace) = match rng.random_range(0..20) {
                        // Key `u` is never traced: its results carry no ids.
                        _ if key == "u" && !every_event_traced => (String::new(), None),
                        _ if every_event_traced => {
                            let t = format!("tr-{p}-{i}");
                            (format!(r#","trace":"{t}""#), Some(t))
                        }
                        0 | 1 => (String::new(), None),
                        2 => (r#","trace":"""#.to_string(), None),
                        3 => {
                            let n = rng.random_range(0..1_000u32);
                            (format!(r#","trace":{n}"#), Some(n.to_string()))
                        }
                        _ => {
                            // Few enough distinct ids that some are shared.
                            let t = format!("tr-{}", rng.random_range(0..300u32));
                            (format!(r#","trace":"{t}""#), Some(t))
                        }
                    };
                    let id = if !ids.is_empty() && rng.random_bool(0.02) {
                        ids[rng.random_range(0..ids.len())].clone()
                    } else {
                        format!("{p}-{i}")
                    };
                    ids.push(id.clone());
                    let good = format!(
                        r#"{{"id":"{id}","ts":{time},"k":"{key}","v":"{}.5"{member}}}"#,
                        i % 97
                    );
                    if every_event_traced || !rng.random_bool(0.05) {
                        return Record {
                            payload: Some(good.into_bytes()),
                            event: Some((time, key.to_string(), id)),
                            trace,
                        };
                    }
                    // Invalid: read far enough to find the id, or not.
                    let (payload, trace) = match rng.random_range(0..4) {
                        0 => (
                            Some(good.replace(r#""v":"#, r#""v":"-2000","x":"#).into_bytes()),
                            trace,
                        ),
                        1 => (
                            Some(
                                format!(r#"{{"id":"{id}","ts":{time},"k":"{key}"{member}}}"#)
                                    .into_bytes(),
                            ),
                            trace,
                        ),
                        2 => (Some(good.as_bytes()[..good.len() - 2].to_vec()), None),
                        _ => (None, None),
                    };
                    Record {
                        payload,
                        event: None,
                        trace,
                    }
                })
                .collect()
        })
        .collect()
}

/// What the outputs must carry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ids {
    /// (window, key, start) → (ids of the smallest (time, id) pairs, how many had an id).
    windows: BTreeMap<(String, String, u64), (Vec<String>, u64)>,
    /// (partition, offset) → the dead letter's id.
    dead: BTreeMap<(i32, i64), Option<String>>,
    /// (window, partition, offset) → the late record's id.
    late: BTreeMap<(String, i32, i64), Option<String>>,
}

/// (window, key, start or span) → (time, correlation id) of each event in it.
type Events = BTreeMap<(String, String, u64), Vec<(u64, Option<String>)>>;

/// The naive recomputation: each partition in offset order with its own watermark.
fn recompute(partitions: &[Vec<Record>]) -> Ids {
    let mut ids = Ids::default();
    // (window, key, start) → (time, id) of each event in it.
    let mut members: Events = BTreeMap::new();
    // Sessions: (window, key, span) → (time, id) of each on-time event.
    let mut spans: Events = BTreeMap::new();
    for (p, records) in partitions.iter().enumerate() {
        let p = p as i32;
        let mut max_seen = 0u64;
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (offset, r) in records.iter().enumerate() {
            let offset = offset as i64;
            let Some((t, key, id)) = &r.event else {
                ids.dead.insert((p, offset), r.trace.clone());
                continue;
            };
            max_seen = max_seen.max(*t);
            let wm = max_seen.saturating_sub(OOO_MS);
            let open: Vec<Vec<u64>> = WINDOWS
                .iter()
                .map(|&(_, size, slide, gap, grace)| {
                    if gap > 0 {
                        return if t + grace >= wm { vec![*t] } else { vec![] };
                    }
                    let first = (t + 1).saturating_sub(size).div_ceil(slide) * slide;
                    (first..=*t)
                        .step_by(slide as usize)
                        .filter(|s| s + size + grace > wm)
                        .collect()
                })
                .collect();
            if open.iter().any(|o| !o.is_empty()) {
                let times = seen.entry(id.clone()).or_default();
                let repeat = times.iter().any(|x| x.abs_diff(*t) <= DEDUPE_MS);
                times.push(*t);
                if repeat {
                    ids.dead.insert((p, offset), r.trace.clone());
                    continue;
                }
            }
            for (&(name, size, _, gap, _), starts) in WINDOWS.iter().zip(open) {
                if starts.is_empty() {
                    ids.late
                        .insert((name.to_string(), p, offset), r.trace.clone());
                }
                for start in starts {
                    let entry = (*t, r.trace.clone());
                    if gap > 0 {
                        spans
                            .entry((name.to_string(), key.clone(), start / size))
                            .or_default()
                            .push(entry);
                    } else {
                        members
                            .entry((name.to_string(), key.clone(), start))
                            .or_default()
                            .push(entry);
                    }
                }
            }
        }
    }
    for ((name, key, _), mut events) in spans {
        let gap = WINDOWS.iter().find(|w| w.0 == name).expect("known").3;
        events.sort();
        let mut start = events[0].0;
        let mut last = start;
        for (t, id) in events {
            if t > last + gap {
                start = t;
            }
            last = t;
            members
                .entry((name.clone(), key.clone(), start))
                .or_default()
                .push((t, id));
        }
    }
    for (window, events) in members {
        let mut traced: Vec<(u64, String)> = events
            .into_iter()
            .filter_map(|(t, id)| id.map(|id| (t, id)))
            .collect();
        traced.sort();
        let count = traced.len() as u64;
        let smallest = traced
            .into_iter()
            .take(PER_RESULT)
            .map(|(_, id)| id)
            .collect();
        ids.windows.insert(window, (smallest, count));
    }
    ids
}

/// A record's correlation ids and count header.
fn headers(r: &OutRecord) -> (Vec<String>, Option<u64>) {
    let mut ids = Vec::new();
    let mut count = None;
    for (name, value) in &r.headers {
        let value = String::from_utf8(value.clone()).expect("UTF-8 header");
        match name.as_str() {
            ID_HEADER => {
                assert!(count.is_none(), "the count comes last");
                ids.push(value);
            }
            COUNT_HEADER => count = Some(value.parse().expect("a decimal count")),
            other => panic!("unexpected header {other}"),
        }
    }
    (ids, count)
}

/// What the outputs carry, in the shape of [`Ids`]; in updates mode only final values.
fn collect(records: &[OutRecord], topics: &Topics) -> Ids {
    let mut got = Ids::default();
    for r in records {
        let v: serde_json::Value = match serde_json::from_slice(&r.payload) {
            Ok(v) => v,
            Err(_) => {
                assert!(r.payload.is_empty(), "every output but a tombstone is JSON");
                assert!(r.headers.is_empty(), "a tombstone carries no ids");
                continue;
            }
        };
        let (ids, count) = headers(r);
        let one = |ids: Vec<String>| {
            assert!(count.is_none(), "a dead letter or late record has no count");
            assert!(ids.len() <= 1, "one id per dead letter or late record");
            ids.into_iter().next()
        };
        let at = |v: &serde_json::Value| {
            (
                v["source"]["partition"].as_i64().expect("partition") as i32,
                v["source"]["offset"].as_i64().expect("offset"),
            )
        };
        match topics.names[r.topic as usize].as_str() {
            "dlq" => {
                let fresh = got.dead.insert(at(&v), one(ids)).is_none();
                assert!(fresh, "dead letter written twice: {v}");
            }
            "late" => {
                let (p, o) = at(&v);
                let window = v["window"].as_str().expect("window").to_string();
                let fresh = got.late.insert((window, p, o), one(ids)).is_none();
                assert!(fresh, "late record written twice: {v}");
            }
            _ => {
                if v["final"] == serde_json::Value::Bool(false) {
                    continue;
                }
                let window = (
                    v["window"].as_str().expect("window").to_string(),
                    v["key"].as_str().expect("key").to_string(),
                    v["window_start_ms"].as_u64().expect("start"),
                );
                let carried = match count {
                    None => {
                        assert!(ids.is_empty(), "ids come with a count");
                        (ids, 0)
                    }
                    Some(n) => {
                        assert!(n > 0, "a count of 0 is not written");
                        (ids, n)
                    }
                };
                let fresh = got.windows.insert(window, carried).is_none();
                assert!(fresh, "window emitted twice: {v}");
            }
        }
    }
    got
}

fn run(spec: &PipelineSpec, input: &[Vec<Record>], workers: usize, chunk: usize) -> Vec<OutRecord> {
    let topics = Topics::new(spec, |_| OUT_PARTITIONS);
    let parts = input
        .iter()
        .enumerate()
        .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
        .collect();
    pipeline::run_in_memory(spec, &topics, parts, workers, chunk).expect("the dataflow completes")
}

/// Records as they can be compared across runs, sorted: dead letters lose the wall-clock
/// time they were refused at; everything else, headers included, byte for byte.
fn comparable(records: &[OutRecord]) -> Vec<OutRecord> {
    let mut out: Vec<OutRecord> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.payload)
                && let Some(o) = v.as_object_mut()
                && o.remove("rejected_at").is_some()
            {
                r.payload = serde_json::to_vec(&v).expect("JSON");
            }
            r
        })
        .collect();
    out.sort();
    out
}

fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
    what: &str,
) {
    for (k, v) in expected {
        assert_eq!(got.get(k), Some(v), "{what} {k:?}");
    }
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "unexpected {what}: {extra:?}");
}

#[test]
fn results_carry_the_smallest_ids_of_their_events_for_1_2_and_4_workers() {
    let spec = spec(TRACED, "");
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    for seed in [3u64, 4] {
        let input = generate(seed, 1_200, false);
        let expected = recompute(&input);
        // The input exercises what the rule says.
        let truncated = expected
            .windows
            .values()
            .filter(|(ids, n)| *n > ids.len() as u64)
            .count();
        let untraced = expected.windows.values().filter(|(_, n)| *n == 0).count();
        let shared = expected
            .windows
            .values()
            .filter(|(ids, _)| (1..ids.len()).any(|i| ids[i..].contains(&ids[i - 1])))
            .count();
        let dead_with = expected.dead.values().filter(|id| id.is_some()).count();
        let duplicates = expected
            .dead
            .keys()
            .filter(|(p, o)| input[*p as usize][*o as usize].event.is_some())
            .count();
        let late_with = expected.late.values().filter(|id| id.is_some()).count();
        eprintln!(
            "seed {seed}: {} windows ({truncated} with more ids than kept, {untraced} without, \
             {shared} with a shared id), {} dead letters ({dead_with} with an id, {duplicates} \
             duplicates), {} late records ({late_with} with an id)",
            expected.windows.len(),
            expected.dead.len(),
            expected.late.len()
        );
        assert!(
            truncated > 20 && untraced > 0 && shared > 0,
            "windows: {truncated}, {untraced}, {shared}"
        );
        assert!(dead_with > 5 && dead_with < expected.dead.len() && duplicates > 5);
        assert!(late_with > 5);

        let mut first: Option<Vec<OutRecord>> = None;
        for workers in [1, 2, 4] {
            let chunk = 1 + (seed as usize * 31 + workers * 17) % 150;
            let records = run(&spec, &input, workers, chunk);
            let got = collect(&records, &topics);
            let what = format!("seed {seed}, {workers} workers");
            assert_same(&got.windows, &expected.windows, &format!("window ({what})"));
            assert_same(&got.dead, &expected.dead, &format!("dead letter ({what})"));
            assert_same(&got.late, &expected.late, &format!("late record ({what})"));
            let records = comparable(&records);
            match &first {
                None => first = Some(records),
                Some(one) => assert!(one == &records, "{what}: not the records of 1 worker"),
            }
        }
    }
}

#[test]
fn without_correlation_ids_outputs_are_the_same_and_carry_no_headers() {
    let input = generate(5, 600, false);
    let traced = comparable(&run(&spec(TRACED, ""), &input, 2, 40));
    let plain = comparable(&run(&spec("", ""), &input, 2, 40));
    assert!(plain.iter().all(|r| r.headers.is_empty()));
    assert!(traced.iter().any(|r| !r.headers.is_empty()));
    let strip = |v: Vec<OutRecord>| {
        let mut v: Vec<OutRecord> = v
            .into_iter()
            .map(|r| OutRecord {
                headers: Vec::new(),
                ..r
            })
            .collect();
        v.sort();
        v
    };
    assert!(strip(traced) == plain, "ids change headers only");
}

#[test]
fn updates_carry_the_ids_so_far_and_finals_the_recomputed_ones() {
    let emit = "emit = \"updates\"";
    let spec = spec(TRACED, emit);
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    // Every event traced with an id of its own: an upsert's count header is its count.
    let input = generate(6, 1_000, true);
    let time_of: BTreeMap<String, u64> = input
        .iter()
        .flatten()
        .filter_map(|r| Some((r.trace.clone()?, r.event.as_ref()?.0)))
        .collect();
    let expected = recompute(&input);
    let mut first: Option<Vec<OutRecord>> = None;
    let mut upserts = 0;
    for workers in [1, 2, 4] {
        let records = run(&spec, &input, workers, 23 + workers);
        for r in &records {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.payload) else {
                continue;
            };
            if topics.names[r.topic as usize].starts_with("out-") {
                upserts += 1;
                let (ids, count) = headers(r);
                let n = v["count"].as_u64().expect("count");
                assert_eq!(count, Some(n), "every event has an id: {v}");
                assert_eq!(ids.len() as u64, n.min(PER_RESULT as u64), "{v}");
                let pairs: Vec<(u64, &String)> = ids.iter().map(|id| (time_of[id], id)).collect();
                assert!(pairs.is_sorted(), "ids ascend by (time, id): {v}");
                let start = v["window_start_ms"].as_u64().expect("start");
                let end = v["window_end_ms"].as_u64().expect("end");
                assert!(
                    pairs.iter().all(|(t, _)| (start..end).contains(t)),
                    "ids of the window's own events: {v}"
                );
            }
        }
        let got = collect(&records, &topics);
        let what = format!("updates, {workers} workers");
        assert_same(&got.windows, &expected.windows, &format!("final ({what})"));
        assert_same(&got.late, &expected.late, &format!("late record ({what})"));
        let records = comparable(&records);
        match &first {
            None => first = Some(records),
            Some(one) => assert!(one == &records, "{what}: not the changelog of 1 worker"),
        }
    }
    assert!(
        upserts > 3 * expected.windows.len(),
        "the changelog has upserts before finals"
    );
}

/// Crashes after a few commits and resumes from the committed progress, at least twice,
/// then completes: everything committed, headers included, is what one uninterrupted run
/// commits, each record once. A run commits only when the window operators let the
/// frontier move, a dozen times or so here, and fewer when a busy machine runs several
/// moves into one commit: the crash points are small and there are three of them, so
/// that two crashes happen however the run is scheduled.
#[test]
fn ids_survive_crashes_and_replays_exactly_once() {
    let spec = spec(TRACED, "");
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    let workers = 2;
    let input = generate(8, 800, false);
    let parts: Vec<(i32, Vec<Option<Vec<u8>>>)> = input
        .iter()
        .enumerate()
        .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
        .collect();
    let whole = comparable(&run(&spec, &input, workers, 3));
    let (committed_all, crashes) = common::run_with_crashes(
        &spec,
        &topics,
        &parts,
        workers,
        &[Some(2), Some(2), Some(2), None],
    );
    assert!(crashes >= 2, "the runs crashed mid-way ({crashes} crashes)");
    let got = comparable(&committed_all);
    assert!(got.iter().any(|r| !r.headers.is_empty()));
    assert_eq!(got.len(), whole.len(), "every output once");
    assert!(got == whole, "the same outputs, headers included");
}
