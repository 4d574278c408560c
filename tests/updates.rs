//! `emit = "updates"`: the changelog of every window kind on random, out-of-order input
//! with late and invalid records, compared with a naive recomputation written from the
//! documented rules alone, for 1, 2 and 4 workers and two update intervals.
//!
//! The rules, as the README states them: a record read from partition `p` at watermark
//! `wm` (greatest event time of `p` so far, itself included, minus the out-of-orderness)
//! shows at `max(t, wm)` rounded up to the update interval, and before its window closes
//! (sessions: at `t + grace` at the latest, before any session it can join closes). Each step of the changelog,
//! per message key `[window, key, start]`, is an upsert with the aggregates of the records
//! shown so far, when they changed; a window's last record is its final value
//! (`"final": true`) or, for a session merged into an earlier-starting one, a tombstone.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};

use waterline::output::{OutRecord, Topics, murmur2};
use waterline::pipeline;
use waterline::spec::PipelineSpec;

const OOO: u64 = 200;
const PARTITIONS: i32 = 4;
const OUT_PARTITIONS: i32 = 3;

#[derive(Clone, Copy)]
struct Win {
    name: &'static str,
    /// Window size; for sessions the span they are cut at (`max_duration`).
    size: u64,
    slide: u64,
    /// Sessions: the gap (0: not sessions).
    gap: u64,
    grace: u64,
}

const WINDOWS: [Win; 3] = [
    Win {
        name: "tumble",
        size: 1_000,
        slide: 1_000,
        gap: 0,
        grace: 300,
    },
    Win {
        name: "hop",
        size: 2_000,
        slide: 500,
        gap: 0,
        grace: 200,
    },
    Win {
        name: "sess",
        size: 4_000,
        slide: 4_000,
        gap: 300,
        grace: 100,
    },
];

/// (count, sum, min, max, avg), or `None` for a tombstone; and whether it is final.
type Step = (Option<(u64, Decimal, Decimal, Decimal, Decimal)>, bool);
/// Message key (window, key, start) → its records in the order written.
type Changelog = BTreeMap<(String, String, u64), Vec<Step>>;

fn spec(interval: u64) -> PipelineSpec {
    let mut text = format!(
        r#"
name = "updates"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = {OOO}
idle_timeout = "1h"
[validation.fields]
v = "decimal"
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
partitions = {OUT_PARTITIONS}
"#
    );
    for w in WINDOWS {
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
avg_scale = 2
emit = "updates"
update_interval = {interval}
topic = "out-{}"
"#,
            w.name, w.grace, w.name
        ));
    }
    PipelineSpec::from_toml("updates", &text).expect("the test dataflow is valid")
}

/// Per partition, payloads and the valid events among them as (time, key, value).
type Partition = Vec<(Option<Vec<u8>>, Option<(u64, String, Decimal)>)>;

fn generate(seed: u64, per_partition: usize) -> Vec<Partition> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..PARTITIONS)
        .map(|p| {
            let mut clock: u64 = 1_700_000_000_000 + rng.random_range(0..2_000);
            (0..per_partition)
                .map(|i| {
                    clock += rng.random_range(0..80);
                    let time = if rng.random_bool(0.03) {
                        clock.saturating_sub(rng.random_range(1_000..6_000)) // usually late
                    } else {
                        clock.saturating_sub(rng.random_range(0..400))
                    };
                    let key = format!("k{}", rng.random_range(0..20));
                    let value =
                        Decimal::new(rng.random_range(-500..100_000), rng.random_range(0..3));
                    if rng.random_bool(0.02) {
                        let bad = format!(r#"{{"id":"{p}-{i}","ts":{time},"k":"{key}"}}"#);
                        return (Some(bad.into_bytes()), None);
                    }
                    let good =
                        format!(r#"{{"id":"{p}-{i}","ts":{time},"k":"{key}","v":"{value}"}}"#);
                    (Some(good.into_bytes()), Some((time, key, value)))
                })
                .collect()
        })
        .collect()
}

fn round_up(at: u64, interval: u64) -> u64 {
    if interval <= 1 {
        at
    } else {
        at.div_ceil(interval) * interval
    }
}

fn aggregates(values: &[Decimal]) -> (u64, Decimal, Decimal, Decimal, Decimal) {
    let count = values.len() as u64;
    let sum: Decimal = values.iter().sum();
    let avg = (sum / Decimal::from(count))
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    let min = *values.iter().min().expect("non-empty");
    let max = *values.iter().max().expect("non-empty");
    (
        count,
        sum.normalize(),
        min.normalize(),
        max.normalize(),
        avg.normalize(),
    )
}

/// Sessions of one key within one span: start → values, from (time, value) records.
fn sessionize(mut records: Vec<(u64, Decimal)>, gap: u64) -> BTreeMap<u64, Vec<Decimal>> {
    records.sort();
    let mut out: BTreeMap<u64, Vec<Decimal>> = BTreeMap::new();
    let mut start = 0;
    let mut last: Option<u64> = None;
    for (t, v) in records {
        if last.is_none_or(|l| t > l + gap) {
            start = t;
        }
        last = Some(t);
        out.entry(start).or_default().push(v);
    }
    out
}

/// (window, key, window start or session span).
type Slot<'w> = (&'w str, String, u64);

