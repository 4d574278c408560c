//! What the end-to-end tests share: the broker, topics, producing and reading back,
//! the generated trades with what the test knows of them, and the shipped dataflow.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;

use super::{Dedupe, Expected, Input, Win, absorb};

static BOOTSTRAP: OnceLock<String> = OnceLock::new();

/// Points every helper at this broker instead (call before any other helper).
pub fn use_broker(address: &str) {
    BOOTSTRAP
        .set(address.to_string())
        .expect("the broker is chosen before first use");
}

/// The broker: `use_broker`'s, `$KAFKA_BOOTSTRAP`, or one `scripts/kafka.sh` starts.
pub fn bootstrap() -> &'static str {
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

pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("e2e-{name}-{}-{nanos}", std::process::id())
}

pub fn create_topic(name: &str, partitions: i32) {
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
    wait_for_partitions(name, partitions);
}

/// Creates `name` with topic settings `config` (the broker's defaults for the others).
pub fn create_topic_with(name: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topic = config.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |topic, (k, v)| topic.set(k, v),
    );
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create_topics answers");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
    wait_for_partitions(name, partitions);
}

/// Waits until the broker's metadata shows `name` with `partitions` partitions: the
/// controller answers CreateTopics before every client is told of the topic, and a test
/// that reads or writes at once would otherwise see no partitions (a busy broker lags).
fn wait_for_partitions(name: &str, partitions: i32) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let seen = partitions_once(&client, name, Duration::from_secs(30), |n| n == partitions);
    assert_eq!(
        seen, partitions,
        "topic {name}: partitions in the metadata 30 s after its creation"
    );
}

/// The partition count `client`'s metadata shows for `topic` (0 while it is unknown), as
/// soon as `ready` holds for it, or the last one seen after `within`.
fn partitions_once(
    client: &BaseConsumer,
    topic: &str,
    within: Duration,
    ready: impl Fn(i32) -> bool,
) -> i32 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = match client.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => md
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32),
            Err(_) => 0,
        };
        if ready(n) || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `topic`/`p`'s (low, high) offsets from `client`. Retried for up to 30 s while the broker
/// answers that it does not lead the partition (yet): a topic just created, on a busy
/// broker, has partitions in the metadata before their leaders have loaded them.
fn watermarks(client: &BaseConsumer, topic: &str, p: i32) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok(w) => return w,
            Err(e) => {
                let transient = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::NotLeaderForPartition
                            | RDKafkaErrorCode::LeaderNotAvailable
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                );
                assert!(
                    transient && std::time::Instant::now() < deadline,
                    "offsets of {topic}/{p}: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Changes settings of topic `name` while it is in use (Kafka's dynamic topic configs).
pub fn alter_topic(name: &str, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let change = config.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(name)),
        |change, (k, v)| change.set(k, v),
    );
    let results = futures_executor::block_on(admin.alter_configs([&change], &AdminOptions::new()))
        .expect("alter_configs answers");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot alter {t:?}: {e}"));
    }
}

/// Deletes the records of `topic`'s `partition` below `before` (Kafka's DeleteRecords,
/// what retention does by time or size).
pub fn delete_records(topic: &str, partition: i32, before: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(before))
        .expect("a valid offset");
    let done = futures_executor::block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("cannot delete records of {topic}/{partition}: {e}"));
    for e in done.elements() {
        if let Err(err) = e.error() {
            panic!("cannot delete records of {topic}/{}: {err}", e.partition());
        }
    }
}

