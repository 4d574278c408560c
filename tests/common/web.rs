//! The web-analytics dataflow (`dataflows/web_analytics.toml`) as the tests know it:
//! random input with what the test knows of each record, and a naive recomputation of its
//! outputs written from the dataflow's rules alone — filters, grouping by page or by
//! nothing, sessions merged by the gap and cut at max_duration spans, durations, bounces
//! and conversion rates.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};

use waterline::output::{OutRecord, Topics, murmur2};
use waterline::pipeline;
use waterline::spec::PipelineSpec;

pub const PARTITIONS: usize = 5;
const USERS: usize = 20;
pub const OUT_PARTITIONS: i32 = 4;
// The shipped dataflow's settings, as the recomputation knows them.
pub const OOO: u64 = 5_000;
pub const PAGE_SIZE: u64 = 5_000;
pub const PAGE_GRACE: u64 = 2_000;
pub const GAP: u64 = 30 * 60_000;
pub const MAX_DURATION: u64 = 4 * 3_600_000;
pub const SESSION_GRACE: u64 = 10_000;
pub const CONV_SIZE: u64 = 60_000;
pub const CONV_GRACE: u64 = 10_000;
pub const HORIZON: u64 = 5 * 60_000;
const PAGES: [&str; 6] = ["/", "/pricing", "/docs", "/blog", "/a|b\\c", "/checkout"];

/// The shipped dataflow, with idleness out of the way: the in-memory run is not timed.
pub fn spec() -> PipelineSpec {
    let text = include_str!("../../dataflows/web_analytics.toml");
    assert!(text.contains("idle_timeout = \"30s\""));
    let text = text.replace("idle_timeout = \"30s\"", "idle_timeout = \"1h\"");
    PipelineSpec::from_toml("web_analytics.toml", &text).expect("the shipped dataflow is valid")
}

/// A valid event as the test made it.
#[derive(Clone, Debug)]
pub struct Web {
    pub id: String,
    pub time: u64,
    pub user: String,
    pub event_type: &'static str,
    pub page: String,
}

/// One input record: its bytes, and the event or the error kind it was made to have.
#[derive(Clone, Debug)]
pub struct Record {
    pub payload: Vec<u8>,
    pub truth: Result<Web, &'static str>,
}

