//! The broker goes away under a running pipeline, twice, and comes back: the pipeline
//! keeps running (librdkafka reconnects; a commit that fails is retried by running again
//! from the committed progress, with backoff), and the committed output is exact.
//!
//! This test runs its own broker (`scripts/kafka.sh` on ports 19192/19193, data under
//! `target/kafka-restart-test`), so stopping it disturbs no other test.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{assert_matches, recompute_deduped, report};

const PORT: &str = "19192";

/// The private broker; stopped (and its data deleted) when dropped.
struct Broker;

impl Broker {
    fn script(action: &str) -> String {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_PORT", PORT)
            .env("KAFKA_CONTROLLER_PORT", "19193")
            .env(
                "KAFKA_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/target/kafka-restart-test"),
            )
            .output()
            .expect("scripts/kafka.sh runs");
        assert!(
            out.status.success(),
            "scripts/kafka.sh {action} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start() -> String {
        Broker::script("start")
            .lines()
            .last()
            .expect("the script prints the bootstrap address")
            .to_string()
    }

    fn stop() {
        Broker::script("stop");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg("clean")
            .env("KAFKA_PORT", PORT)
            .env("KAFKA_CONTROLLER_PORT", "19193")
            .env(
                "KAFKA_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/target/kafka-restart-test"),
            )
            .status();
    }
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("wait").is_none()
}

#[test]
fn a_broker_restart_under_a_running_pipeline_loses_and_doubles_nothing() {
    const PARTITIONS: usize = 8;
    Broker::script("clean");
    let guard = Broker;
    use_broker(&Broker::start());
    let (input, out, dlq, late) = (unique("restart"), unique("o"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(2718, PARTITIONS, 10_000));
    let cut = |range: std::ops::Range<usize>| -> Vec<Vec<KeyValue>> {
        records
            .iter()
            .map(|p| {
                let n = p.len();
                p[n * range.start / 10..n * range.end / 10].to_vec()
            })
            .collect()
    };
    produce(&input, &cut(0..5));

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    // An outage can outlast the idle timeout, and idleness (a wall-clock decision) would
    // make records late that the recomputation counts: partitions here never go idle.
    set_idle_timeout(&dataflow, "1h");
    let dataflow = dataflow.to_str().expect("utf-8");
    let app = unique("restart-app");
    let log = dir.path().join("run.log");
    let mut child = waterline_binary()
        .args(["run", "--dataflow", dataflow, "-w", "2"])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", &app)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("waterline starts");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut outages = Vec::new();
    for (slice, down_for) in [(5..8, 8), (8..10, 5)] {
        std::thread::sleep(Duration::from_secs(3));
        let before = committed(&out, &dlq, &late).windows.len();
        let t = Instant::now();
        Broker::stop();
        std::thread::sleep(Duration::from_secs(down_for));
        Broker::start();
        outages.push((before, t.elapsed()));
        assert!(
            alive(&mut child),
            "the pipeline outlived the outage:\n{}",
            log_text()
        );
        produce(&input, &cut(slice));
    }
    // The pipeline is still making progress after the outages.
    let deadline = Instant::now() + Duration::from_secs(90);
    let last = outages.last().expect("two outages").0;
    while committed(&out, &dlq, &late).windows.len() <= last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = committed(&out, &dlq, &late).windows.len();
    assert!(
        alive(&mut child) && after > last,
        "windows committed after the outages ({after} > {last}):\n{}",
        log_text()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    let exit = child.wait().expect("wait");
    let text = log_text();
    assert!(
        exit.success(),
        "a clean stop after the outages: {exit:?}\n{text}"
    );
    let noticed = text.contains("restarting from the committed progress")
        || text.to_lowercase().contains("error");
    assert!(noticed, "the log shows the outages:\n{text}");

    let last_run = waterline_binary()
        .args(["run", "--dataflow", dataflow, "-w", "2", "--until", "end"])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", &app)
        .output()
        .expect("waterline runs");
    assert!(
        last_run.status.success(),
        "the final bounded run completes:\n{}",
        String::from_utf8_lossy(&last_run.stderr)
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let got = committed(&out, &dlq, &late);
    assert_matches(&got, &expected, "after two broker restarts");
    let restarts = text
        .matches("restarting from the committed progress")
        .count();
    report(&format!(
        "broker restarts: outages of {:?}; the pipeline kept running ({restarts} in-process restarts); \
         committed output equals the recomputation exactly ({} windows, {} dead letters, {} late records)",
        outages.iter().map(|o| o.1).collect::<Vec<_>>(),
        expected.windows.len(),
        expected.dead.len(),
        expected.late.len()
    ));
    drop(guard);
}
