//! End-to-end enrichment: the `waterline` binary against a real broker, trades joined with
//! a reference topic of rates.
//!
//! A bounded run (`--stop-at-end`) is compared, output by output, with an independent
//! computation from the rules (see `tests/enrich.rs`); a live run checks that a reference
//! topic that has gone quiet does not stall the windows.

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use common::kafka::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;

const START: u64 = 1_768_312_800_000; // 2026-01-13T14:00:00Z
const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "EURUSD", "GOLD"];

fn dataflow(dir: &std::path::Path, input: &str, rates: &str, prefix: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
name = "enriched"
[input]
topic = "{input}"
event_time_field = "timestamp"
key_field = "symbol"
id_field = "trade_id"
max_out_of_orderness = "5s"
idle_timeout = "1s"
[validation.fields]
trade_id = "string"
timestamp = "timestamp"
amount = "decimal"
symbol = "string"
[enrich]
topic = "{rates}"
effective_time_field = "effective_from"
on_missing = "dead_letter"
[enrich.fields]
rate = "decimal"
regulatory_flag = "bool"
[[windows]]
name = "amount_1m"
kind = "tumbling"
size = "1m"
grace = "10s"
field = "amount"
aggregates = ["count", "sum"]
[[windows]]
name = "rate_1m"
kind = "tumbling"
size = "1m"
grace = "10s"
field = "rate"
aggregates = ["count", "sum", "min", "max"]
[output]
topic = "{prefix}-out"
dead_letter_topic = "{prefix}-dlq"
late_topic = "{prefix}-late"
partitions = 2
"#
    );
    let path = dir.join("enriched.toml");
    std::fs::write(&path, text).expect("write the dataflow");
    path
}

fn create_compacted(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", "3600000");
    let results = futures_executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create_topics answers");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
}

struct Trade {
    t: u64,
    symbol: &'static str,
    amount: Decimal,
}

struct Rate {
    symbol: &'static str,
    e: u64,
    rate: Decimal,
}

fn rate_record(r: &Rate) -> KeyValue {
    (
        Some(r.symbol.as_bytes().to_vec()),
        Some(
            format!(
                r#"{{"effective_from":"{}","rate":"{}","regulatory_flag":false}}"#,
                waterline::time::rfc3339_ms(r.e),
                r.rate
            )
            .into_bytes(),
        ),
    )
}

fn trade_record(i: usize, t: &Trade) -> KeyValue {
    (
        Some(t.symbol.as_bytes().to_vec()),
        Some(
            format!(
                r#"{{"trade_id":"T{i}","timestamp":{},"amount":"{}","symbol":"{}"}}"#,
                t.t, t.amount, t.symbol
            )
            .into_bytes(),
        ),
    )
}

type Windows = BTreeMap<(String, String, u64), Vec<String>>;
/// count, sum, min, max.
type Acc = (u64, Decimal, Decimal, Decimal);

/// The expected windows and missing-reference dead letters (symbol, time).
fn expected(trades: &[Vec<Trade>], rates: &[Vec<Rate>]) -> (Windows, Vec<(String, u64)>) {
    let mut versions = Vec::new();
    for (p, rs) in rates.iter().enumerate() {
        let mut w = 0;
        for (o, r) in rs.iter().enumerate() {
            let tau = r.e.max(w);
            w = tau;
            versions.push((r.symbol, tau, r.e, p, o, r.rate));
        }
    }
    let mut accs: BTreeMap<(String, String, u64), Acc> = BTreeMap::new();
    let mut missing = Vec::new();
    for t in trades.iter().flatten() {
        let best = versions
            .iter()
            .filter(|v| v.0 == t.symbol && v.1 <= t.t)
            .max_by_key(|v| (v.2, v.3, v.4));
        let Some(v) = best else {
            missing.push((t.symbol.to_string(), t.t));
            continue;
        };
        let start = t.t - t.t % 60_000;
        for (name, value) in [("amount_1m", t.amount), ("rate_1m", v.5)] {
            let a = accs
                .entry((name.into(), t.symbol.into(), start))
                .or_insert((0, Decimal::ZERO, value, value));
            a.0 += 1;
            a.1 += value;
            a.2 = a.2.min(value);
            a.3 = a.3.max(value);
        }
    }
    let windows = accs
        .into_iter()
        .map(|(k, (count, sum, min, max))| {
            let mut v = vec![count.to_string(), sum.normalize().to_string()];
            if k.0 == "rate_1m" {
                v.push(min.normalize().to_string());
                v.push(max.normalize().to_string());
            }
            (k, v)
        })
        .collect();
    missing.sort();
    (windows, missing)
}

fn read_outputs(prefix: &str) -> (Windows, Vec<(String, u64)>) {
    let (out, dlq, late) = (
        format!("{prefix}-out"),
        format!("{prefix}-dlq"),
        format!("{prefix}-late"),
    );
    let mut windows = Windows::new();
    let mut missing = Vec::new();
    for (topic, _, payload) in consume_all(&[&out, &dlq, &late]) {
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert!(topic != late, "nothing is late here: {json}");
        if topic == dlq {
            assert_eq!(json["error_kind"], "missing_reference", "{json}");
            let event: serde_json::Value =
                serde_json::from_str(json["payload_utf8"].as_str().expect("text")).expect("JSON");
            missing.push((
                event["key"].as_str().expect("key").to_string(),
                event["event_time_ms"].as_u64().expect("time"),
            ));
            continue;
        }
        let name = json["window"].as_str().expect("window").to_string();
        let dec = |f: &str| {
            Decimal::from_str(json[f].as_str().expect("decimal"))
                .expect("decimal")
                .normalize()
                .to_string()
        };
        let mut v = vec![json["count"].to_string(), dec("sum")];
        if name == "rate_1m" {
            v.push(dec("min"));
            v.push(dec("max"));
        }
        let key = (
            name,
            json["key"].as_str().expect("key").to_string(),
            json["window_start_ms"].as_u64().expect("start"),
        );
        assert!(
            windows.insert(key.clone(), v).is_none(),
            "duplicate {key:?}"
        );
    }
    missing.sort();
    (windows, missing)
}