/// The changelog the rules prescribe.
fn recompute(input: &[Partition], interval: u64) -> Changelog {
    // Per window: (key, start) → (show time, value) for windows; (key, span) → (show
    // time, event time, value) for sessions.
    let mut windows: BTreeMap<Slot<'_>, Vec<(u64, Decimal)>> = BTreeMap::new();
    let mut sessions: BTreeMap<Slot<'_>, Vec<(u64, u64, Decimal)>> = BTreeMap::new();
    for records in input {
        let mut max_seen = 0;
        for (_, truth) in records {
            let Some((t, key, v)) = truth else { continue };
            max_seen = max_seen.max(*t);
            let wm = max_seen.saturating_sub(OOO);
            for w in WINDOWS {
                if w.gap > 0 {
                    if t + w.grace < wm {
                        continue; // late
                    }
                    let span = t - t % w.size;
                    let at = round_up((*t).max(wm), interval).min(t + w.grace);
                    sessions
                        .entry((w.name, key.clone(), span))
                        .or_default()
                        .push((at, *t, *v));
                    continue;
                }
                let first = (t + 1).saturating_sub(w.size).div_ceil(w.slide) * w.slide;
                for start in (first..=*t).step_by(w.slide as usize) {
                    let close = start + w.size + w.grace;
                    if close <= wm {
                        continue; // this window had closed
                    }
                    let at = round_up((*t).max(wm), interval).min(close - 1);
                    windows
                        .entry((w.name, key.clone(), start))
                        .or_default()
                        .push((at, *v));
                }
            }
        }
    }
    let mut log = Changelog::new();
    for ((name, key, start), mut shown) in windows {
        shown.sort();
        let steps: BTreeSet<u64> = shown.iter().map(|(at, _)| *at).collect();
        let entry = log.entry((name.to_string(), key, start)).or_default();
        for step in steps {
            let values: Vec<Decimal> = shown
                .iter()
                .filter(|(at, _)| *at <= step)
                .map(|(_, v)| *v)
                .collect();
            entry.push((Some(aggregates(&values)), false));
        }
        let all: Vec<Decimal> = shown.iter().map(|(_, v)| *v).collect();
        entry.push((Some(aggregates(&all)), true));
    }
    for ((name, key, _span), records) in sessions {
        let gap = WINDOWS.iter().find(|w| w.name == name).expect("known").gap;
        let steps: BTreeSet<u64> = records.iter().map(|(at, _, _)| *at).collect();
        let mut before: BTreeMap<u64, Vec<Decimal>> = BTreeMap::new();
        for step in steps {
            let now = sessionize(
                records
                    .iter()
                    .filter(|(at, _, _)| *at <= step)
                    .map(|(_, t, v)| (*t, *v))
                    .collect(),
                gap,
            );
            for start in before.keys().filter(|s| !now.contains_key(s)) {
                log.entry((name.to_string(), key.clone(), *start))
                    .or_default()
                    .push((None, false));
            }
            for (start, values) in &now {
                if before.get(start) != Some(values) {
                    log.entry((name.to_string(), key.clone(), *start))
                        .or_default()
                        .push((Some(aggregates(values)), false));
                }
            }
            before = now;
        }
        for (start, values) in before {
            log.entry((name.to_string(), key.clone(), start))
                .or_default()
                .push((Some(aggregates(&values)), true));
        }
    }
    log
}