impl Web {
    fn json(&self, rng: &mut StdRng) -> String {
        let ts = if rng.random_bool(0.5) {
            let t = chrono::DateTime::from_timestamp_millis(self.time as i64).expect("a time");
            format!(
                "\"{}\"",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        } else {
            self.time.to_string()
        };
        serde_json::json!({
            "event_id": self.id,
            "user_id": self.user,
            "event_type": self.event_type,
            "page": self.page,
        })
        .to_string()
        .replacen('{', &format!("{{\"timestamp\":{ts},"), 1)
    }
}

/// Per partition, records of the users that live there (user `u` in partition
/// `u % PARTITIONS`, as Kafka's keyed partitioning would put them): bursts of page views
/// with now and then a conversion, pauses of more than the gap (or of exactly the gap,
/// which still joins the session), events a little out of order or far behind, invalid
/// records and byte-for-byte repeats.
pub fn generate(seed: u64, per_partition: usize) -> Vec<Vec<Record>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..PARTITIONS)
        .map(|p| {
            let users: Vec<usize> = (0..USERS).filter(|u| u % PARTITIONS == p).collect();
            // Per user: back at (event time), and the time of its last event.
            let mut back_at: BTreeMap<usize, u64> = users.iter().map(|u| (*u, 0)).collect();
            let mut last: BTreeMap<usize, u64> = BTreeMap::new();
            let mut clock: u64 = 1_700_000_000_000 + rng.random_range(0..60_000);
            let mut out: Vec<Record> = Vec::with_capacity(per_partition);
            for i in 0..per_partition {
                if !out.is_empty() && rng.random_bool(0.03) {
                    let back = rng.random_range(1..=out.len().min(20));
                    out.push(out[out.len() - back].clone());
                    continue;
                }
                clock += rng.random_range(0..25_000);
                let here: Vec<usize> = users
                    .iter()
                    .copied()
                    .filter(|u| back_at[u] <= clock)
                    .collect();
                let u = if here.is_empty() {
                    let (u, t) = back_at
                        .iter()
                        .min_by_key(|(u, t)| (**t, **u))
                        .map(|(u, t)| (*u, *t))
                        .expect("users");
                    clock = clock.max(t);
                    u
                } else {
                    here[rng.random_range(0..here.len())]
                };
                let roll: f64 = rng.random();
                let mut time = if roll < 0.04 {
                    clock.saturating_sub(rng.random_range(8_000..300_000)) // usually late
                } else {
                    clock.saturating_sub(rng.random_range(0..6_000)) // around the bound
                };
                if back_at[&u] > 0 && back_at[&u] == clock && rng.random_bool(0.5) {
                    // Back exactly one gap after the last event: the same session.
                    time = last[&u] + GAP;
                    clock = clock.max(time);
                }
                back_at.insert(u, 0);
                if rng.random_bool(0.04) {
                    let away = rng.random_range(GAP + 1..3 * GAP);
                    back_at.insert(u, time + away);
                    if rng.random_bool(0.3) {
                        back_at.insert(u, time + GAP);
                    }
                }
                last.insert(u, time);
                let event_type = match rng.random_range(0..20) {
                    0..=1 => "conversion",
                    2 => "session_start",
                    _ => "page_view",
                };
                let web = Web {
                    id: format!("{p}-{i}"),
                    time,
                    user: format!("user-{u:04}"),
                    event_type,
                    page: PAGES[rng.random_range(0..PAGES.len())].to_string(),
                };
                let good = web.json(&mut rng);
                let record = if rng.random_bool(0.05) {
                    let (payload, kind) = match rng.random_range(0..5) {
                        0 => (
                            good.replace(
                                &serde_json::to_string(&web.page).expect("JSON"),
                                "\"no-slash\"",
                            ),
                            "rule_violation", // the expr rule on `page`
                        ),
                        1 => (
                            good.replace(&format!("\"{event_type}\""), "\"click\""),
                            "rule_violation", // one_of on `event_type`
                        ),
                        2 => (
                            good.replace(&format!("\"{}\"", web.user), "\"bob\""),
                            "rule_violation", // the expr rule on `user_id`
                        ),
                        3 => (good[..good.len() - 2].to_string(), "malformed_json"),
                        _ => (
                            good.replace(&format!("\"{}\"", web.user), "17"),
                            "wrong_type",
                        ),
                    };
                    Record {
                        payload: payload.into_bytes(),
                        truth: Err(kind),
                    }
                } else {
                    Record {
                        payload: good.into_bytes(),
                        truth: Ok(web),
                    }
                };
                out.push(record);
            }
            out
        })
        .collect()
}

/// What one result says: (end, count, sum, avg, duration_ms, bounce).
pub type Result6 = (
    u64,
    u64,
    Option<Decimal>,
    Option<Decimal>,
    Option<u64>,
    Option<bool>,
);

/// What the outputs must hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// (window, key, start) → result.
    pub windows: BTreeMap<(String, String, u64), Result6>,
    /// (partition, offset, error kind).
    pub dead: BTreeSet<(usize, usize, String)>,
    /// (window, partition, offset).
    pub late: BTreeSet<(String, usize, usize)>,
}