#[test]
fn enriched_trades_end_to_end_match_an_independent_computation() {
    let mut rng = StdRng::seed_from_u64(42);
    let (input, rates_topic, prefix) = (unique("trades"), unique("rates"), unique("enr"));
    create_topic(&input, 3);
    create_compacted(&rates_topic, 2);
    // Rates: every symbol from 14:00:30 on, with updates, some effective before what their
    // partition had already read (late: they apply from the partition's watermark only).
    let mut rates: Vec<Vec<Rate>> = vec![Vec::new(), Vec::new()];
    for (i, s) in SYMBOLS.iter().enumerate() {
        let p = i % 2;
        let mut e = START + 30_000 + rng.random_range(0..20_000);
        for _ in 0..6 {
            let effective = if rng.random_bool(0.3) {
                e.saturating_sub(rng.random_range(0..60_000))
            } else {
                e
            };
            rates[p].push(Rate {
                symbol: s,
                e: effective,
                rate: Decimal::new(rng.random_range(500..2_000), 3),
            });
            e += rng.random_range(10_000..60_000);
        }
    }
    // Trades over four minutes, in order within 2 s on each partition.
    let trades: Vec<Vec<Trade>> = (0..3)
        .map(|_| {
            let mut clock = START;
            (0..1_500)
                .map(|_| {
                    clock += rng.random_range(0..320);
                    Trade {
                        t: clock.saturating_sub(rng.random_range(0..2_000)).max(START),
                        symbol: SYMBOLS[rng.random_range(0..SYMBOLS.len())],
                        amount: Decimal::new(rng.random_range(1..1_000_000), 2),
                    }
                })
                .collect()
        })
        .collect();
    let mut n = 0;
    let records: Vec<Vec<KeyValue>> = trades
        .iter()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    n += 1;
                    trade_record(n, t)
                })
                .collect()
        })
        .collect();
    produce(&input, &records);
    let rate_records: Vec<Vec<KeyValue>> = rates
        .iter()
        .map(|rs| rs.iter().map(rate_record).collect())
        .collect();
    produce(&rates_topic, &rate_records);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dataflow(dir.path(), &input, &rates_topic, &prefix);
    let out = waterline_as(
        &unique("app"),
        &[
            "run",
            "--dataflow",
            path.to_str().expect("utf-8"),
            "-w",
            "2",
            "--stop-at-end",
        ],
    );
    assert!(
        out.status.success(),
        "run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (windows, missing) = read_outputs(&prefix);
    let (want_windows, want_missing) = expected(&trades, &rates);
    assert!(!want_missing.is_empty() && want_windows.len() > 20);
    assert_eq!(missing, want_missing, "missing-reference dead letters");
    for (k, v) in &want_windows {
        assert_eq!(windows.get(k), Some(v), "window {k:?}");
    }
    assert_eq!(windows.len(), want_windows.len(), "no other windows");
}

#[test]
fn a_quiet_reference_topic_does_not_stall_windows() {
    let (input, rates_topic, prefix) = (unique("trades"), unique("rates"), unique("quiet"));
    create_topic(&input, 2);
    create_compacted(&rates_topic, 2);
    // One rate, then nothing: the reference topic is quiet for the whole run.
    produce(
        &rates_topic,
        &[
            vec![rate_record(&Rate {
                symbol: "AAPL",
                e: START,
                rate: Decimal::new(1085, 3),
            })],
            vec![],
        ],
    );
    let trades: Vec<KeyValue> = (0..1_800u64)
        .map(|i| {
            let t = Trade {
                t: START + i * 100, // 14:00:00 .. 14:02:59.9
                symbol: "AAPL",
                amount: Decimal::new(15, 1),
            };
            trade_record(i as usize, &t)
        })
        .collect();
    produce(&input, &[trades.clone(), trades]);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dataflow(dir.path(), &input, &rates_topic, &prefix);
    let log = dir.path().join("run.log");
    let mut child = waterline_binary()
        .args([
            "run",
            "--dataflow",
            path.to_str().expect("utf-8"),
            "-w",
            "2",
        ])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", unique("app"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("waterline starts");
    // The input's watermark reaches 14:02:54.9: the 14:00 and 14:01 windows of both
    // window specs close, although the reference topic says nothing.
    let out = format!("{prefix}-out");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = consume_all(&[&out])
            .into_iter()
            .map(|(_, _, payload)| {
                let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
                (
                    v["window"].as_str().expect("name").to_string(),
                    v["window_start_ms"].as_u64().expect("start"),
                    v["count"].as_u64().expect("count"),
                )
            })
            .collect();
        got.sort();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        got,
        vec![
            ("amount_1m".to_string(), START, 1_200),
            ("amount_1m".to_string(), START + 60_000, 1_200),
            ("rate_1m".to_string(), START, 1_200),
            ("rate_1m".to_string(), START + 60_000, 1_200),
        ],
        "windows close while the reference topic is quiet\n--- log\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