/// Waits until every record written to `topic`'s `partitions` is readable by a
/// `read_committed` consumer: until its last stable offsets reach the log ends. A
/// transaction's commit returns once the coordinator has decided it; the markers that
/// end it in each partition are written after, so for a moment a reader that fixes its
/// end offsets sees the transaction as still open.
pub fn wait_until_stable(topic: &str, partitions: i32) {
    let consumer = |isolation: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("isolation.level", isolation)
            .create()
            .expect("consumer")
    };
    let (committed, uncommitted) = (consumer("read_committed"), consumer("read_uncommitted"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for p in 0..partitions {
        loop {
            let (_, stable) = watermarks(&committed, topic, p);
            let (_, end) = watermarks(&uncommitted, topic, p);
            if stable >= end {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{topic}/{p}: the last stable offset stays at {stable}, below the log end {end}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Produces each partition's records in order, so record i of partition p has offset i.
/// A Kafka record to send: (key, value).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

pub fn produce(topic: &str, partitions: &[Vec<KeyValue>]) {
    let with_headers: Vec<Vec<(KeyValue, Headers)>> = partitions
        .iter()
        .map(|p| p.iter().map(|kv| (kv.clone(), Vec::new())).collect())
        .collect();
    produce_with_headers(topic, &with_headers);
}

/// Kafka headers: (name, value).
pub type Headers = Vec<(String, Vec<u8>)>;

/// [`produce`], each record with its headers.
pub fn produce_with_headers(topic: &str, partitions: &[Vec<(KeyValue, Headers)>]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.max.bytes", "16777216")
        .create()
        .expect("producer");
    for (p, records) in partitions.iter().enumerate() {
        for ((key, payload), headers) in records {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic).partition(p as i32);
            if let Some(k) = key {
                r = r.key(k);
            }
            if let Some(v) = payload {
                r = r.payload(v);
            }
            if !headers.is_empty() {
                let owned = headers.iter().fold(
                    rdkafka::message::OwnedHeaders::new(),
                    |h, (name, value)| {
                        h.insert(rdkafka::message::Header {
                            key: name,
                            value: Some(value),
                        })
                    },
                );
                r = r.headers(owned);
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
pub fn consume_all(topics: &[&str]) -> Vec<(String, Option<Vec<u8>>, Vec<u8>)> {
    consume_all_records(topics)
        .into_iter()
        .map(|(topic, _, key, payload)| (topic, key, payload.unwrap_or_default()))
        .collect()
}

/// A record read back: (topic, partition, key, value).
pub type Consumed = (String, i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// Everything committed to `topics`, read with `read_committed`, each partition in offset
/// order: (topic, partition, key, payload, `None` for a null value).
pub fn consume_all_records(topics: &[&str]) -> Vec<Consumed> {
    consume_all_with_headers(topics)
        .into_iter()
        .map(|(record, _)| record)
        .collect()
}

/// [`consume_all_records`], each record with its headers in order.
pub fn consume_all_with_headers(topics: &[&str]) -> Vec<(Consumed, Headers)> {
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
        // A topic the dataflow created may not be in every broker's metadata yet.
        let n = partitions_once(&consumer, t, Duration::from_secs(10), |n| n > 0);
        assert!(n > 0, "topic {t} exists");
        for p in 0..n {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .expect("partition");
            let (_, high) = watermarks(&ends_consumer, t, p);
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
        let headers = m
            .headers()
            .map(|h| {
                use rdkafka::message::Headers as _;
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            (
                m.topic().to_string(),
                m.partition(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ),
            headers,
        ));
    }
    out
}

pub fn inputs_len(inputs: &[Vec<Input>], partition: i32) -> i64 {
    inputs[partition as usize].len() as i64
}

/// Everything committed to a job's output, dead-letter and late topics; panics on any
/// duplicate.
pub fn committed(out: &str, dlq: &str, late: &str) -> Expected {
    let mut got = Expected::default();
    for (topic, _, payload) in consume_all(&[out, dlq, late]) {
        absorb(&mut got, role(&topic, out, dlq), &payload);
    }
    got
}

/// Everything committed to a job's output, dead-letter and late topics, each output once:
/// what an at-least-once run wrote again after a restart must repeat what it wrote
/// before (a window result with other totals panics).
pub fn committed_allowing_repeats(out: &str, dlq: &str, late: &str) -> (Expected, usize) {
    let mut got = Expected::default();
    let mut repeats = 0;
    for (topic, _, payload) in consume_all(&[out, dlq, late]) {
        let mut one = Expected::default();
        absorb(&mut one, role(&topic, out, dlq), &payload);
        let before = got.dead.len() + got.late.len() + got.windows.len();
        got.dead.append(&mut one.dead);
        got.late.append(&mut one.late);
        for (id, totals) in one.windows {
            if let Some(earlier) = got.windows.insert(id.clone(), totals) {
                assert_eq!(
                    earlier, totals,
                    "window {id:?} written again with other totals"
                );
            }
        }
        if got.dead.len() + got.late.len() + got.windows.len() == before {
            repeats += 1;
        }
    }
    (got, repeats)
}

/// The role of a topic among a job's outputs.
pub fn role(topic: &str, out: &str, dlq: &str) -> &'static str {
    if topic == out {
        "window"
    } else if topic == dlq {
        "dead"
    } else {
        "late"
    }
}

/// The waterline binary, serving its HTTP endpoint on a free port: tests run side by side,
/// and the default port would be taken by whichever started first.
pub fn waterline_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
    command.env("WATERLINE__HTTP__LISTEN", "127.0.0.1:0");
    command
}

pub fn waterline(args: &[&str]) -> std::process::Output {
    waterline_as(&unique("app"), args)
}

/// Runs the binary as application `app` (its consumer group, progress topic and
/// transactional ids).
pub fn waterline_as(app: &str, args: &[&str]) -> std::process::Output {
    let out = waterline_binary()
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

pub const SHIPPED: &str = include_str!("../../dataflows/trades.toml");
/// The window `dataflows/trades.toml` declares, as the test knows it.
pub const TRADES_WINDOW: Win = Win {
    name: "trades_1m",
    size: 60_000,
    slide: 60_000,
    gap: 0,
    grace: 10_000,
    avg_scale: 2,
};
pub const TRADES_OOO_MS: u64 = 5_000;
pub const TRADES_DEDUPE: Dedupe = Dedupe {
    field: "trade_id",
    horizon: 300_000,
    dead_letter: true,
};

/// Writes the shipped trades dataflow with this test's topics.
pub fn trades_dataflow(
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

/// Sets the `idle_timeout` of the dataflow file at `path` (the shipped one says 30 s).
pub fn set_idle_timeout(path: &std::path::Path, timeout: &str) {
    let text = std::fs::read_to_string(path).expect("read the dataflow");
    assert!(
        text.contains("idle_timeout = \"30s\""),
        "the shipped idle timeout"
    );
    let text = text.replace(
        "idle_timeout = \"30s\"",
        &format!("idle_timeout = \"{timeout}\""),
    );
    std::fs::write(path, text).expect("write the dataflow");
}

/// Generated trades: per partition, (message key, record).
pub type Generated = Vec<Vec<(Option<Vec<u8>>, Input)>>;

/// Splits generated trades into what is sent to Kafka and what the test knows of it.
pub fn split(data: Generated) -> (Vec<Vec<KeyValue>>, Vec<Vec<Input>>) {
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
pub fn trades(seed: u64, partitions: usize, per_partition: usize) -> Generated {
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
pub fn with_duplicates(
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
