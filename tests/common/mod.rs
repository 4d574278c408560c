//! What the reference and end-to-end tests share: a naive recomputation of what a dataflow
//! must output, written from the rules alone, and readers of what it did output.
#![allow(dead_code)]

pub mod kafka;
pub mod web;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// A window spec as the test knows it.
#[derive(Clone, Copy, Debug)]
pub struct Win {
    pub name: &'static str,
    pub size: u64,
    /// Distance between window starts: `size` for tumbling windows.
    pub slide: u64,
    /// Session windows: the inactivity gap (0: not sessions); `size` is then the span
    /// sessions are cut at (`max_duration`).
    pub gap: u64,
    pub grace: u64,
    pub avg_scale: u32,
}

/// One input record and what the test knows about it.
#[derive(Clone, Debug)]
pub struct Input {
    pub payload: Option<Vec<u8>>,
    /// `(time, key, value)` of a valid event, or the error kind it was built to have.
    pub truth: Result<(u64, String, Decimal), &'static str>,
}

/// (window name, key, window start).
pub type WindowId = (String, String, u64);
/// (count, sum, min, max, avg).
pub type Aggregates = (u64, Decimal, Decimal, Decimal, Decimal);

/// What the outputs must hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// (window name, key, start) → (count, sum, min, max, avg)
    pub windows: BTreeMap<WindowId, Aggregates>,
    /// (partition, offset, error kind)
    pub dead: BTreeSet<(i32, i64, String)>,
    /// (window name, partition, offset)
    pub late: BTreeSet<(String, i32, i64)>,
}

/// Duplicate dropping as a dataflow declares it: `field` holds the event id.
#[derive(Clone, Copy, Debug)]
pub struct Dedupe {
    pub field: &'static str,
    pub horizon: u64,
    pub dead_letter: bool,
}

/// Replays each partition in offset order with its own watermark
/// (max event time seen − `ooo`); a record is late for a window when that window's
/// end + grace is at or below the watermark.
pub fn recompute(partitions: &[Vec<Input>], ooo: u64, windows: &[Win]) -> Expected {
    compute(partitions, windows, Lateness::Watermark(ooo), None)
}

/// [`recompute`], dropping duplicates: a record not late for every window is a duplicate
/// when an earlier record of its partition has the same id and an event time at most
/// the horizon apart.
pub fn recompute_deduped(
    partitions: &[Vec<Input>],
    ooo: u64,
    windows: &[Win],
    dedupe: Dedupe,
) -> Expected {
    compute(partitions, windows, Lateness::Watermark(ooo), Some(dedupe))
}

/// What the outputs must hold when `late` says which records were late for which window
/// (when idleness, a wall-clock decision, made some late): every other valid record is in
/// its windows, exactly once.
pub fn recompute_with_late(
    partitions: &[Vec<Input>],
    windows: &[Win],
    late: &BTreeSet<(String, i32, i64)>,
    dedupe: Option<Dedupe>,
) -> Expected {
    compute(partitions, windows, Lateness::Given(late), dedupe)
}

enum Lateness<'a> {
    Watermark(u64),
    Given(&'a BTreeSet<(String, i32, i64)>),
}