/// The naive recomputation: each partition replayed in offset order with its watermark
/// (max event time − out-of-orderness); per window its filter, its lateness rule and its
/// grouping; duplicates by id within the horizon among records that reach a window.
pub fn recompute(input: &[Vec<Record>]) -> Outputs {
    let mut out = Outputs::default();
    let mut pages: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut conversions: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut session_times: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for (p, records) in input.iter().enumerate() {
        let mut max_seen = 0u64;
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (offset, r) in records.iter().enumerate() {
            let w = match &r.truth {
                Err(kind) => {
                    out.dead.insert((p, offset, kind.to_string()));
                    continue;
                }
                Ok(w) => w,
            };
            let t = w.time;
            max_seen = max_seen.max(t);
            let wm = max_seen.saturating_sub(OOO);
            let is_view = w.event_type == "page_view";
            let page_start = t - t % PAGE_SIZE;
            let conv_start = t - t % CONV_SIZE;
            // (window, counted there, late there)
            let fate = [
                (
                    "page_views_5s",
                    is_view,
                    page_start + PAGE_SIZE + PAGE_GRACE <= wm,
                ),
                ("sessions", is_view, t + SESSION_GRACE < wm),
                (
                    "conversion_rate_1m",
                    true,
                    conv_start + CONV_SIZE + CONV_GRACE <= wm,
                ),
            ];
            // Only a record that reaches some window is looked up among earlier ids.
            if fate.iter().any(|(_, counted, late)| *counted && !late) {
                let times = seen.entry(w.id.clone()).or_default();
                let repeat = times.iter().any(|x| x.abs_diff(t) <= HORIZON);
                times.push(t);
                if repeat {
                    out.dead.insert((p, offset, "duplicate".to_string()));
                    continue;
                }
            }
            for (name, counted, late) in fate {
                if counted && late {
                    out.late.insert((name.to_string(), p, offset));
                }
            }
            if fate[0].1 && !fate[0].2 {
                *pages.entry((w.page.clone(), page_start)).or_default() += 1;
            }
            if fate[1].1 && !fate[1].2 {
                session_times
                    .entry((w.user.clone(), t / MAX_DURATION))
                    .or_default()
                    .push(t);
            }
            if !fate[2].2 {
                let c = conversions.entry(conv_start).or_default();
                c.0 += 1;
                c.1 += u64::from(w.event_type == "conversion");
            }
        }
    }
    for ((page, start), n) in pages {
        out.windows.insert(
            ("page_views_5s".into(), page, start),
            (start + PAGE_SIZE, n, None, None, None, None),
        );
    }
    for (start, (n, conv)) in conversions {
        let avg = (Decimal::from(conv) / Decimal::from(n))
            .round_dp_with_strategy(4, RoundingStrategy::MidpointNearestEven);
        out.windows.insert(
            ("conversion_rate_1m".into(), String::new(), start),
            (
                start + CONV_SIZE,
                n,
                Some(Decimal::from(conv)),
                Some(avg),
                None,
                None,
            ),
        );
    }
    // Sessions: within each span of max_duration, a record more than the gap after the
    // previous one starts a new session; a session ends one gap after its last record,
    // or at the end of its span.
    let mut close = |user: &str, span: u64, times: &[u64]| {
        let (first, last) = (times[0], times[times.len() - 1]);
        let end = (last + GAP).min((span + 1) * MAX_DURATION);
        out.windows.insert(
            ("sessions".into(), user.to_string(), first),
            (
                end,
                times.len() as u64,
                None,
                None,
                Some(last - first),
                Some(times.len() == 1),
            ),
        );
    };
    for ((user, span), mut times) in session_times {
        times.sort_unstable();
        let mut run: Vec<u64> = Vec::new();
        for t in times {
            if run.last().is_some_and(|l| t > l + GAP) {
                close(&user, span, &run);
                run.clear();
            }
            run.push(t);
        }
        close(&user, span, &run);
    }
    out
}

