//! What exactly-once costs, on Apache Kafka, at-least-once vs exactly-once at commit
//! intervals of 100 ms and 1 s, each figure a ratio to at-least-once at 100 ms (the cheapest
//! commit path) measured in the same run:
//!
//! - throughput: `waterline run --until end` over the same input topic (300k trades, 8
//!   partitions, 2 workers), wall time from start to exit;
//! - end-to-end latency: `waterline run` on a live topic fed at a steady rate with event
//!   time = wall clock, and a `read_committed` consumer on the dead-letter topic. Each dead
//!   letter carries its source record's Kafka timestamp (set when it was produced), so
//!   consume time − that timestamp is how long an input took to become visible, committed,
//!   to a downstream reader: the watermark delay (out-of-orderness bound 100 ms here),
//!   the wait for the next commit and the commit itself. Invalid records are used because
//!   every one of them yields exactly one output at once, whatever the windows do.
//!
//! ```text
//! cargo bench --bench guarantee
//! WATERLINE_BENCH_RECORDS=1000000 WATERLINE_BENCH_LATENCY_SECS=20 cargo bench --bench guarantee
//! ```
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use waterline::cli::GenerateArgs;
use waterline::generate::TradeGenerator;

fn bootstrap() -> String {
    if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
        return b;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg("start")
        .output()
        .expect("scripts/kafka.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("an address")
        .trim()
        .to_string()
}

fn main() {
    let n: u64 = std::env::var("WATERLINE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let bootstrap = bootstrap();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let topic = format!("bench-guarantee-{stamp}");
    let dir = std::env::temp_dir().join(format!("waterline-bench-{stamp}"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // The input, once: `waterline produce` creates the topic with 8 partitions.
    let status = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args([
            "produce",
            "--topic",
            &topic,
            "--partitions",
            "8",
            "--count",
            "1",
            "--rate",
            "0",
        ])
        .env("KAFKA_BOOTSTRAP", &bootstrap)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("produce runs");
    assert!(status.success());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let mut generator = TradeGenerator::new(
        GenerateArgs {
            keys: 50,
            invalid: 0.01,
            late: 0.01,
            duplicate: 0.0,
            seed: 3,
            time_step_ms: 2,
        },
        1_768_312_800_000,
    );
    for i in 1..n {
        let g = generator.next(0);
        let mut r = BaseRecord::<[u8], [u8]>::to(&topic)
            .partition((i % 8) as i32)
            .payload(&g.payload);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");

    let dataflow = dir.join("trades.toml");
    let text = include_str!("../dataflows/trades.toml")
        .replace("topic = \"trades\"", &format!("topic = \"{topic}\""))
        .replace("trades-windows", &format!("{topic}-windows"))
        .replace("trades-dead-letters", &format!("{topic}-dlq"))
        .replace("trades-late", &format!("{topic}-late"));
    std::fs::write(&dataflow, text).expect("write dataflow");

    println!(
        "throughput: {n} trades, 8 partitions, 2 workers, run --until end on Apache Kafka at {bootstrap}"
    );
    let modes = [
        ("at-least-once", "100ms"),
        ("exactly-once", "100ms"),
        ("at-least-once", "1s"),
        ("exactly-once", "1s"),
    ];
    let config_of = |i: usize, guarantee: &str, interval: &str| {
        let config = dir.join(format!("mode-{i}.toml"));
        std::fs::write(
            &config,
            format!("[processing]\nguarantee = \"{guarantee}\"\ncommit_interval = \"{interval}\"\n[log]\nlevel = \"warn\"\n"),
        )
        .expect("write config");
        config
    };
    let mut baseline = None;
    for (i, (guarantee, interval)) in modes.iter().enumerate() {
        let config = config_of(i, guarantee, interval);
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_waterline"))
            .args([
                "run",
                "--dataflow",
                dataflow.to_str().expect("utf-8"),
                "--config",
                config.to_str().expect("utf-8"),
            ])
            .args(["--until", "end", "-w", "2"])
            .env("KAFKA_BOOTSTRAP", &bootstrap)
            .env("WATERLINE_APP_ID", format!("{topic}-app-{i}"))
            .output()
            .expect("run");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rate = n as f64 / secs;
        let base = *baseline.get_or_insert(rate);
        println!(
            "{guarantee:<14} commit every {interval:<6} {secs:>6.2} s  {rate:>10.0} records/s  = {:.2}× at-least-once/100ms",
            rate / base
        );
    }

    let seconds: u64 = std::env::var("WATERLINE_BENCH_LATENCY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(5);
    let rate = 2_000;
    println!(
        "latency: {rate} trades/s for {seconds} s per mode (5% invalid; the first 3 s left out), \
         4 partitions, 2 workers, out-of-orderness 100 ms; dead letters read with read_committed"
    );
    let mut baseline = None;
    for (i, (guarantee, interval)) in modes.iter().enumerate() {
        let config = config_of(10 + i, guarantee, interval);
        let mut latencies = latency_run(
            &bootstrap,
            &dir,
            &format!("{topic}-live-{i}"),
            &config,
            rate,
            seconds,
        );
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64;
        let (p50, p99) = (at(0.5), at(0.99));
        let (b50, b99) = *baseline.get_or_insert((p50, p99));
        println!(
            "{guarantee:<14} commit every {interval:<6} p50 {p50:>6.0} ms  p99 {p99:>6.0} ms  \
             = {:.2}× / {:.2}× at-least-once/100ms  ({} dead letters)",
            p50 / b50,
            p99 / b99,
            latencies.len()
        );
    }
}

/// Runs the pipeline on a fresh live topic fed at `rate` for `seconds`, and returns, for
/// every dead letter, how long after its source record was produced a `read_committed`
/// consumer saw it (ms).
fn latency_run(
    bootstrap: &str,
    dir: &std::path::Path,
    topic: &str,
    config: &std::path::Path,
    rate: u64,
    seconds: u64,
) -> Vec<i64> {
    let dlq = format!("{topic}-dlq");
    let dataflow = dir.join(format!("{topic}.toml"));
    let text = include_str!("../dataflows/trades.toml")
        .replace("topic = \"trades\"", &format!("topic = \"{topic}\""))
        .replace("trades-windows", &format!("{topic}-windows"))
        .replace("trades-dead-letters", &dlq)
        .replace("trades-late", &format!("{topic}-late"))
        .replace(
            "max_out_of_orderness = \"5s\"",
            "max_out_of_orderness = \"100ms\"",
        );
    std::fs::write(&dataflow, text).expect("write dataflow");
    let status = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args([
            "produce",
            "--topic",
            topic,
            "--partitions",
            "4",
            "--count",
            "1",
        ])
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("produce runs");
    assert!(status.success());
    let mut run = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(["run", "--dataflow", dataflow.to_str().expect("utf-8")])
        .args(["--config", config.to_str().expect("utf-8"), "-w", "2"])
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env("WATERLINE_APP_ID", format!("{topic}-app"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run starts");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    // The run creates its output topics; wait for the dead-letter topic to appear.
    let partitions = loop {
        let md = consumer
            .fetch_metadata(Some(&dlq), Duration::from_secs(5))
            .expect("metadata");
        let n = md.topics().first().map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n as i32;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&dlq, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let feeder = {
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "0")
                .create()
                .expect("producer");
            let mut generator = TradeGenerator::new(
                GenerateArgs {
                    keys: 20,
                    invalid: 0.05,
                    late: 0.0,
                    duplicate: 0.0,
                    seed: 5,
                    time_step_ms: 0,
                },
                0,
            );
            let started = Instant::now();
            for i in 0..rate * seconds {
                let due = started + Duration::from_micros(i * 1_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let g = generator.next(now_ms() as u64);
                let r = BaseRecord::<[u8], [u8]>::to(&topic)
                    .partition((i % 4) as i32)
                    .payload(&g.payload);
                producer.send(r).map_err(|(e, _)| e).expect("queued");
            }
            producer.flush(Duration::from_secs(30)).expect("flushed");
        })
    };
    // The first seconds include the run's start-up (fencing, the first commit): left out.
    let warm = now_ms() + 3_000;
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds + 4);
    while Instant::now() < end {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let seen = now_ms();
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
            if let Some(produced) = v["source"]["timestamp_ms"].as_i64()
                && produced >= warm
            {
                latencies.push(seen - produced);
            }
        }
    }
    feeder.join().expect("feeder");
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill runs");
    run.wait().expect("run stops");
    assert!(!latencies.is_empty(), "dead letters arrived");
    latencies
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}