fn compute(
    partitions: &[Vec<Input>],
    windows: &[Win],
    lateness: Lateness<'_>,
    dedupe: Option<Dedupe>,
) -> Expected {
    let mut expected = Expected::default();
    let mut accs: BTreeMap<(String, String, u64), Vec<Decimal>> = BTreeMap::new();
    // (window, key, span) → on-time (time, value) of session windows.
    type Spans<'w> = BTreeMap<(&'w str, String, u64), Vec<(u64, Decimal)>>;
    let mut session_records: Spans<'_> = BTreeMap::new();
    for (p, records) in partitions.iter().enumerate() {
        let mut max_seen: Option<u64> = None;
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (offset, r) in records.iter().enumerate() {
            let (t, key, v) = match &r.truth {
                Err(kind) => {
                    expected
                        .dead
                        .insert((p as i32, offset as i64, kind.to_string()));
                    continue;
                }
                Ok(x) => x,
            };
            max_seen = Some(max_seen.map_or(*t, |m| m.max(*t)));
            let wm = match &lateness {
                Lateness::Watermark(ooo) => Some(max_seen.unwrap_or(0).saturating_sub(*ooo)),
                Lateness::Given(_) => None,
            };
            // Per window spec, the starts of the windows the record counts in (sessions:
            // its own time, merged below).
            let open: Vec<Vec<u64>> = windows
                .iter()
                .map(|w| {
                    if w.gap > 0 {
                        let on_time = match (&lateness, wm) {
                            (Lateness::Given(set), _) => {
                                !set.contains(&(w.name.to_string(), p as i32, offset as i64))
                            }
                            (_, Some(wm)) => t + w.grace >= wm,
                            _ => unreachable!("a watermark or a given set"),
                        };
                        return if on_time { vec![*t] } else { Vec::new() };
                    }
                    // Multiples of the slide in (t − size, t].
                    let first = (t + 1).saturating_sub(w.size).div_ceil(w.slide) * w.slide;
                    let starts = (first..=*t).step_by(w.slide as usize);
                    match (&lateness, wm) {
                        (Lateness::Given(set), _) => {
                            if set.contains(&(w.name.to_string(), p as i32, offset as i64)) {
                                Vec::new()
                            } else {
                                starts.collect()
                            }
                        }
                        (_, Some(wm)) => starts.filter(|s| s + w.size + w.grace > wm).collect(),
                        _ => unreachable!("a watermark or a given set"),
                    }
                })
                .collect();
            let late: Vec<bool> = open.iter().map(Vec::is_empty).collect();
            if let Some(d) = dedupe
                && late.iter().any(|l| !l)
            {
                let payload: serde_json::Value =
                    serde_json::from_slice(r.payload.as_deref().expect("a valid record"))
                        .expect("a valid record is JSON");
                let id = payload[d.field].as_str().expect("an id").to_string();
                let times = seen.entry(id).or_default();
                let repeat = times.iter().any(|x| x.abs_diff(*t) <= d.horizon);
                times.push(*t);
                if repeat {
                    if d.dead_letter {
                        expected
                            .dead
                            .insert((p as i32, offset as i64, "duplicate".to_string()));
                    }
                    continue;
                }
            }
            for (w, starts) in windows.iter().zip(open) {
                if starts.is_empty() {
                    expected
                        .late
                        .insert((w.name.to_string(), p as i32, offset as i64));
                }
                for start in starts {
                    if w.gap > 0 {
                        session_records
                            .entry((w.name, key.clone(), start / w.size))
                            .or_default()
                            .push((start, *v));
                    } else {
                        accs.entry((w.name.to_string(), key.clone(), start))
                            .or_default()
                            .push(*v);
                    }
                }
            }
        }
    }
    // Sessions: per window, key and span, records in time order; a record more than the
    // gap after the previous one starts a new session.
    for ((name, key, _), mut records) in session_records {
        let gap = windows.iter().find(|w| w.name == name).expect("known").gap;
        records.sort();
        let mut start = records[0].0;
        let mut last = start;
        for (t, v) in records {
            if t > last + gap {
                start = t;
            }
            last = t;
            accs.entry((name.to_string(), key.clone(), start))
                .or_default()
                .push(v);
        }
    }
    expected.windows = aggregate(accs, windows);
    expected
}

fn aggregate(
    accs: BTreeMap<(String, String, u64), Vec<Decimal>>,
    windows: &[Win],
) -> BTreeMap<WindowId, Aggregates> {
    let mut out = BTreeMap::new();
    for (k, values) in accs {
        let count = values.len() as u64;
        let sum: Decimal = values.iter().sum();
        let min = *values.iter().min().expect("non-empty");
        let max = *values.iter().max().expect("non-empty");
        let scale = windows
            .iter()
            .find(|w| w.name == k.0)
            .expect("known window")
            .avg_scale;
        let avg = (sum / Decimal::from(count))
            .round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven);
        out.insert(k, (count, sum, min, max, avg));
    }
    out
}

fn dec(v: &serde_json::Value, field: &str) -> Decimal {
    Decimal::from_str(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a decimal string in {v}")),
    )
    .unwrap_or_else(|e| panic!("{field} in {v}: {e}"))
}

