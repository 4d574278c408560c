//! Window engines compared: the same input aggregated into tumbling 1-minute windows
//! (count, sum, min, max per key and window) by
//!
//! - **operator**: waterline's own timely operator (`waterline::window::operator::windows`),
//!   fed the partials that `waterline::window::combine` sums from `(event, watermark)`
//!   pairs at timestamps at or below the watermark, per batch on each worker before the
//!   exchange, as the source does in `src/pipeline.rs` (decoding and the sink left out, so
//!   every engine does the same work around the windows);
//! - **dd-delay**: differential-dataflow: each record delayed to its window's close time,
//!   then `reduce` per (key, window start), with a negated copy delayed to one millisecond
//!   after the close so that a closed window's records cancel and its state is freed
//!   (hopping: one delayed copy per window offset, see [`differential`]);
//! - **dd-nodelay**: differential `reduce` per (key, window start) on records at their
//!   event times, without delay or retraction: a result per record, state for every record;
//! - **input**: the input alone (generation, the timely input, stepping), the harness floor.
//!
//! Each with 1 and 2 workers, each run in a fresh process (this binary re-run with
//! `WATERLINE_BENCH_ENGINE` set), so its peak RSS (`VmHWM`) is its own. The three result
//! sets must be identical (the final result of each (key, window); for `dd-nodelay` the
//! accumulated output), or the benchmark aborts. Figures are ratios to `operator` with the
//! same number of workers, measured in the same run.
//!
//! Input: records `i = 0..n` at event time `start + i ms − jitter` (jitter < 2 s), 100 keys,
//! decimal amounts with 2 places, all derived from a hash of `i`, so every worker count sees
//! the same records. Each worker feeds its share in batches of 1,000 and advances the input
//! to its watermark (greatest time seen − 2 s), like a source. A hopping variant (1 minute,
//! slide 10 s) of `operator` and `dd-delay` runs too.
//!
//! ```text
//! cargo bench --bench window_engines                 # 2M records
//! WATERLINE_BENCH_RECORDS=500000 cargo bench --bench window_engines
//! ```

use std::collections::BTreeMap;
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use rust_decimal::Decimal;
use timely::dataflow::operators::vec::{Input, Map};
use timely::dataflow::operators::{Inspect, Probe};
use waterline::codec::{Event, Grouped};
use waterline::metrics::Metrics;
use waterline::output::Topics;
use waterline::spec::PipelineSpec;

const KEYS: u64 = 100;
const START_MS: u64 = 1_768_312_800_000;
const BOUND_MS: u64 = 2_000;
const BATCH: u64 = 1_000;
const GRACE_MS: u64 = 5_000;

/// One result row: key, window start, count, sum, min, max (decimals normalised).
type Row = String;

fn row(key: &str, start: u64, count: u64, sum: Decimal, min: Decimal, max: Decimal) -> Row {
    format!(
        "{key} {start} {count} {} {} {}",
        sum.normalize(),
        min.normalize(),
        max.normalize()
    )
}

fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record `i`: (key index, event time, amount).
fn record(i: u64) -> (usize, u64, Decimal) {
    let h = splitmix(i);
    let key = (h % KEYS) as usize;
    let jitter = (h >> 8) % BOUND_MS;
    let cents = ((h >> 32) % 10_000_000 + 1) as i64;
    (key, START_MS + i - jitter, Decimal::new(cents, 2))
}

