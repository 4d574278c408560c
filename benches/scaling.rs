//! How throughput scales with workers and processes, on Apache Kafka: one input topic of
//! pre-produced trades (8 partitions, 1% invalid, 1% late) through a bounded run
//! (`--until end`, exactly-once, default commit interval) with 1, 2 and 4 workers in one
//! process, and with 2 processes of 1 worker each (`waterline cluster`, timely's cluster
//! mode over TCP on 127.0.0.1). Each figure is the best of `WATERLINE_BENCH_REPEATS` runs
//! (wall time from start to exit, start-up included), given as a ratio to 1 worker
//! measured in the same bench, since these machines are noisy. Per core: the CPU time the
//! run's processes used (user + system, from this process's `cutime`/`cstime`, which count
//! every waited-for descendant), as records per CPU-second, also as a ratio to 1 worker.
//! The broker runs on the same machine and is not counted.
//!
//! ```text
//! cargo bench --bench scaling                    # about 2 minutes
//! WATERLINE_BENCH_RECORDS=1000000 WATERLINE_BENCH_REPEATS=3 cargo bench --bench scaling
//! ```
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`. The runs' logs go
//! to a temporary directory, named when a run fails and removed when the bench succeeds.

mod common;

use common::{
    backfill_trades, bench_dir, bootstrap, children_cpu_secs, env_number, fill_topic, now_ms,
    run_ok, trades_dataflow, utf8, waterline,
};
use std::path::Path;
use std::time::Instant;

const PARTITIONS: i32 = 8;

/// (label, processes, workers per process); the first is the baseline of every ratio.
const LAYOUTS: [(&str, usize, usize); 4] = [
    ("1 process x 1 worker", 1, 1),
    ("1 process x 2 workers", 1, 2),
    ("1 process x 4 workers", 1, 4),
    ("2 processes x 1 worker", 2, 1),
];

fn main() {
    let records = env_number("WATERLINE_BENCH_RECORDS", 600_000);
    let repeats = env_number("WATERLINE_BENCH_REPEATS", 2).max(1);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let bootstrap = bootstrap();
    let topic = format!("bench-scaling-{}", now_ms());
    let dir = bench_dir("scaling");
    let config = dir.join("bench.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").expect("writable");
    fill_topic(
        &bootstrap,
        &topic,
        PARTITIONS,
        records,
        backfill_trades(50, 0.01, 0.01, 0.0, 5),
    );
    let dataflow = trades_dataflow(&dir, &topic, &topic, &[]);
    println!(
        "scaling: {records} trades, {PARTITIONS} partitions, run --until end (exactly-once) on \
         Apache Kafka at {bootstrap}, {cores} cores, best of {repeats}"
    );
    let mut baseline = None;
    let mut run_number = 0;
    for (label, processes, workers) in LAYOUTS {
        // The fastest run, and its CPU time.
        let mut best = (f64::INFINITY, 0.0);
        for _ in 0..repeats {
            run_number += 1;
            let log = dir.join(format!("run-{run_number}.log"));
            let app = format!("{topic}-app-{run_number}");
            let cpu_before = children_cpu_secs();
            let secs = timed_run(
                &bootstrap, &dataflow, &config, &app, &log, processes, workers,
            );
            let cpu = children_cpu_secs() - cpu_before;
            if secs < best.0 {
                best = (secs, cpu);
            }
        }
        let (secs, cpu) = best;
        let rate = records as f64 / secs;
        let per_cpu = records as f64 / cpu.max(0.01);
        let (base, base_cpu) = *baseline.get_or_insert((rate, per_cpu));
        println!(
            "{label:<24} {secs:>6.2} s {rate:>9.0} records/s = {:.2}x 1 worker | CPU {cpu:>5.1} s \
             = {:.2} cores busy, {per_cpu:>7.0} records per CPU-second = {:.2}x 1 worker",
            rate / base,
            cpu / secs,
            per_cpu / base_cpu
        );
    }
    std::fs::remove_dir_all(&dir).expect("the bench's own directory can be removed");
}

/// Runs the job once with `processes` × `workers`; returns its wall time in seconds.
fn timed_run(
    bootstrap: &str,
    dataflow: &Path,
    config: &Path,
    app: &str,
    log: &Path,
    processes: usize,
    workers: usize,
) -> f64 {
    let mut command = waterline(bootstrap, log);
    if processes == 1 {
        command.arg("run");
    } else {
        command
            .arg("cluster")
            .args(["--processes", &processes.to_string()])
            .args(["--base-port", &free_base_port(processes).to_string()]);
    }
    command
        .args(["--dataflow", utf8(dataflow), "--config", utf8(config)])
        .args(["-w", &workers.to_string(), "--until", "end"])
        .args(["--http-listen", "off"])
        .env("WATERLINE_APP_ID", app);
    let started = Instant::now();
    run_ok(command, log);
    started.elapsed().as_secs_f64()
}

/// A port `p` with `p .. p + n` free on 127.0.0.1, below the ephemeral range.
fn free_base_port(n: usize) -> u16 {
    for base in (21_000u16..31_000).step_by(10) {
        if (base..base + n as u16).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in 21000..31000");
}