fn dec(v: &serde_json::Value, field: &str) -> Decimal {
    v[field]
        .as_str()
        .and_then(|s| s.parse::<Decimal>().ok())
        .unwrap_or_else(|| panic!("{field} is a decimal string in {v}"))
        .normalize()
}

/// The changelog the dataflow wrote, checking keys and routing on the way.
fn collect(records: &[OutRecord], topics: &Topics) -> Changelog {
    let mut log = Changelog::new();
    for r in records {
        let name = &topics.names[r.topic as usize];
        if !name.starts_with("out-") {
            continue;
        }
        let (window, key, start): (String, String, u64) =
            serde_json::from_slice(r.key.as_deref().expect("a changelog record has a key"))
                .expect("the key is [window, key, start]");
        assert_eq!(name, &format!("out-{window}"));
        assert_eq!(
            r.partition,
            (murmur2(key.as_bytes()) & 0x7fff_ffff) % OUT_PARTITIONS,
            "a window's changelog goes to its group key's partition"
        );
        let step = if r.payload.is_empty() {
            (None, false)
        } else {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
            assert_eq!(v["window"], window.as_str());
            assert_eq!(v["key"], key.as_str());
            assert_eq!(v["window_start_ms"], start);
            let count = v["count"].as_u64().expect("count");
            let aggs = (
                count,
                dec(&v, "sum"),
                dec(&v, "min"),
                dec(&v, "max"),
                dec(&v, "avg"),
            );
            (Some(aggs), v["final"].as_bool().expect("final is a bool"))
        };
        log.entry((window, key, start)).or_default().push(step);
    }
    log
}

fn run(input: &[Partition], interval: u64, workers: usize, chunk: usize) -> Changelog {
    let spec = spec(interval);
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    let parts = input
        .iter()
        .enumerate()
        .map(|(p, rs)| {
            (
                p as i32,
                rs.iter().map(|(payload, _)| payload.clone()).collect(),
            )
        })
        .collect();
    let records = pipeline::run_in_memory(&spec, &topics, parts, workers, chunk)
        .expect("the dataflow completes");
    collect(&records, &topics)
}

