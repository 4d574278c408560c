//! What exactly-once costs, on Apache Kafka: at-least-once and exactly-once at commit
//! intervals of 100 ms and 1 s, each figure also given as a ratio to at-least-once at
//! 100 ms (the cheapest commit path) measured in the same run, since these machines are
//! noisy.
//!
//! - Throughput: `waterline run --until end` over one input topic (1M trades, 8
//!   partitions, 2 workers), wall time from start to exit, start-up included (about 1 s).
//! - End-to-end latency: `waterline run` (unbounded, stopped with SIGTERM) on a fresh topic
//!   fed live at 4,000 trades/s (5% invalid) whose event times are the wall clock, with a
//!   `read_committed` consumer on the dead-letter topic. A record's latency is the time
//!   that consumer reads its dead letter minus the record's Kafka timestamp, which the
//!   feeder sets to the moment it sends the record: how long an input took to become
//!   visible, committed, to a downstream reader. That span holds the feeder's produce, the
//!   watermark delay (a dead letter is held at its partition's watermark until the frontier
//!   passes it: the out-of-orderness bound, 100 ms here, in every mode), the wait for the
//!   next commit, the commit itself and the consumer's fetch.
//!
//!   Dead letters rather than window results: every invalid record yields exactly one, as
//!   soon as the frontier allows, whatever the windows do, and it names its source record's
//!   timestamp, so each one is a sample with a known start and the samples are many. The
//!   feeder knows which records it made invalid, so the bench checks that every one sent in
//!   the measured span was read exactly once: the percentiles are over all of them, none
//!   censored by the end of the measurement.
//!
//!   The measured span starts at least 1 s after the first dead letter is read, when the
//!   run is past its start-up (fencing, recovery, the first commits), and once it has
//!   caught up with what the feeder sent meanwhile (its records read, on `/metrics`, at
//!   most 0.25 s of feed behind; `common::latency_run`); it lasts
//!   `WATERLINE_BENCH_LATENCY_SECS` (12 by default).
//!
//! ```text
//! cargo bench --bench guarantee                  # about 2 minutes
//! WATERLINE_BENCH_RECORDS=2000000 WATERLINE_BENCH_LATENCY_SECS=30 cargo bench --bench guarantee
//! ```
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`. The runs' logs go
//! to a temporary directory, named when a run fails and removed when the bench succeeds.

mod common;

use common::{
    Feed, LatencyRun, backfill_trades, bench_dir, bootstrap, env_number, fill_topic, latency_run,
    now_ms, percentile, trades_dataflow, utf8, waterline,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The four modes, at-least-once at 100 ms (the baseline of every ratio) first.
const MODES: [(&str, &str); 4] = [
    ("at-least-once", "100ms"),
    ("exactly-once", "100ms"),
    ("at-least-once", "1s"),
    ("exactly-once", "1s"),
];
const WORKERS: &str = "2";
/// Live feed of the latency runs.
const LATENCY_FEED: Feed = Feed {
    rate: 4_000.0,
    partitions: 4,
    keys: 20,
    invalid: 0.05,
};
/// How long after the measured span its last dead letters may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let records = env_number("WATERLINE_BENCH_RECORDS", 1_000_000);
    let latency_secs = env_number("WATERLINE_BENCH_LATENCY_SECS", 12).max(1);
    let bootstrap = bootstrap();
    let topic = format!("bench-guarantee-{}", now_ms());
    let dir = bench_dir("guarantee");
    let configs: Vec<PathBuf> = MODES
        .iter()
        .map(|(guarantee, interval)| mode_config(&dir, guarantee, interval))
        .collect();

    fill_topic(
        &bootstrap,
        &topic,
        8,
        records,
        backfill_trades(50, 0.01, 0.01, 0.0, 3),
    );
    let dataflow = trades_dataflow(&dir, &topic, &topic, &[]);
    println!(
        "throughput: {records} trades, 8 partitions, {WORKERS} workers, \
         run --until end on Apache Kafka at {bootstrap}"
    );
    let mut baseline = None;
    for (i, ((guarantee, interval), config)) in MODES.iter().zip(&configs).enumerate() {
        let log = dir.join(format!("throughput-{i}.log"));
        let started = Instant::now();
        let status = waterline(&bootstrap, &log)
            .args([
                "run",
                "--dataflow",
                utf8(&dataflow),
                "--config",
                utf8(config),
            ])
            .args(["--until", "end", "-w", WORKERS])
            .env("WATERLINE_APP_ID", format!("{topic}-app-{i}"))
            .status()
            .expect("waterline starts");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            status.success(),
            "run failed ({status}); see {}",
            log.display()
        );
        let rate = records as f64 / secs;
        let base = *baseline.get_or_insert(rate);
        println!(
            "{guarantee:<14} commit every {interval:<6} {secs:>6.2} s  {rate:>10.0} records/s  \
             = {:.2}× at-least-once/100ms",
            rate / base
        );
    }

    println!(
        "latency: {} trades/s ({:.0}% invalid), {} partitions, \
         {WORKERS} workers, out-of-orderness 100 ms; dead letters of the records sent in \
         {latency_secs} s, read with read_committed",
        LATENCY_FEED.rate,
        LATENCY_FEED.invalid * 100.0,
        LATENCY_FEED.partitions,
    );
    let mut baseline = None;
    for (i, ((guarantee, interval), config)) in MODES.iter().zip(&configs).enumerate() {
        let args = [
            "run".to_string(),
            "--config".to_string(),
            utf8(config).to_string(),
            "-w".to_string(),
            WORKERS.to_string(),
        ];
        let latencies = latency_run(&LatencyRun {
            bootstrap: &bootstrap,
            dir: &dir,
            topic: &format!("{topic}-live-{i}"),
            args: &args,
            // A small out-of-orderness bound keeps the watermark delay, the same in every
            // mode, from hiding the commit interval.
            changes: &[(
                "max_out_of_orderness = \"5s\"",
                "max_out_of_orderness = \"100ms\"",
            )],
            feed: LATENCY_FEED,
            windows: None,
            seconds: latency_secs,
            drain: DRAIN_TIMEOUT,
        })
        .dead_letters;
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        let (b50, b99) = *baseline.get_or_insert((p50, p99));
        println!(
            "{guarantee:<14} commit every {interval:<6} p50 {p50:>6.0} ms  p99 {p99:>6.0} ms  \
             = {:.2}× / {:.2}× at-least-once/100ms  ({} dead letters)",
            p50 / b50,
            p99 / b99,
            latencies.len()
        );
    }
    std::fs::remove_dir_all(&dir).expect("the bench's own directory can be removed");
}

/// A config file for one mode.
fn mode_config(dir: &Path, guarantee: &str, interval: &str) -> PathBuf {
    let config = dir.join(format!("{guarantee}-{interval}.toml"));
    let text = format!(
        "[processing]\nguarantee = \"{guarantee}\"\ncommit_interval = \"{interval}\"\n\
         [log]\nlevel = \"warn\"\n"
    );
    std::fs::write(&config, text).expect("the temporary directory is writable");
    config
}
