//! Micro-benchmarks of the hot path's parts, with criterion, so that a regression shows
//! where it happened:
//!
//! - `decode`: [`Decoder::decode`] of generated trades (`dataflows/trades.toml`: JSON,
//!   five declared fields, three rules), valid ones and invalid ones (the dead-letter
//!   path, which builds a reason);
//! - `assign`: the pure window-assignment functions, per event time: tumbling, hopping
//!   (1 minute sliding by 10 s: six windows per record), and a session's own interval;
//! - `operator`: each window operator on one timely worker, over 100,000 decoded events
//!   of `benches/dataflows/all_windows.toml` (tumbling, hopping, session), fed in batches
//!   of 1,000 with the watermark advanced after each batch, as the source does (tumbling
//!   and hopping windows through the combiner, which the source applies to each batch);
//!   the run includes building the dataflow and emitting every result. The events are cloned
//!   outside the measurement.
//!
//! Throughput is per record. criterion keeps the previous run's figures in
//! `target/criterion` and prints the change against them.
//!
//! ```text
//! cargo bench --bench micro                  # about 2 minutes
//! cargo bench --bench micro -- operator      # one group
//! ```

use std::hint::black_box;
use std::rc::Rc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use timely::dataflow::operators::vec::{Filter, Input};
use timely::dataflow::operators::{Inspect, Probe};
use waterline::cli::GenerateArgs;
use waterline::codec::{Decoder, Event};
use waterline::generate::{Kind, TradeGenerator};
use waterline::metrics::Metrics;
use waterline::output::Topics;
use waterline::spec::{PipelineSpec, WindowKind};
use waterline::window::{self, combine, operator, session};

const START_MS: u64 = 1_768_312_800_000;
const OPERATOR_EVENTS: usize = 100_000;
const BATCH: usize = 1_000;

fn spec(path: &str) -> PipelineSpec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    PipelineSpec::from_file(&path).expect("the dataflow file is valid")
}

/// `n` generated trades of `kind` (Valid or Invalid), one event time step apart.
fn payloads(n: usize, kind: Kind) -> Vec<Vec<u8>> {
    let args = GenerateArgs {
        keys: 100,
        invalid: if kind == Kind::Invalid { 1.0 } else { 0.0 },
        late: 0.0,
        duplicate: 0.0,
        seed: 7,
        time_step_ms: 1,
    };
    let mut generator = TradeGenerator::new(args, START_MS);
    (0..n)
        .map(|_| generator.next(START_MS))
        .filter(|g| g.kind == kind)
        .map(|g| g.payload)
        .collect()
}

fn decode(c: &mut Criterion) {
    let spec = spec("dataflows/trades.toml");
    let decoder = Decoder::new(&spec);
    let mut group = c.benchmark_group("decode");
    for (name, kind) in [("valid", Kind::Valid), ("invalid", Kind::Invalid)] {
        let records = payloads(10_000, kind);
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for p in &records {
                    let _ = black_box(decoder.decode(Some(black_box(p))));
                }
            })
        });
    }
    group.finish();
}

fn assign(c: &mut Criterion) {
    let times: Vec<u64> = (0..10_000u64)
        .map(|i| START_MS + i * 37 - (i * 7919) % 2_000)
        .collect();
    let kinds = [
        ("tumbling_1m", WindowKind::Tumbling { size_ms: 60_000 }),
        (
            "hopping_1m_10s",
            WindowKind::Hopping {
                size_ms: 60_000,
                slide_ms: 10_000,
            },
        ),
        (
            "session_1s",
            WindowKind::Session {
                gap_ms: 1_000,
                max_duration_ms: 60_000,
            },
        ),
    ];
    let mut group = c.benchmark_group("assign");
    group.throughput(Throughput::Elements(times.len() as u64));
    for (name, kind) in kinds {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &t in &times {
                    for (start, end) in window::windows_of(black_box(kind), t) {
                        sum = sum.wrapping_add(start ^ end);
                    }
                }
                black_box(sum)
            })
        });
    }
    group.finish();
}

/// Decoded events of `spec`, each with the watermark it would be read at (greatest time
/// so far minus the spec's out-of-orderness bound).
fn events(spec: &PipelineSpec, n: usize) -> Vec<(Event, u64)> {
    let decoder = Decoder::new(spec);
    let bound = spec.input.max_out_of_orderness_ms;
    let mut max_seen = 0u64;
    payloads(n, Kind::Valid)
        .iter()
        .map(|p| {
            let e = decoder.decode(Some(p)).expect("valid trades decode");
            max_seen = max_seen.max(e.time);
            (e, max_seen.saturating_sub(bound))
        })
        .collect()
}

/// Runs window `index` of `spec` over `events` on one worker; returns the results' count.
fn run_operator(spec: &PipelineSpec, index: usize, events: Vec<(Event, u64)>) -> usize {
    let spec = std::sync::Arc::new(spec.clone());
    let events = std::sync::Mutex::new(Some(events));
    timely::execute_directly(move |worker| {
        let spec = Rc::new((*spec).clone());
        let events = events
            .lock()
            .expect("one worker")
            .take()
            .expect("the worker runs once");
        let results = Rc::new(std::cell::Cell::new(0usize));
        let seen = Rc::clone(&results);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<(Event, u64)>();
            let topics = Rc::new(Topics::new(&spec, |_| 1));
            let metrics = Metrics::new("bench");
            let out = match spec.windows[index].kind {
                WindowKind::Session { .. } => {
                    session::sessions(stream, Rc::clone(&spec), index, topics, metrics)
                }
                _ => {
                    // The pipeline hands each window operator only its own partials.
                    let partials = combine::combine(stream, Rc::clone(&spec))
                        .filter(move |p| p.window == index);
                    operator::windows(partials, Rc::clone(&spec), index, topics, metrics)
                }
            };
            let probe = out.inspect(move |_| seen.set(seen.get() + 1)).probe().0;
            (input, probe)
        });
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut wm = 0;
            for (event, at) in events.by_ref().take(BATCH) {
                wm = at;
                input.send((event, at));
            }
            if wm > *input.time() {
                input.advance_to(wm);
            }
            worker.step();
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
        results.get()
    })
}

fn operators(c: &mut Criterion) {
    let spec = spec("benches/dataflows/all_windows.toml");
    let all = events(&spec, OPERATOR_EVENTS);
    let mut group = c.benchmark_group("operator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(all.len() as u64));
    for index in 0..spec.windows.len() {
        let name = spec.windows[index].name.clone();
        group.bench_function(&name, |b| {
            b.iter_batched(
                || all.clone(),
                |events| {
                    let results = run_operator(&spec, index, events);
                    assert!(results > 0, "window {name} emitted results");
                    results
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode, assign, operators);
criterion_main!(benches);