/// Runs the shipped dataflow over `input` in memory.
pub fn run(input: &[Vec<Record>], workers: usize, chunk: usize) -> (Vec<OutRecord>, Topics) {
    let spec = spec();
    let topics = Topics::new(&spec, |_| OUT_PARTITIONS);
    let parts = input
        .iter()
        .enumerate()
        .map(|(p, rs)| {
            (
                p as i32,
                rs.iter().map(|r| Some(r.payload.clone())).collect(),
            )
        })
        .collect();
    let records = pipeline::run_in_memory(&spec, &topics, parts, workers, chunk)
        .expect("the dataflow completes");
    (records, topics)
}

fn dec(v: &serde_json::Value, field: &str) -> Option<Decimal> {
    v.get(field)
        .map(|x| Decimal::from_str(x.as_str().expect("decimals are strings")).expect("a decimal"))
}

/// Adds one output record to `got`, by its topic's role; checks routing on the way.
pub fn absorb(
    got: &mut Outputs,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
    n: i32,
) {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("every output is JSON");
    let keyed = |k: &str| {
        assert_eq!(key, Some(k.as_bytes()), "keyed by the group: {v}");
        if let Some(partition) = partition {
            assert_eq!(
                partition,
                (murmur2(k.as_bytes()) & 0x7fff_ffff) % n,
                "routed by the group key: {v}"
            );
        }
    };
    match topic {
        t if t.ends_with("dead-letters") => {
            assert!(v["reason"].as_str().is_some_and(|s| !s.is_empty()));
            let fresh = got.dead.insert((
                v["source"]["partition"].as_u64().expect("partition") as usize,
                v["source"]["offset"].as_u64().expect("offset") as usize,
                v["error_kind"].as_str().expect("kind").to_string(),
            ));
            assert!(fresh, "dead letter written twice: {v}");
        }
        t if t.ends_with("late") => {
            keyed(v["key"].as_str().expect("key"));
            let fresh = got.late.insert((
                v["window"].as_str().expect("window").to_string(),
                v["source"]["partition"].as_u64().expect("partition") as usize,
                v["source"]["offset"].as_u64().expect("offset") as usize,
            ));
            assert!(fresh, "late record written twice: {v}");
        }
        _ => {
            let key = v["key"].as_str().expect("key");
            keyed(key);
            let window = v["window"].as_str().expect("window").to_string();
            let topic_of = match window.as_str() {
                "page_views_5s" => "web-page-views",
                "sessions" => "web-sessions",
                _ => "web-conversions",
            };
            assert!(
                topic.ends_with(topic_of),
                "{window} results go to {topic_of}"
            );
            let previous = got.windows.insert(
                (
                    window,
                    key.to_string(),
                    v["window_start_ms"].as_u64().expect("start"),
                ),
                (
                    v["window_end_ms"].as_u64().expect("end"),
                    v["count"].as_u64().expect("count"),
                    dec(&v, "sum"),
                    dec(&v, "avg"),
                    v.get("duration_ms").map(|d| d.as_u64().expect("ms")),
                    v.get("bounce").map(|b| b.as_bool().expect("bool")),
                ),
            );
            assert!(previous.is_none(), "window emitted twice: {v}");
        }
    }
}

/// Compares two outputs, naming the first differences.
pub fn assert_same(got: &Outputs, expected: &Outputs, what: &str) {
    fn diff<T: Ord + std::fmt::Debug + Clone>(got: &BTreeSet<T>, exp: &BTreeSet<T>, what: &str) {
        let extra: Vec<_> = got.difference(exp).take(5).collect();
        let missing: Vec<_> = exp.difference(got).take(5).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{what}: unexpected {extra:?}, missing {missing:?}"
        );
    }
    diff(&got.dead, &expected.dead, &format!("{what}: dead letters"));
    diff(&got.late, &expected.late, &format!("{what}: late records"));
    for (k, e) in &expected.windows {
        assert_eq!(got.windows.get(k), Some(e), "{what}: window {k:?}");
    }
    let extra: Vec<_> = got
        .windows
        .keys()
        .filter(|k| !expected.windows.contains_key(*k))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "{what}: unexpected windows {extra:?}");
}
