//! Throughput of the dataflow on in-memory partitions, against a baseline measured in the
//! same run: decoding the same payloads alone, on one thread. Figures are ratios, since
//! these machines are noisy.
//!
//!     cargo bench --bench pipeline            # 400k trades
//!     WATERLINE_BENCH_RECORDS=2000000 cargo bench --bench pipeline

use std::time::Instant;

use waterline::cli::GenerateArgs;
use waterline::codec::Decoder;
use waterline::generate::TradeGenerator;
use waterline::output::Topics;
use waterline::pipeline;
use waterline::source::memory::Payloads;
use waterline::spec::PipelineSpec;

const PARTITIONS: i32 = 8;

fn main() {
    let n: usize = std::env::var("WATERLINE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let spec = PipelineSpec::from_toml("trades.toml", include_str!("../dataflows/trades.toml"))
        .expect("valid dataflow");
    let mut generator = TradeGenerator::new(
        GenerateArgs {
            keys: 50,
            invalid: 0.01,
            late: 0.01,
            duplicate: 0.0,
            seed: 1,
            time_step_ms: 2,
        },
        1_768_312_800_000,
    );
    let mut partitions: Vec<Payloads> = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..n {
        partitions[i % PARTITIONS as usize].push(Some(generator.next(0).payload));
    }
    let bytes: usize = partitions.iter().flatten().flatten().map(Vec::len).sum();
    println!(
        "{n} trades, {:.1} MB, {PARTITIONS} partitions",
        bytes as f64 / 1e6
    );

    // Baseline: decode every payload on one thread.
    let decoder = Decoder::new(&spec);
    let t = Instant::now();
    let mut ok = 0usize;
    for p in &partitions {
        for payload in p {
            ok += decoder.decode(payload.as_deref()).is_ok() as usize;
        }
    }
    let baseline = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "baseline  decode only, 1 thread     {:>12.0} records/s  ({ok} valid)",
        baseline
    );

    for workers in [1usize, 2] {
        let parts: Vec<(i32, Payloads)> = partitions
            .iter()
            .cloned()
            .enumerate()
            .map(|(p, v)| (p as i32, v))
            .collect();
        let topics = Topics::new(&spec, |_| 8);
        let t = Instant::now();
        let outputs = pipeline::run_in_memory(&spec, &topics, parts, workers, 1024)
            .expect("the dataflow completes")
            .len();
        let rate = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "pipeline  {workers} worker(s)                {rate:>12.0} records/s  = {:.2}× baseline  ({outputs} outputs)",
            rate / baseline
        );
    }
}