fn assert_same(got: &Changelog, expected: &Changelog, what: &str) {
    let keys: BTreeSet<_> = got.keys().chain(expected.keys()).collect();
    let mut wrong = Vec::new();
    for k in keys {
        if got.get(k) != expected.get(k) {
            wrong.push(format!(
                "{k:?}:\n    got      {:?}\n    expected {:?}",
                got.get(k),
                expected.get(k)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} changelogs differ; first ones:\n{}",
        wrong.len(),
        expected.len(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn changelogs_match_a_naive_recomputation_for_1_2_and_4_workers() {
    for (seed, interval) in [(1u64, 0u64), (2, 0), (3, 100)] {
        let input = generate(seed, 2_000);
        let expected = recompute(&input, interval);
        let tombstones = expected
            .values()
            .flatten()
            .filter(|s| s.0.is_none())
            .count();
        let upserts = expected.values().flatten().filter(|s| !s.1).count();
        let finals = expected.values().flatten().filter(|s| s.1).count();
        assert!(
            tombstones > if interval == 0 { 20 } else { 1 },
            "seed {seed}: the input merges sessions ({tombstones} tombstones)"
        );
        assert!(
            upserts > 2 * finals,
            "windows change before they close ({upserts} upserts)"
        );
        for w in WINDOWS {
            assert!(
                expected.keys().filter(|k| k.0 == w.name).count() > 30,
                "the input exercises {}",
                w.name
            );
        }
        for workers in [1, 2, 4] {
            let chunk = 1 + (seed as usize * 31 + workers * 7) % 150;
            let got = run(&input, interval, workers, chunk);
            assert_same(
                &got,
                &expected,
                &format!("seed {seed}, interval {interval} ms, {workers} workers"),
            );
        }
    }
}

#[test]
fn the_last_record_of_every_window_is_its_final_value_as_in_final_mode() {
    // Final mode and the last record per key of updates mode agree.
    let input = generate(7, 800);
    let updates = run(&input, 0, 2, 13);
    let text = spec(0);
    let mut finals = text.clone();
    for w in &mut finals.windows {
        w.emit = waterline::spec::Emit::Final;
    }
    let topics = Topics::new(&finals, |_| OUT_PARTITIONS);
    let parts = input
        .iter()
        .enumerate()
        .map(|(p, rs)| {
            (
                p as i32,
                rs.iter().map(|(payload, _)| payload.clone()).collect(),
            )
        })
        .collect();
    let records = pipeline::run_in_memory(&finals, &topics, parts, 2, 13).expect("completes");
    let mut from_final = BTreeSet::new();
    for r in records
        .iter()
        .filter(|r| topics.names[r.topic as usize].starts_with("out-"))
    {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
        assert!(
            v.get("final").is_none(),
            "final mode writes no `final` flag"
        );
        from_final.insert((
            v["window"].as_str().expect("window").to_string(),
            v["key"].as_str().expect("key").to_string(),
            v["window_start_ms"].as_u64().expect("start"),
            v["count"].as_u64().expect("count"),
            dec(&v, "sum"),
        ));
    }
    let from_updates: BTreeSet<_> = updates
        .iter()
        .filter_map(|((w, k, s), steps)| match steps.last() {
            Some((Some(a), true)) => Some((w.clone(), k.clone(), *s, a.0, a.1)),
            Some((None, false)) => None,
            other => panic!("{w}/{k}/{s} ends with {other:?}"),
        })
        .collect();
    assert!(from_final.len() > 100);
    assert_eq!(from_updates, from_final);
}

/// Crashes (a commit fails and every worker stops) at points spread over a run, resumes
/// from the committed progress each time, and finally completes: across all runs, every
/// window's changelog must be committed exactly as one uninterrupted run commits it, in
/// the same order — nothing twice, nothing missing, no step reordered.
#[test]
fn changelogs_survive_crashes_exactly_once_and_in_order() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use waterline::pipeline::MemoryRun;
    use waterline::progress::Recovery;
    use waterline::sink::memory::Committed;

    let spec = spec(0);
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    for (seed, workers) in [(11u64, 1usize), (12, 2), (13, 4)] {
        let input = generate(seed, 1_000);
        let parts: Vec<(i32, Vec<Option<Vec<u8>>>)> = input
            .iter()
            .enumerate()
            .map(|(p, rs)| {
                (
                    p as i32,
                    rs.iter().map(|(payload, _)| payload.clone()).collect(),
                )
            })
            .collect();
        let memory_run = |recovery: Recovery, fail_after_commits| MemoryRun {
            workers,
            chunk: 3,
            recovery,
            fail_after_commits,
            commit_interval: Duration::from_millis(1),
            stalls: Vec::new(),
        };
        let whole = Arc::new(Mutex::new(Committed::default()));
        let run = memory_run(Recovery::fresh(workers), None);
        pipeline::run_in_memory_with(&spec, &topics, parts.clone(), &run, Arc::clone(&whole))
            .expect("completes");
        let whole = std::mem::take(&mut *whole.lock().expect("lock"));
        let commits = (whole.progress.len() / workers).max(8);
        let expected = collect(&whole.records, &topics);

        let runs = [
            Some(2),
            Some(commits / 4),
            Some(commits / 3),
            Some(commits / 2),
            None,
        ];
        let (committed_all, crashes) =
            common::run_with_crashes(&spec, &topics, &parts, workers, &runs);
        assert!(
            crashes >= 2,
            "seed {seed}: the runs crashed ({crashes} crashes)"
        );
        let got = collect(&committed_all, &topics);
        assert!(
            expected.len() > 100,
            "seed {seed}: {} changelogs",
            expected.len()
        );
        assert_same(
            &got,
            &expected,
            &format!("seed {seed}, {workers} workers, {crashes} crashes"),
        );
    }
}
