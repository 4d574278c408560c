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

use common::{bootstrap, env_number};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use waterline::cli::GenerateArgs;
use waterline::generate::TradeGenerator;

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
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis();
    let topic = format!("bench-scaling-{stamp}");
    let dir = std::env::temp_dir().join(format!("waterline-bench-scaling-{stamp}"));
    std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
    let config = dir.join("bench.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").expect("writable");
    fill_topic(&bootstrap, &dir, &topic, records);
    let dataflow = trades_dataflow(&dir, &topic);
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
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
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env("WATERLINE_APP_ID", app)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the temporary directory is writable"));
    let started = Instant::now();
    let status = command.status().expect("waterline starts");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "run failed ({status}); see {}",
        log.display()
    );
    secs
}

/// User + system CPU seconds of this process's waited-for descendants so far.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux: /proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3; cutime and cstime are fields 16 and 17.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<f64>().expect("a tick count");
    (ticks(16) + ticks(17)) / rustix::param::clock_ticks_per_second() as f64
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

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `dataflows/trades.toml` reading `topic` and writing `<topic>-windows`, `-dlq` and
/// `-late`, written under `dir`.
fn trades_dataflow(dir: &Path, topic: &str) -> PathBuf {
    let mut text = include_str!("../dataflows/trades.toml").to_string();
    for (from, to) in [
        (
            "topic = \"trades\"".to_string(),
            format!("topic = \"{topic}\""),
        ),
        (
            "\"trades-windows\"".to_string(),
            format!("\"{topic}-windows\""),
        ),
        (
            "\"trades-dead-letters\"".to_string(),
            format!("\"{topic}-dlq\""),
        ),
        ("\"trades-late\"".to_string(), format!("\"{topic}-late\"")),
    ] {
        assert!(text.contains(&from), "dataflows/trades.toml has `{from}`");
        text = text.replace(&from, &to);
    }
    let path = dir.join(format!("{topic}.toml"));
    std::fs::write(&path, text).expect("the temporary directory is writable");
    path
}

/// Creates `topic` (`waterline produce` writes one trade) and fills it with `records`
/// trades spread round-robin over its partitions.
fn fill_topic(bootstrap: &str, dir: &Path, topic: &str, records: u64) {
    let log = dir.join("produce.log");
    let status = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(["produce", "--topic", topic, "--count", "1"])
        .args(["--partitions", &PARTITIONS.to_string()])
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("writable"))
        .status()
        .expect("waterline starts");
    assert!(status.success(), "produce failed; see {}", log.display());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Large batches: this is set-up, not measured.
        .set("linger.ms", "20")
        .create()
        .expect("a producer with valid settings");
    let mut generator = TradeGenerator::new(
        GenerateArgs {
            keys: 50,
            invalid: 0.01,
            late: 0.01,
            duplicate: 0.0,
            seed: 5,
            time_step_ms: 2,
        },
        1_768_312_800_000,
    );
    for i in 1..records {
        let g = generator.next(0);
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % PARTITIONS as u64) as i32)
            .payload(&g.payload);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("the broker takes the input");
}
