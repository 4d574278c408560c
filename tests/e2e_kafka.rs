//! End-to-end tests: the `waterline` binary against a real Apache Kafka broker.
//!
//! The broker is `$KAFKA_BOOTSTRAP` when set; otherwise `scripts/kafka.sh start` provides
//! one (Apache Kafka from Maven Central, single-node KRaft). Each test uses topics of its
//! own, so tests share one broker.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use common::{Dedupe, Expected, Input, Win, absorb, assert_matches, recompute_deduped};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;

fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
            return b;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .output()
            .expect("scripts/kafka.sh runs");
        assert!(
            out.status.success(),
            "scripts/kafka.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .expect("the script prints the bootstrap address")
            .trim()
            .to_string()
    })
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("e2e-{name}-{}-{nanos}", std::process::id())
}

fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("max.message.bytes", "16777216");
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create_topics answers");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
}

/// Produces each partition's records in order, so record i of partition p has offset i.
/// A Kafka record to send: (key, value).
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

fn produce(topic: &str, partitions: &[Vec<KeyValue>]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.max.bytes", "16777216")
        .create()
        .expect("producer");
    for (p, records) in partitions.iter().enumerate() {
        for (key, payload) in records {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic).partition(p as i32);
            if let Some(k) = key {
                r = r.key(k);
            }
            if let Some(v) = payload {
                r = r.payload(v);
            }
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        assert!(e.to_string().contains("Queue full"), "produce failed: {e}");
                        r = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("all records delivered");
}

/// Everything committed to `topics`, read with `read_committed`: (topic, key, payload).
fn consume_all(topics: &[&str]) -> Vec<(String, Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.message.max.bytes", "16777216")
        .create()
        .expect("consumer");
    // Read to the high watermark: a read_committed client is told the last stable offset,
    // which stops before a commit whose markers are still being written.
    let ends_consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .expect("metadata");
        let n = md.topics()[0].partitions().len() as i32;
        assert!(n > 0, "topic {t} exists");
        for p in 0..n {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .expect("partition");
            let (_, high) = ends_consumer
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .expect("watermarks");
            if high > 0 {
                ends.insert((t.to_string(), p), high);
            }
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading outputs; left: {ends:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // Transactional topics end in commit markers, which are never delivered: the
            // consumer's position says when a partition has been read to its end.
            let positions = consumer.position().expect("positions");
            for e in positions.elements() {
                if let Offset::Offset(o) = e.offset() {
                    let k = (e.topic().to_string(), e.partition());
                    if ends.get(&k).is_some_and(|&high| o >= high) {
                        ends.remove(&k);
                    }
                }
            }
            continue;
        };
        let m = m.expect("consume");
        let k = (m.topic().to_string(), m.partition());
        if ends.get(&k).is_some_and(|&high| m.offset() + 1 >= high) {
            ends.remove(&k);
        }
        out.push((
            m.topic().to_string(),
            m.key().map(<[u8]>::to_vec),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out
}

fn inputs_len(inputs: &[Vec<Input>], partition: i32) -> i64 {
    inputs[partition as usize].len() as i64
}

/// Everything committed to a job's output, dead-letter and late topics; panics on any
/// duplicate.
fn committed(out: &str, dlq: &str, late: &str) -> Expected {
    let mut got = Expected::default();
    for (topic, _, payload) in consume_all(&[out, dlq, late]) {
        absorb(&mut got, role(&topic, out, dlq), &payload);
    }
    got
}

/// The role of a topic among a job's outputs.
fn role(topic: &str, out: &str, dlq: &str) -> &'static str {
    if topic == out {
        "window"
    } else if topic == dlq {
        "dead"
    } else {
        "late"
    }
}

fn waterline(args: &[&str]) -> std::process::Output {
    waterline_as(&unique("app"), args)
}

/// Runs the binary as application `app` (its consumer group, progress topic and
/// transactional ids).
fn waterline_as(app: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(args)
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", app)
        .output()
        .expect("the waterline binary runs");
    eprintln!(
        "$ waterline {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SHIPPED: &str = include_str!("../dataflows/trades.toml");
/// The window `dataflows/trades.toml` declares, as the test knows it.
const TRADES_WINDOW: Win = Win {
    name: "trades_1m",
    size: 60_000,
    grace: 10_000,
    avg_scale: 2,
};
const TRADES_OOO_MS: u64 = 5_000;
const TRADES_DEDUPE: Dedupe = Dedupe {
    field: "trade_id",
    horizon: 300_000,
    dead_letter: true,
};

/// Writes the shipped trades dataflow with this test's topics.
fn trades_dataflow(
    dir: &std::path::Path,
    input: &str,
    out: &str,
    dlq: &str,
    late: &str,
) -> std::path::PathBuf {
    assert!(
        SHIPPED.contains("max_out_of_orderness = \"5s\"")
            && SHIPPED.contains("size = \"1m\"")
            && SHIPPED.contains("grace = \"10s\"")
            && SHIPPED.contains("horizon = \"5m\"\ndead_letter = true")
    );
    let text = SHIPPED
        .replace("topic = \"trades\"", &format!("topic = \"{input}\""))
        .replace("topic = \"trades-windows\"", &format!("topic = \"{out}\""))
        .replace(
            "dead_letter_topic = \"trades-dead-letters\"",
            &format!("dead_letter_topic = \"{dlq}\""),
        )
        .replace(
            "late_topic = \"trades-late\"",
            &format!("late_topic = \"{late}\""),
        );
    let path = dir.join("trades.toml");
    std::fs::write(&path, text).expect("write the dataflow");
    path
}

/// Generated trades: per partition, (message key, record).
type Generated = Vec<Vec<(Option<Vec<u8>>, Input)>>;

/// Splits generated trades into what is sent to Kafka and what the test knows of it.
fn split(data: Generated) -> (Vec<Vec<KeyValue>>, Vec<Vec<Input>>) {
    data.into_iter()
        .map(|p| {
            p.into_iter()
                .map(|(k, i)| ((k, i.payload.clone()), i))
                .unzip()
        })
        .unzip()
}

/// Trades over `partitions`, with about 1% invalid and 1% late records, and the hostile
/// inputs every stream processor meets.
fn trades(seed: u64, partitions: usize, per_partition: usize) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let statuses = ["pending", "filled", "cancelled"];
    (0..partitions)
        .map(|p| {
            let mut clock: u64 = 1_768_312_800_000 + rng.random_range(0..20_000); // 2026-01-13T14:00Z
            (0..per_partition)
                .map(|i| {
                    clock += rng.random_range(0..40);
                    let roll: f64 = rng.random();
                    let time = if roll < 0.01 {
                        clock - rng.random_range(120_000..600_000) // minutes behind: late
                    } else {
                        clock - rng.random_range(0..7_000) // around the 5 s bound
                    };
                    let symbol = format!("SYM{:02}", rng.random_range(0..50));
                    let cents: i64 = rng.random_range(1..100_000_000);
                    let amount = Decimal::new(cents, 2);
                    let amount_json = if i % 2 == 0 { amount.to_string() } else { format!("\"{amount}\"") };
                    let ts = if i % 3 == 0 {
                        let t = chrono::DateTime::from_timestamp_millis(time as i64).expect("time");
                        format!("\"{}\"", t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    } else {
                        time.to_string()
                    };
                    let status = statuses[i % 3];
                    let good = format!(r#"{{"trade_id":"TRX-{p}-{i}","timestamp":{ts},"amount":{amount_json},"symbol":"{symbol}","status":"{status}"}}"#);
                    let key = if i % 97 == 0 { None } else { Some(symbol.clone().into_bytes()) };
                    if i == 500 {
                        // A 1 MiB payload that is a valid trade.
                        let big = good.replacen('{', &format!(r#"{{"pad":"{}","#, "x".repeat(1 << 20)), 1);
                        return (key, Input { payload: Some(big.into_bytes()), truth: Ok((time, symbol, amount)) });
                    }
                    if rng.random_bool(0.01) {
                        let (payload, kind): (Option<Vec<u8>>, &'static str) = match rng.random_range(0..9) {
                            0 => (None, "empty_payload"),
                            1 => (Some(Vec::new()), "empty_payload"),
                            2 => (Some(good.as_bytes()[..good.len() / 2].to_vec()), "malformed_json"),
                            3 => (Some(vec![0xff, 0xfe, 0x00, b'{']), "not_utf8"),
                            4 => (Some(b"[1,2,3]".to_vec()), "not_an_object"),
                            5 => (Some(good.replace(&format!("\"{status}\""), "\"exploded\"").into_bytes()), "rule_violation"),
                            6 => (Some(good.replace(&amount_json, &format!("-{amount}")).into_bytes()), "rule_violation"),
                            7 => (Some(good.replace(&amount_json, "\"NaN\"").into_bytes()), "invalid_value"),
                            _ => (Some(good.replace(&amount_json, "1e400").into_bytes()), "invalid_value"),
                        };
                        return (key, Input { payload, truth: Err(kind) });
                    }
                    (key, Input { payload: Some(good.into_bytes()), truth: Ok((time, symbol, amount)) })
                })
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|records| with_duplicates(&mut rng, records))
        .collect()
}

/// Adds what producer retries and careless upstreams do: about 0.5% byte-for-byte copies
/// of a recent trade (a retry), and 0.3% trades that reuse an earlier trade's id for a new
/// event (a duplicate only within the dedupe horizon).
fn with_duplicates(
    rng: &mut StdRng,
    records: Vec<(Option<Vec<u8>>, Input)>,
) -> Vec<(Option<Vec<u8>>, Input)> {
    let mut out: Vec<(Option<Vec<u8>>, Input)> = Vec::with_capacity(records.len() * 101 / 100);
    let mut valid: Vec<usize> = Vec::new();
    let id_of = |payload: &[u8]| -> String {
        let v: serde_json::Value = serde_json::from_slice(payload).expect("a valid trade is JSON");
        v["trade_id"].as_str().expect("a trade id").to_string()
    };
    for (key, mut input) in records {
        let small = input.payload.as_ref().is_some_and(|p| p.len() < 10_000);
        if input.truth.is_ok() && small && !valid.is_empty() && rng.random_bool(0.003) {
            let back = rng.random_range(1..=valid.len().min(20_000));
            let earlier = out[valid[valid.len() - back]]
                .1
                .payload
                .as_deref()
                .expect("valid");
            let (old, new) = (
                id_of(input.payload.as_deref().expect("valid")),
                id_of(earlier),
            );
            let payload = String::from_utf8(input.payload.take().expect("valid")).expect("UTF-8");
            input.payload = Some(payload.replacen(&old, &new, 1).into_bytes());
        }
        if input.truth.is_ok() && small {
            valid.push(out.len());
        }
        out.push((key, input));
        if !valid.is_empty() && rng.random_bool(0.005) {
            let back = rng.random_range(1..=valid.len().min(200));
            let copy = out[valid[valid.len() - back]].clone();
            out.push(copy);
        }
    }
    out
}

#[test]
fn trades_end_to_end_match_an_independent_recomputation() {
    trades_end_to_end("2", None);
}

#[test]
fn at_least_once_mode_without_crashes_is_exact_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("alos.toml");
    std::fs::write(
        &config,
        "[processing]\nguarantee = \"at-least-once\"\ncommit_interval = \"1s\"\n",
    )
    .expect("write");
    trades_end_to_end("3", Some(&config));
}

/// 100,800 trades over 8 partitions through `run --stop-at-end -w <workers>`.
fn trades_end_to_end(workers: &str, config: Option<&std::path::Path>) {
    const PARTITIONS: usize = 8;
    let data = trades(2026, PARTITIONS, 12_600);
    let (input, out, dlq, late) = (
        unique("trades"),
        unique("windows"),
        unique("dlq"),
        unique("late"),
    );
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    produce(&input, &records);
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let total: usize = inputs.iter().map(Vec::len).sum();
    assert!(total >= 100_000);
    assert!(
        expected.dead.len() > total / 200 && expected.late.len() > total / 200,
        "the input has ~1% invalid and ~1% late"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let mut args = vec![
        "run",
        "--dataflow",
        dataflow.to_str().expect("utf-8 path"),
        "--stop-at-end",
        "-w",
        workers,
    ];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().expect("utf-8 path")]);
    }
    let app = unique("app");
    let run = waterline_as(&app, &args);
    assert!(run.status.success(), "waterline run --stop-at-end exits 0");

    // The read positions reached the consumer group, for lag tools.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &app)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition(&input, p);
    }
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("group offsets");
    for e in committed.elements() {
        let size = inputs_len(&inputs, e.partition());
        assert_eq!(
            e.offset(),
            Offset::Offset(size),
            "group offset of partition {}",
            e.partition()
        );
    }
    // A completed job is not resumed (it would drop everything as already committed).
    let again = waterline_as(&app, &args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already completed"));

    let mut got = Expected::default();
    let mut originals = BTreeMap::new();
    for (p, records) in inputs.iter().enumerate() {
        for (o, r) in records.iter().enumerate() {
            // Invalid records and duplicates become dead letters.
            originals.insert((p as i64, o as i64), r.payload.clone().unwrap_or_default());
        }
    }
    for (topic, key, payload) in consume_all(&[&out, &dlq, &late]) {
        let role = role(&topic, &out, &dlq);
        if role == "dead" {
            // The raw bytes survive, exactly.
            let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
            let at = (
                v["source"]["partition"].as_i64().expect("p"),
                v["source"]["offset"].as_i64().expect("o"),
            );
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v["payload_base64"].as_str().expect("base64"))
                .expect("valid base64");
            assert_eq!(
                Some(&raw),
                originals.get(&at),
                "dead letter {at:?} keeps the raw payload"
            );
        } else {
            let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
            assert_eq!(
                key.as_deref(),
                v["key"].as_str().map(str::as_bytes),
                "message key = the record's key"
            );
        }
        absorb(&mut got, role, &payload);
    }
    eprintln!(
        "end-to-end: {total} records in, {} windows, {} dead letters, {} late records: all equal to the recomputation",
        expected.windows.len(),
        expected.dead.len(),
        expected.late.len()
    );
    assert_matches(
        &got,
        &expected,
        &format!("end-to-end, {workers} workers, 8 partitions"),
    );
}

#[test]
fn a_missing_input_topic_fails_at_start_up_with_its_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = unique("missing");
    let dataflow = trades_dataflow(
        dir.path(),
        &missing,
        &unique("o"),
        &unique("d"),
        &unique("l"),
    );
    let run = waterline(&[
        "run",
        "--dataflow",
        dataflow.to_str().expect("utf-8 path"),
        "--stop-at-end",
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("input topic `{missing}` does not exist")),
        "{stderr}"
    );
}

#[test]
fn idle_partitions_do_not_stall_windows_and_sigterm_stops_cleanly() {
    // Data on partition 0 only; partitions 1-3 stay silent and must stop holding the
    // watermark back after idle_timeout (1 s here).
    let (input, out, dlq, late) = (unique("idle"), unique("o"), unique("d"), unique("l"));
    create_topic(&input, 4);
    let start: u64 = 1_768_312_800_000; // 14:00:00
    let p0: Vec<KeyValue> = (0..1_800u64)
        .map(|i| {
            let t = start + i * 100; // 14:00:00 .. 14:02:59.9
            let trade = format!(r#"{{"trade_id":"T{i}","timestamp":{t},"amount":"1.5","symbol":"IDLE","status":"filled"}}"#);
            (Some(b"IDLE".to_vec()), Some(trade.into_bytes()))
        })
        .collect();
    produce(&input, &[p0, vec![], vec![], vec![]]);

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let text = std::fs::read_to_string(&dataflow)
        .expect("read")
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1s\"");
    std::fs::write(&dataflow, text).expect("write");
    // The run's log goes to a file: a pipe nobody reads would block it once full.
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args([
            "run",
            "--dataflow",
            dataflow.to_str().expect("utf-8"),
            "-w",
            "2",
        ])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", unique("app"))
        .env("RUST_LOG", "waterline=trace,info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("waterline starts");

    // The watermark reaches 14:02:54.9 (max seen − 5 s): the 14:00 and 14:01 windows close
    // (at 14:01:10 and 14:02:10); 14:02 does not (it closes at 14:03:10).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut starts = Vec::new();
    while starts.len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        starts = window_starts(&out);
    }
    if starts != vec![start, start + 60_000] {
        child.kill().expect("kill");
        child.wait().expect("wait");
        panic!(
            "windows closed while partitions 1-3 were idle: got {starts:?}\n--- log\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let stop_deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < stop_deadline,
            "waterline did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "--- log\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        exit.success(),
        "SIGTERM is a clean stop: exit 0, got {exit:?}"
    );
    assert_eq!(
        window_starts(&out),
        vec![start, start + 60_000],
        "a stop does not emit open windows"
    );
}

/// The window starts written to `topic` so far, sorted.
fn window_starts(topic: &str) -> Vec<u64> {
    let mut starts: Vec<u64> = consume_all(&[topic])
        .into_iter()
        .map(|(_, _, payload)| {
            let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
            v["window_start_ms"].as_u64().expect("start")
        })
        .collect();
    starts.sort_unstable();
    starts
}

#[test]
fn produce_generates_trades_and_sends_files() {
    let topic = unique("produce");
    let run = waterline(&[
        "produce",
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--count",
        "600",
        "--rate",
        "0",
        "--invalid",
        "0.2",
        "--late",
        "0.1",
        "--duplicate",
        "0.05",
        "--seed",
        "11",
        "--time-step-ms",
        "5",
    ]);
    assert!(run.status.success());
    let records = consume_all(&[&topic]);
    assert_eq!(records.len(), 600);
    let parsed = records
        .iter()
        .filter(|(_, _, p)| {
            serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| v.is_object())
        })
        .count();
    assert!(
        parsed < 600 && parsed > 400,
        "about a fifth are invalid, some of them not JSON objects ({parsed} objects)"
    );
    let ids: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|(_, _, p)| serde_json::from_slice::<serde_json::Value>(p).ok())
        .filter_map(|v| v["trade_id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() < parsed, "duplicates repeat a trade id");

    let file_topic = unique("file");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, "{\"a\":1}\nnot json\n{\"b\":2}\n").expect("write");
    let run = waterline(&[
        "produce",
        "--topic",
        &file_topic,
        "--partitions",
        "1",
        "--file",
        file.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success());
    let payloads: Vec<Vec<u8>> = consume_all(&[&file_topic])
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(
        payloads,
        vec![
            b"{\"a\":1}".to_vec(),
            b"not json".to_vec(),
            b"{\"b\":2}".to_vec()
        ]
    );
}

/// The exactly-once proof: 210,000 trades over 8 partitions, 70% written up front and the
/// rest appended while the pipeline runs; the pipeline (2 workers, transactions every
/// 100 ms) is killed with SIGKILL at random moments at least ten times and restarted each
/// time; a last bounded run finishes the input. The `read_committed` contents of the
/// output, dead-letter and late topics must equal an independent computation exactly.
#[test]
fn sigkill_chaos_keeps_outputs_exactly_once() {
    const PARTITIONS: usize = 8;
    const KILLS: usize = 12;
    let data = trades(4242, PARTITIONS, 26_250);
    let (input, out, dlq, late) = (unique("chaos"), unique("w"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    let cut = 26_250 * 7 / 10;
    let first: Vec<Vec<KeyValue>> = records.iter().map(|p| p[..cut].to_vec()).collect();
    let rest: Vec<Vec<KeyValue>> = records.iter().map(|p| p[cut..].to_vec()).collect();
    produce(&input, &first);

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    // No wall-clock idleness: every partition keeps receiving data until the end.
    let text = std::fs::read_to_string(&dataflow)
        .expect("read")
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1h\"");
    std::fs::write(&dataflow, text).expect("write");
    let app = unique("chaos-app");
    let log = dir.path().join("run.log");
    let spawn = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_waterline"))
            .args([
                "run",
                "--dataflow",
                dataflow.to_str().expect("utf-8"),
                "-w",
                "2",
            ])
            .args(extra)
            .env("KAFKA_BOOTSTRAP", bootstrap())
            .env("WATERLINE_APP_ID", &app)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            // A file, not a pipe: an unread pipe would block the run once full.
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("waterline starts")
    };

    // Append the rest in slices while the pipeline is being killed.
    let appender = {
        let input = input.clone();
        std::thread::spawn(move || {
            for slice in 0..6 {
                let part: Vec<Vec<KeyValue>> = rest
                    .iter()
                    .map(|p| {
                        let n = p.len().div_ceil(6);
                        p.iter().skip(slice * n).take(n).cloned().collect()
                    })
                    .collect();
                produce(&input, &part);
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(99);
    let mut kills = 0;
    for _ in 0..KILLS {
        let mut child = spawn(&[]);
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2_500)));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        child.wait().expect("wait");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "a run panicked:\n{stderr}");
    }
    appender.join().expect("the appender finished");
    let status = spawn(&["--stop-at-end"]).wait().expect("wait");
    assert!(
        status.success(),
        "the final bounded run completes:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let got = committed(&out, &dlq, &late);
    assert_matches(&got, &expected, "after SIGKILL chaos");
    let records: usize = inputs.iter().map(Vec::len).sum();
    let duplicates = expected.dead.iter().filter(|d| d.2 == "duplicate").count();
    assert!(duplicates > 500, "the input has duplicates ({duplicates})");
    eprintln!(
        "chaos: {kills} kills with SIGKILL, {records} records in; committed output equals the recomputation exactly \
         ({} windows, {} dead letters of which {duplicates} duplicates, {} late records, nothing twice, nothing missing)",
        expected.windows.len(),
        expected.dead.len(),
        expected.late.len()
    );
    assert!(kills >= 10, "at least ten kills happened ({kills})");
}

/// Crashes at precise steps (`WATERLINE_FAULT`): after a commit's outputs were written but
/// before it committed; right after a commit; while recovering. Each is followed by a
/// restart, and the committed output must equal the independent computation exactly.
#[test]
fn fault_points_then_restart_are_exactly_once() {
    const PARTITIONS: usize = 8;
    let data = trades(777, PARTITIONS, 9_000);
    let (input, out, dlq, late) = (unique("faults"), unique("w"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    produce(&input, &records);
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("fast-commits.toml");
    std::fs::write(
        &config,
        "[processing]\ncommit_interval = \"20ms\"\n[log]\nlevel = \"warn\"\n",
    )
    .expect("write");
    let scenarios: [&[&str]; 3] = [
        &["before-commit:3"],
        &["after-commit:3"],
        &["before-commit:2", "during-recovery"],
    ];
    for (n, faults) in scenarios.iter().enumerate() {
        // Each scenario is its own job, writing its own output topics.
        let (o, d, l) = (
            format!("{out}-{n}"),
            format!("{dlq}-{n}"),
            format!("{late}-{n}"),
        );
        let fdir = tempfile::tempdir().expect("temp dir");
        let dataflow = trades_dataflow(fdir.path(), &input, &o, &d, &l);
        let app = unique("fault-app");
        let run = |fault: Option<&str>| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_waterline"));
            c.args([
                "run",
                "--dataflow",
                dataflow.to_str().expect("utf-8"),
                "--stop-at-end",
                "-w",
                "2",
            ])
            .args(["--config", config.to_str().expect("utf-8")])
            .env("KAFKA_BOOTSTRAP", bootstrap())
            .env("WATERLINE_APP_ID", &app)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
            if let Some(f) = fault {
                c.env("WATERLINE_FAULT", f);
            }
            c.output().expect("waterline runs")
        };
        for fault in faults.iter() {
            let crashed = run(Some(fault));
            let stderr = String::from_utf8_lossy(&crashed.stderr);
            assert!(
                !crashed.status.success(),
                "the run stops at fault point {fault}:\n{stderr}"
            );
            assert!(
                stderr.contains("fault point"),
                "{fault}: the fault point was reached:\n{stderr}"
            );
        }
        let finished = run(None);
        assert!(
            finished.status.success(),
            "the restart after {faults:?} completes:\n{}",
            String::from_utf8_lossy(&finished.stderr)
        );
        let got = committed(&o, &d, &l);
        assert_matches(&got, &expected, &format!("after fault points {faults:?}"));
        eprintln!("fault points {faults:?} then restart: committed output exact");
    }
}

/// Replay into the same topics. A job reads a first batch of trades (13:00), then a second
/// (from 14:00) written a moment later, commits part of it, and is stopped; `--from`
/// without `--reset` is refused; `--reset --from <the time the second batch was written>
/// --until end` reads the second batch again, to the end, and exits. Nothing the first run
/// committed is written twice, nothing is missing, every value is exact.
#[test]
fn a_replay_from_a_timestamp_adds_nothing_already_committed() {
    const PARTITIONS: usize = 4;
    let (input, out, dlq, late) = (unique("replay"), unique("o"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let early: u64 = 1_768_309_200_000; // 13:00:00
    let (first_batch, mut inputs): (Vec<Vec<KeyValue>>, Vec<Vec<Input>>) = (0..PARTITIONS)
        .map(|p| {
            (0..300u64)
                .map(|i| {
                    let t = early + i * 600;
                    let trade = format!(
                        r#"{{"trade_id":"EARLY-{p}-{i}","timestamp":{t},"amount":"2.25","symbol":"SYMA","status":"filled"}}"#
                    );
                    let truth = Ok((t, "SYMA".to_string(), Decimal::new(225, 2)));
                    let payload = Some(trade.into_bytes());
                    ((Some(b"SYMA".to_vec()), payload.clone()), Input { payload, truth })
                })
                .unzip()
        })
        .unzip();
    let (second_batch, later) = split(trades(515, PARTITIONS, 8_000));
    for (all, more) in inputs.iter_mut().zip(later) {
        all.extend(more);
    }
    produce(&input, &first_batch);
    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let dataflow = dataflow.to_str().expect("utf-8");
    let app = unique("replay-app");
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(["run", "--dataflow", dataflow, "-w", "2"])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", &app)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("waterline starts");
    std::thread::sleep(Duration::from_secs(2));
    // The second batch is stamped after this moment (Kafka create time).
    let between = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(50));
    produce(&input, &second_batch);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut windows = 0;
    while windows < 40 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        windows = committed(&out, &dlq, &late).windows.len();
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    let exit = child.wait().expect("wait");
    let first = committed(&out, &dlq, &late);
    assert!(
        exit.success() && first.windows.len() >= 40,
        "the first run committed windows ({}) and stopped cleanly ({exit:?}):\n{}",
        first.windows.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let from = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let refused = waterline_as(
        &app,
        &["run", "--dataflow", dataflow, "-w", "2", "--from", &from],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--reset"),
        "--from over committed progress needs --reset: {stderr}"
    );

    let replay = waterline_as(
        &app,
        &[
            "run",
            "--dataflow",
            dataflow,
            "-w",
            "2",
            "--reset",
            "--from",
            &from,
            "--until",
            "end",
        ],
    );
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "the replay completes: {stderr}");
    let starts: Vec<String> = (0..PARTITIONS).map(|p| format!("({p}, 300)")).collect();
    assert!(
        stderr.contains(&format!("[{}]", starts.join(", "))),
        "the replay starts each partition at the first record of the second batch: {stderr}"
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let got = committed(&out, &dlq, &late);
    assert_matches(&got, &expected, "after a replay into the same topics");
    eprintln!(
        "replay: the first run committed {} of {} windows; the replay from {from} added the rest, none twice",
        first.windows.len(),
        expected.windows.len()
    );
}