/// Adds one output record (by the role of its topic) to `got`; panics on duplicates.
pub fn absorb(got: &mut Expected, role: &str, payload: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("every output is JSON");
    match role {
        "dead" => {
            assert!(
                v["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "a reason: {v}"
            );
            let fresh = got.dead.insert((
                v["source"]["partition"].as_i64().expect("partition") as i32,
                v["source"]["offset"].as_i64().expect("offset"),
                v["error_kind"].as_str().expect("kind").to_string(),
            ));
            assert!(fresh, "dead letter written twice: {v}");
        }
        "late" => {
            let fresh = got.late.insert((
                v["window"].as_str().expect("window").to_string(),
                v["source"]["partition"].as_i64().expect("partition") as i32,
                v["source"]["offset"].as_i64().expect("offset"),
            ));
            assert!(fresh, "late record written twice: {v}");
        }
        "window" => {
            let key = v["key"].as_str().expect("key").to_string();
            let start = v["window_start_ms"].as_u64().expect("start");
            let previous = got.windows.insert(
                (
                    v["window"].as_str().expect("window").to_string(),
                    key,
                    start,
                ),
                (
                    v["count"].as_u64().expect("count"),
                    dec(&v, "sum"),
                    dec(&v, "min"),
                    dec(&v, "max"),
                    dec(&v, "avg"),
                ),
            );
            assert!(previous.is_none(), "window emitted twice: {v}");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Prints a test's result summary to the process's stderr, past the test harness's output
/// capture, so that CI logs show it for passing tests too.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Asserts two sets are equal, showing only the differences.
pub fn same_set<T: Ord + std::fmt::Debug>(got: &BTreeSet<T>, expected: &BTreeSet<T>, what: &str) {
    let missing: Vec<_> = expected.difference(got).take(10).collect();
    let extra: Vec<_> = got.difference(expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

/// Asserts that `got` holds exactly `expected`, showing only the differences.
pub fn assert_matches(got: &Expected, expected: &Expected, what: &str) {
    same_set(&got.dead, &expected.dead, &format!("dead letters, {what}"));
    same_set(&got.late, &expected.late, &format!("late records, {what}"));
    for (k, v) in &expected.windows {
        assert_eq!(got.windows.get(k), Some(v), "window {k:?}, {what}");
    }
    let extra: Vec<_> = got
        .windows
        .keys()
        .filter(|k| !expected.windows.contains_key(*k))
        .take(10)
        .collect();
    assert!(extra.is_empty(), "unexpected windows, {what}: {extra:?}");
}

/// Runs `parts` through `spec` in memory with `workers` workers (3 records at a time,
/// committing every millisecond), once per entry of `runs`: a run with `Some(n)` fails every
/// worker's commits after its `n`-th, like a crash, and each run resumes from the progress
/// the runs before it committed, as recovery does; `None` runs to completion. Returns every
/// record any run committed, and how many runs crashed.
pub fn run_with_crashes(
    spec: &waterline::spec::PipelineSpec,
    topics: &waterline::output::Topics,
    parts: &[(i32, Vec<Option<Vec<u8>>>)],
    workers: usize,
    runs: &[Option<usize>],
) -> (Vec<waterline::output::OutRecord>, usize) {
    use std::sync::{Arc, Mutex};
    use waterline::pipeline::{self, MemoryRun};
    use waterline::progress::{self, Progress, Recovery};
    use waterline::sink::memory::Committed;

    let mut committed_all = Vec::new();
    let mut recovery = Recovery::fresh(workers);
    let mut crashes = 0;
    for fail_after in runs.iter().copied() {
        let committed = Arc::new(Mutex::new(Committed::default()));
        let run = MemoryRun {
            workers,
            chunk: 3,
            recovery: recovery.clone(),
            fail_after_commits: fail_after,
            commit_interval: std::time::Duration::from_millis(1),
            stalls: Vec::new(),
        };
        let result = pipeline::run_in_memory_with(
            spec,
            topics,
            parts.to_vec(),
            &run,
            Arc::clone(&committed),
        );
        let c = std::mem::take(&mut *committed.lock().expect("lock"));
        committed_all.extend(c.records);
        match (fail_after, result) {
            (None, r) => r.expect("the last run completes"),
            (Some(_), Err(_)) => crashes += 1,
            (Some(_), Ok(())) => {}
        }
        // Resume from each worker's latest committed record, as recovery does.
        let mut latest = BTreeMap::new();
        for p in c.progress {
            latest.insert(p.worker, p);
        }
        for (w, f) in recovery.frontiers.iter().enumerate() {
            latest.entry(w).or_insert_with(|| Progress {
                dataflow: spec.name.clone(),
                fingerprint: progress::fingerprint(spec),
                worker: w,
                workers,
                frontier: *f,
                positions: recovery.positions.clone(),
                ..Default::default()
            });
        }
        latest.retain(|_, p| p.frontier > 0);
        recovery = Recovery::from_records(&latest, workers, Some(&progress::fingerprint(spec)))
            .expect("same job");
    }
    (committed_all, crashes)
}

/// A child process killed when dropped, so a failing assertion leaves nothing running.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
