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
//!   The measured span starts 1 s after the first dead letter is read, when the run is past
//!   its start-up (fencing, recovery, the first commits) and has caught up with what the
//!   feeder sent meanwhile; it lasts `WATERLINE_BENCH_LATENCY_SECS` (12 by default).
//!
//! ```text
//! cargo bench --bench guarantee                  # about 2 minutes
//! WATERLINE_BENCH_RECORDS=2000000 WATERLINE_BENCH_LATENCY_SECS=30 cargo bench --bench guarantee
//! ```
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`. The runs' logs go
//! to a temporary directory, named when a run fails and removed when the bench succeeds.

mod common;

use common::{bootstrap, env_number};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use waterline::cli::GenerateArgs;
use waterline::generate::{Kind, TradeGenerator};

/// The four modes, at-least-once at 100 ms (the baseline of every ratio) first.
const MODES: [(&str, &str); 4] = [
    ("at-least-once", "100ms"),
    ("exactly-once", "100ms"),
    ("at-least-once", "1s"),
    ("exactly-once", "1s"),
];
const WORKERS: &str = "2";
/// Live feed of the latency runs.
const LATENCY_RATE: u64 = 4_000;
const LATENCY_INVALID: f64 = 0.05;
const LATENCY_PARTITIONS: i32 = 4;
/// From the first dead letter read to the start of the measured span.
const WARM_UP_MS: i64 = 1_000;
/// How long the run may take to show its first dead letter.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the measured span its last dead letters may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let records = env_number("WATERLINE_BENCH_RECORDS", 1_000_000);
    let latency_secs = env_number("WATERLINE_BENCH_LATENCY_SECS", 12).max(1);
    let bootstrap = bootstrap();
    let stamp = now_ms();
    let topic = format!("bench-guarantee-{stamp}");
    let dir = std::env::temp_dir().join(format!("waterline-bench-{stamp}"));
    std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
    let configs: Vec<PathBuf> = MODES
        .iter()
        .map(|(guarantee, interval)| mode_config(&dir, guarantee, interval))
        .collect();

    fill_topic(&bootstrap, &dir, &topic, records);
    let dataflow = trades_dataflow(&dir, &topic, &[]);
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
        "latency: {LATENCY_RATE} trades/s ({:.0}% invalid), {LATENCY_PARTITIONS} partitions, \
         {WORKERS} workers, out-of-orderness 100 ms; dead letters of the records sent in \
         {latency_secs} s, read with read_committed",
        LATENCY_INVALID * 100.0
    );
    let mut baseline = None;
    for (i, ((guarantee, interval), config)) in MODES.iter().zip(&configs).enumerate() {
        let mut latencies = latency_run(
            &bootstrap,
            &dir,
            &format!("{topic}-live-{i}"),
            config,
            latency_secs,
        );
        latencies.sort_unstable();
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

/// The release binary, pointed at `bootstrap`, its stderr (the log) going to `log`.
fn waterline(bootstrap: &str, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
    command
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env("WATERLINE__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the temporary directory is writable"));
    command
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
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

/// `dataflows/trades.toml` reading `topic` and writing `<topic>-windows`, `<topic>-dlq` and
/// `<topic>-late`, with each `(from, to)` of `changes` applied too, written under `dir`.
/// Every text replaced must be there, so an edit of the dataflow cannot silently leave the
/// bench reading the wrong topic or with other settings than it says.
fn trades_dataflow(dir: &Path, topic: &str, changes: &[(&str, &str)]) -> PathBuf {
    let renames = [
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
    ];
    let changes = changes
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()));
    let mut text = include_str!("../dataflows/trades.toml").to_string();
    for (from, to) in renames.into_iter().chain(changes) {
        assert!(text.contains(&from), "dataflows/trades.toml has `{from}`");
        text = text.replace(&from, &to);
    }
    let path = dir.join(format!("{topic}.toml"));
    std::fs::write(&path, text).expect("the temporary directory is writable");
    path
}

/// Creates `topic` with `partitions` partitions: `waterline produce` does, writing one
/// valid trade.
fn create_topic(bootstrap: &str, topic: &str, partitions: i32, log: &Path) {
    let status = waterline(bootstrap, log)
        .args(["produce", "--topic", topic, "--count", "1"])
        .args(["--partitions", &partitions.to_string()])
        .status()
        .expect("waterline starts");
    assert!(
        status.success(),
        "produce failed ({status}); see {}",
        log.display()
    );
}

/// Creates `topic` with 8 partitions and fills it with `records` trades (1% invalid, 1%
/// late), as fast as the broker takes them.
fn fill_topic(bootstrap: &str, dir: &Path, topic: &str, records: u64) {
    create_topic(
        bootstrap,
        topic,
        8,
        &dir.join(format!("{topic}-produce.log")),
    );
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
            seed: 3,
            time_step_ms: 2,
        },
        1_768_312_800_000,
    );
    for i in 1..records {
        let g = generator.next(0);
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % 8) as i32)
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

/// Runs the pipeline in one mode on a fresh live topic and returns, for every invalid
/// record sent in the measured span, how long after it was sent a `read_committed`
/// consumer read its dead letter (ms).
fn latency_run(bootstrap: &str, dir: &Path, topic: &str, config: &Path, seconds: u64) -> Vec<i64> {
    let dlq = format!("{topic}-dlq");
    // A small out-of-orderness bound keeps the watermark delay, the same in every mode,
    // from hiding the commit interval.
    let dataflow = trades_dataflow(
        dir,
        topic,
        &[(
            "max_out_of_orderness = \"5s\"",
            "max_out_of_orderness = \"100ms\"",
        )],
    );
    create_topic(
        bootstrap,
        topic,
        LATENCY_PARTITIONS,
        &dir.join(format!("{topic}-produce.log")),
    );
    let log = dir.join(format!("{topic}-run.log"));
    let run = Running(
        waterline(bootstrap, &log)
            .args([
                "run",
                "--dataflow",
                utf8(&dataflow),
                "--config",
                utf8(config),
            ])
            .args(["-w", WORKERS])
            .env("WATERLINE_APP_ID", format!("{topic}-app"))
            .spawn()
            .expect("waterline starts"),
    );
    let consumer = dead_letter_reader(bootstrap, &dlq);
    let stop = Arc::new(AtomicBool::new(false));
    let invalid_sent = Arc::new(Mutex::new(Vec::new()));
    let feeder = {
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let (stop, invalid_sent) = (Arc::clone(&stop), Arc::clone(&invalid_sent));
        std::thread::spawn(move || feed(&bootstrap, &topic, &stop, &invalid_sent))
    };

    // (sent, read) of every dead letter, in ms since the epoch.
    let mut letters: Vec<(i64, i64)> = Vec::new();
    let mut last_error = None;
    let mut read = |letters: &mut Vec<(i64, i64)>| match consumer.poll(Duration::from_millis(50)) {
        Some(Ok(m)) => {
            let read_at = now_ms();
            let letter: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())
                .expect("waterline writes dead letters as JSON");
            let sent = letter["source"]["timestamp_ms"]
                .as_i64()
                .expect("the feeder stamps every record");
            letters.push((sent, read_at));
        }
        // Transient (librdkafka retries by itself); a lasting one shows as missing letters.
        Some(Err(e)) => last_error = Some(e),
        None => {}
    };
    let started = Instant::now();
    while letters.is_empty() {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "no dead letter within {START_TIMEOUT:?}; see {}",
            log.display()
        );
        read(&mut letters);
    }
    let from = letters[0].1 + WARM_UP_MS;
    let until = from + seconds as i64 * 1_000;
    while now_ms() < until {
        read(&mut letters);
    }
    let measured = |sent: &i64| (from..until).contains(sent);
    let expected = invalid_sent
        .lock()
        .expect("the feeder does not panic")
        .iter()
        .filter(|s| measured(s))
        .count();
    let count = |letters: &[(i64, i64)]| letters.iter().filter(|(s, _)| measured(s)).count();
    // The feed goes on meanwhile: a dead letter is held until every partition's watermark
    // has passed it, which needs newer input on all of them.
    let drained = Instant::now();
    while count(&letters) < expected && drained.elapsed() < DRAIN_TIMEOUT {
        read(&mut letters);
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder does not panic");

    let status = run.stop();
    assert!(
        status.success(),
        "run failed ({status}); see {}",
        log.display()
    );
    assert!(
        expected > 0,
        "invalid records were sent in the measured span"
    );
    assert_eq!(
        count(&letters),
        expected,
        "one dead letter read per invalid record sent in the measured span, within \
         {DRAIN_TIMEOUT:?} of its end (last consumer error: {last_error:?}); see {}",
        log.display()
    );
    letters
        .into_iter()
        .filter(|(sent, _)| measured(sent))
        .map(|(sent, read_at)| read_at - sent)
        .collect()
}

/// A running `waterline run`; killed if the bench panics before stopping it, so that no
/// run outlives the bench.
struct Running(std::process::Child);

impl Running {
    /// Stops the run as an operator would (SIGTERM: it commits what it wrote and exits).
    fn stop(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM reaches the run");
        self.0.wait().expect("the run is our child")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After `stop` the child is reaped and this does nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `read_committed` consumer of every partition of `topic`, from the beginning, once the
/// run has created it.
fn dead_letter_reader(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        // Assigned partitions, nothing to commit.
        .set("enable.auto.commit", "false")
        // Only what a downstream consumer of exactly-once output may see.
        .set("isolation.level", "read_committed")
        // Answer a fetch as soon as anything is there: the broker's default wait (500 ms)
        // would dominate the latency measured.
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("a consumer with valid settings");
    let started = Instant::now();
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("the broker answers metadata requests");
        let n = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n as i32;
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "the run did not create {topic} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("a fresh list takes any partition");
    }
    consumer.assign(&assignment).expect("assigning partitions");
    consumer
}

/// Sends trades to `topic` at [`LATENCY_RATE`], round-robin over its partitions, each with
/// event time and Kafka timestamp = the wall clock when sent, until `stop`, and lists the
/// timestamps of the invalid ones in `invalid_sent`. A timestamp is taken and listed under
/// the lock, so whoever holds it at wall-clock time `t` finds every invalid record stamped
/// before `t` listed.
fn feed(bootstrap: &str, topic: &str, stop: &AtomicBool, invalid_sent: &Mutex<Vec<i64>>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Send each record at once: its timestamp is when it was meant to leave.
        .set("linger.ms", "0")
        .create()
        .expect("a producer with valid settings");
    let mut generator = TradeGenerator::new(
        GenerateArgs {
            keys: 20,
            invalid: LATENCY_INVALID,
            late: 0.0,
            duplicate: 0.0,
            seed: 5,
            time_step_ms: 0,
        },
        0,
    );
    let started = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_micros(i * 1_000_000 / LATENCY_RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (sent, g) = {
            let mut listed = invalid_sent.lock().expect("the bench does not panic");
            let sent = now_ms();
            let g = generator.next(sent as u64);
            if g.kind == Kind::Invalid {
                listed.push(sent);
            }
            (sent, g)
        };
        let r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % LATENCY_PARTITIONS as u64) as i32)
            .timestamp(sent)
            .payload(&g.payload);
        producer
            .send(r)
            .map_err(|(e, _)| e)
            .expect("the local queue has room at this rate");
        i += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("the broker takes the feed");
}

/// The `q` quantile of `sorted` (nearest rank below), in ms.
fn percentile(sorted: &[i64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}