fn spec(hopping: bool) -> PipelineSpec {
    let window = if hopping {
        "kind = \"hopping\"\nsize = \"1m\"\nslide = \"10s\""
    } else {
        "kind = \"tumbling\"\nsize = \"1m\""
    };
    let text = format!(
        "name = \"engines\"\n\
         [input]\ntopic = \"in\"\nevent_time_field = \"t\"\nkey_field = \"k\"\n\
         id_field = \"id\"\nmax_out_of_orderness = \"2s\"\nidle_timeout = \"30s\"\n\
         [validation.fields]\nt = \"timestamp\"\nk = \"string\"\nid = \"string\"\n\
         amount = \"decimal\"\n\
         [[windows]]\nname = \"w\"\n{window}\ngrace = \"5s\"\nfield = \"amount\"\n\
         aggregates = [\"count\", \"sum\", \"min\", \"max\"]\n\
         [output]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\nlate_topic = \"late\"\n"
    );
    PipelineSpec::from_toml("engines.toml", &text).expect("the benchmark's dataflow is valid")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Input,
    Operator,
    DdDelay,
    DdNoDelay,
    OperatorHopping,
    DdDelayHopping,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Input => "input",
            Engine::Operator => "operator",
            Engine::DdDelay => "dd-delay",
            Engine::DdNoDelay => "dd-nodelay",
            Engine::OperatorHopping => "operator-hopping",
            Engine::DdDelayHopping => "dd-delay-hopping",
        }
    }

    fn parse(s: &str) -> Option<Engine> {
        [
            Engine::Input,
            Engine::Operator,
            Engine::DdDelay,
            Engine::DdNoDelay,
            Engine::OperatorHopping,
            Engine::DdDelayHopping,
        ]
        .into_iter()
        .find(|e| e.name() == s)
    }
}

