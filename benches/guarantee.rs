//! What exactly-once costs: end-to-end throughput of `waterline run --stop-at-end` on Apache
//! Kafka, at-least-once vs exactly-once, at commit intervals of 100 ms and 1 s. Every mode
//! reads the same input topic in the same run, and figures are ratios to at-least-once at
//! 100 ms, the cheapest commit path.
//!
//!     cargo bench --bench guarantee                     # 300k trades, 8 partitions, 2 workers
//!     WATERLINE_BENCH_RECORDS=1000000 cargo bench --bench guarantee
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
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
        "{n} trades, 8 partitions, 2 workers, run --stop-at-end on Apache Kafka at {bootstrap}"
    );
    let modes = [
        ("at-least-once", "100ms"),
        ("exactly-once", "100ms"),
        ("at-least-once", "1s"),
        ("exactly-once", "1s"),
    ];
    let mut baseline = None;
    for (i, (guarantee, interval)) in modes.iter().enumerate() {
        let config = dir.join(format!("mode-{i}.toml"));
        std::fs::write(
            &config,
            format!("[processing]\nguarantee = \"{guarantee}\"\ncommit_interval = \"{interval}\"\n[log]\nlevel = \"warn\"\n"),
        )
        .expect("write config");
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_waterline"))
            .args([
                "run",
                "--dataflow",
                dataflow.to_str().expect("utf-8"),
                "--config",
                config.to_str().expect("utf-8"),
            ])
            .args(["--stop-at-end", "-w", "2"])
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
}