fn main() {
    let n: u64 = std::env::var("WATERLINE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    if let Ok(engine) = std::env::var("WATERLINE_BENCH_ENGINE") {
        let engine = Engine::parse(&engine).expect("a known engine name");
        let workers: usize = std::env::var("WATERLINE_BENCH_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("WATERLINE_BENCH_WORKERS is set with the engine");
        let out = std::env::var("WATERLINE_BENCH_OUT").expect("WATERLINE_BENCH_OUT is set");
        child(engine, workers, n, &out);
        return;
    }

    let dir = std::env::temp_dir().join(format!("waterline-engines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "{n} records, {KEYS} keys, out of order by < {BOUND_MS} ms, tumbling 1m windows \
         (count, sum, min, max), grace 5 s; each engine in its own process"
    );
    println!(
        "{:<17} {:>7} {:>8} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "engine", "workers", "secs", "records/s", "×operator", "peak MiB", "×operator", "results"
    );
    // The first of each family (tumbling, hopping) is the baseline of its ratios.
    let runs = [
        (Engine::Operator, None),
        (Engine::DdDelay, Some(Engine::Operator)),
        (Engine::DdNoDelay, Some(Engine::Operator)),
        (Engine::Input, None),
        (Engine::OperatorHopping, None),
        (Engine::DdDelayHopping, Some(Engine::OperatorHopping)),
    ];
    let mut reference: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for workers in [1usize, 2] {
        let mut base: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (engine, same_as) in runs {
            let out = dir.join(format!("{}-{workers}.txt", engine.name()));
            let status = Command::new(std::env::current_exe().expect("this benchmark's path"))
                .env("WATERLINE_BENCH_ENGINE", engine.name())
                .env("WATERLINE_BENCH_WORKERS", workers.to_string())
                .env("WATERLINE_BENCH_RECORDS", n.to_string())
                .env("WATERLINE_BENCH_OUT", &out)
                .output()
                .expect("the benchmark re-runs itself");
            assert!(
                status.status.success(),
                "{} with {workers} worker(s) failed: {}",
                engine.name(),
                String::from_utf8_lossy(&status.stderr)
            );
            let line = String::from_utf8_lossy(&status.stdout);
            let mut fields = line.split_whitespace().map(|f| f.parse::<f64>());
            let (Some(Ok(secs)), Some(Ok(peak_kib))) = (fields.next(), fields.next()) else {
                panic!("{} printed `{line}`, not `secs peak_kib`", engine.name());
            };
            let rows = std::fs::read(&out).expect("the engine wrote its results");
            let results = rows.iter().filter(|b| **b == b'\n').count();
            // Results: every engine's must equal the reference engine's, for every worker
            // count; the reference engines' must not depend on the worker count either.
            let reference_engine = same_as.unwrap_or(engine).name();
            match reference.get(reference_engine) {
                Some(expected) if engine != Engine::Input => {
                    if *expected != rows {
                        eprintln!(
                            "{} with {workers} worker(s) disagrees with {reference_engine}; \
                             see {} and {}",
                            engine.name(),
                            out.display(),
                            dir.join(format!("{reference_engine}-1.txt")).display()
                        );
                        std::process::exit(1);
                    }
                }
                _ => {
                    reference.insert(reference_engine, rows);
                }
            }
            let peak = peak_kib / 1024.0;
            let rate = n as f64 / secs;
            let family = match engine {
                Engine::OperatorHopping | Engine::DdDelayHopping => "hopping",
                _ => "tumbling",
            };
            let (base_rate, base_peak) = *base.entry(family).or_insert((rate, peak));
            let ratio = |v: f64, b: f64| format!("{:.2}", v / b);
            println!(
                "{:<17} {workers:>7} {secs:>8.2} {rate:>12.0} {:>10} {peak:>10.1} {:>9} {results:>9}",
                engine.name(),
                ratio(rate, base_rate),
                ratio(peak, base_peak),
            );
        }
    }
    println!(
        "results identical: operator = dd-delay = dd-nodelay (tumbling), operator-hopping = \
         dd-delay-hopping, with 1 and 2 workers"
    );
}

/// Runs one engine; prints `seconds peak_rss_kib` and writes its sorted result rows to `out`.
fn child(engine: Engine, workers: usize, n: u64, out: &str) {
    let rows: Arc<Mutex<Vec<(Row, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let shared = Arc::clone(&rows);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let keys: Vec<String> = (0..KEYS).map(|k| format!("SYM{k:02}")).collect();
        let rows = Arc::clone(&shared);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<(Event, u64)>();
            let probe = match engine {
                Engine::Input => events.probe().0,
                Engine::Operator | Engine::OperatorHopping => {
                    let spec = Rc::new(spec(engine == Engine::OperatorHopping));
                    let topics = Rc::new(Topics::new(&spec, |_| 1));
                    let partials = waterline::window::combine::combine(events, Rc::clone(&spec));
                    waterline::window::operator::windows(
                        partials,
                        spec,
                        0,
                        topics,
                        Metrics::new("bench"),
                    )
                    .inspect(move |r| {
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.payload).expect("results are JSON");
                        let dec = |f: &str| {
                            v[f].as_str()
                                .and_then(|s| s.parse::<Decimal>().ok())
                                .expect("decimal aggregates are strings")
                        };
                        let r = row(
                            v["key"].as_str().expect("a key"),
                            v["window_start_ms"].as_u64().expect("a start"),
                            v["count"].as_u64().expect("a count"),
                            dec("sum"),
                            dec("min"),
                            dec("max"),
                        );
                        rows.lock().expect("no worker panicked").push((r, 1));
                    })
                    .probe()
                    .0
                }
                Engine::DdDelay | Engine::DdNoDelay | Engine::DdDelayHopping => {
                    differential(engine, events, rows)
                }
            };
            (input, probe)
        });
        assert_eq!(
            spec(false).windows[0].value,
            Some(0),
            "the window aggregates the only numeric field"
        );
        let mut max_seen = 0u64;
        let mut wm = 0u64;
        let mut i = index;
        while i < n {
            let (key, time, amount) = record(i);
            let event = Event {
                time,
                key: keys[key].clone(),
                id: String::new(),
                values: Vec::new(),
                windows: smallvec::smallvec![Some(Grouped {
                    key: None,
                    value: amount,
                })],
                correlation_id: None,
                appended_ms: 0,
            };
            input.send((event, wm));
            max_seen = max_seen.max(time);
            i += peers;
            if (i / peers) % BATCH == 0 {
                wm = max_seen.saturating_sub(BOUND_MS);
                if wm > *input.time() {
                    input.advance_to(wm);
                }
                // Keep the dataflow within a few seconds of the input, as a source does;
                // waiting on the other workers parks rather than spins, so a worker that
                // waits leaves the core to the one it waits for.
                let behind = input.time().saturating_sub(5_000);
                worker.step();
                while probe.less_than(&behind) {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
            }
        }
        drop(input);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("a worker completes"));
    let secs = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/self/status");
    // The final results: updates accumulated per row (only dd-nodelay has retractions
    // here that do not cancel within a row; dd-delay's retractions come after each
    // result and are left out, to check each window is emitted once).
    let mut finals: BTreeMap<Row, i64> = BTreeMap::new();
    for (r, d) in std::mem::take(&mut *rows.lock().expect("no worker panicked")) {
        *finals.entry(r).or_default() += d;
    }
    let mut text = String::new();
    for (r, d) in finals {
        for _ in 0..d.max(0) {
            text.push_str(&r);
            text.push('\n');
        }
        assert!(d >= 0, "a result retracted more often than emitted: {r}");
    }
    std::fs::write(out, text).expect("write results");
    println!("{secs} {peak_kib}");
}

type DdRows = Arc<Mutex<Vec<(Row, i64)>>>;

/// count, sum, min, max.
type Aggregates = (u64, Decimal, Decimal, Decimal);

/// The differential engines on `events`; returns the probe of their output.
fn differential<'s>(
    engine: Engine,
    events: timely::dataflow::StreamVec<'s, u64, (Event, u64)>,
    rows: DdRows,
) -> timely::dataflow::operators::probe::Handle<u64> {
    // A hopping window of size 60 s and slide 10 s is six tumbling windows, offset by
    // 0, 10, .., 50 s: a record belongs to one window of each. Each offset gets its own
    // copy of the records, delayed to that window's close (`delay` maps times alone, and a
    // record's six windows close at different times), and its own `reduce`: one reduce
    // over all six would see its input frontier move every 10 s and sort the pending
    // updates of every offset each time (measured: several times slower).
    let (size, slide) = match engine {
        Engine::DdDelayHopping => (60_000u64, 10_000u64),
        _ => (60_000, 60_000),
    };
    let start_of = move |t: u64, offset: u64| t - (t - offset) % size;
    let close_of = move |t: u64, offset: u64| start_of(t, offset) + size + GRACE_MS;
    let mut results = Vec::new();
    for offset in (0..size).step_by(slide as usize) {
        // Records at their event times: at or after their stamp, the watermark.
        let records = events
            .clone()
            .map(move |(e, _)| {
                let start = start_of(e.time, offset);
                (((e.key, start), e.values[0]), e.time, 1isize)
            })
            .as_collection();
        let windowed = if engine == Engine::DdNoDelay {
            records
        } else {
            // Each record counts from its window's close and is retracted 1 ms later, so
            // a closed window's records cancel out of the arrangement.
            records
                .clone()
                .delay(move |t| close_of(*t, offset))
                .concat(records.negate().delay(move |t| close_of(*t, offset) + 1))
        };
        results.push(windowed.reduce_named(
            "Window",
            |_key, values: &[(&Decimal, isize)], output: &mut Vec<(Aggregates, isize)>| {
                let mut count = 0u64;
                let mut sum = Decimal::ZERO;
                for (v, r) in values {
                    count += *r as u64;
                    sum += **v * Decimal::from(*r);
                }
                // Values arrive sorted.
                let min = *values[0].0;
                let max = *values[values.len() - 1].0;
                output.push(((count, sum, min, max), 1));
            },
        ));
    }
    let sink = Arc::clone(&rows);
    results
        .into_iter()
        .reduce(|a, b| a.concat(b))
        .expect("at least one window offset")
        .inspect(move |(((key, start), (count, sum, min, max)), _t, diff)| {
            // dd-delay: every result is followed by its retraction; keep the insertions.
            if engine != Engine::DdNoDelay && *diff < 0 {
                return;
            }
            let r = row(key, *start, *count, *sum, *min, *max);
            sink.lock()
                .expect("no worker panicked")
                .push((r, *diff as i64));
        })
        .probe()
        .0
}
