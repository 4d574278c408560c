//! A real Prometheus server scrapes a running `waterline run` on the real broker, and the
//! series it stored are checked against what the test sent: records read grow to the
//! number sent, consumer lag rises during the catch-up and returns to 0, dead letters per
//! reason and late records equal an independent recomputation, the watermark is the one
//! the input implies, and every metric the alert rules and the dashboard use exists.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `.ci/run` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{Running, recompute_deduped, report};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET `path` from `address`: (status, body).
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query against Prometheus: each series' labels and value.
fn query(prometheus: SocketAddr, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    try_query(prometheus, q).unwrap_or_else(|| panic!("Prometheus answers `{q}`"))
}

/// [`query`], or `None` while Prometheus does not answer yet.
fn try_query(prometheus: SocketAddr, q: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={}", encode(q)))?;
    if status == 503 {
        return None; // starting up
    }
    assert_eq!(status, 200, "query `{q}`: {body}");
    let v: Value = serde_json::from_str(&body).expect("the API answers JSON");
    let result = v["data"]["result"]
        .as_array()
        .expect("a vector result")
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a sample value");
            (labels, value)
        })
        .collect();
    Some(result)
}

/// The single value of `q`, if it has one.
fn scalar(prometheus: SocketAddr, q: &str) -> Option<f64> {
    let result = query(prometheus, q);
    assert!(result.len() <= 1, "`{q}` has one series: {result:?}");
    result.first().map(|(_, v)| *v)
}

/// Waits up to `limit` for `q` to satisfy `ok`, and returns its last value.
fn wait_for(prometheus: SocketAddr, q: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let v = try_query(prometheus, q).and_then(|r| {
            assert!(r.len() <= 1, "`{q}` has one series: {r:?}");
            r.first().map(|(_, v)| *v)
        });
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "`{q}` did not get there within {limit:?}: last {v:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `waterline_*` metric names a rules or dashboard file refers to.
fn referenced_metrics(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut names: Vec<String> = regex::Regex::new(r"\bwaterline_[a-z_]+")
        .expect("a valid regex")
        .find_iter(&text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn prometheus_scrapes_a_running_job_and_its_series_move_as_they_should() {
    let Ok(prometheus_bin) = which("prometheus") else {
        panic!(
            "the `prometheus` server binary is not installed: install the Debian package \
             `prometheus` (apt-get install prometheus); .ci/run does"
        );
    };
    const PARTITIONS: usize = 8;
    let data = trades(77, PARTITIONS, 100_000);
    let (input, out, dlq, late) = (
        unique("trades"),
        unique("windows"),
        unique("dlq"),
        unique("late"),
    );
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let total: usize = inputs.iter().map(Vec::len).sum();
    // Most of the input is waiting when the job starts (a catch-up, so lag shows); the rest
    // comes while it runs.
    let (first, second): (Vec<_>, Vec<_>) = records
        .into_iter()
        .map(|p| {
            let cut = p.len() * 9 / 10;
            let mut p = p;
            let rest = p.split_off(cut);
            (p, rest)
        })
        .unzip();
    produce(&input, &first);

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    // No partition turns idle mid-test: lateness then follows the recomputation's rule.
    set_idle_timeout(&dataflow, "1h");
    let metrics_port = free_port();
    let metrics_at: SocketAddr = format!("127.0.0.1:{metrics_port}")
        .parse()
        .expect("an address");
    let prometheus_port = free_port();
    let prometheus_at: SocketAddr = format!("127.0.0.1:{prometheus_port}")
        .parse()
        .expect("an address");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts = repo.join("config/prometheus/alerts.yml");
    let rule_files = if alerts.exists() {
        format!("rule_files: [\"{}\"]\n", alerts.display())
    } else {
        String::new()
    };
    let scrape = dir.path().join("prometheus.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}\
             scrape_configs:\n  - job_name: waterline\n    static_configs:\n      - targets: [\"{metrics_at}\"]\n"
        ),
    )
    .expect("write the scrape config");
    let _prometheus = Running(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", scrape.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus_at}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let limit = Duration::from_secs(120);
    // Prometheus scrapes from before the job starts, so it sees the whole catch-up.
    let started = Instant::now();
    while get(prometheus_at, "/-/ready").map(|r| r.0) != Some(200) {
        assert!(started.elapsed() < limit, "Prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let waterline = Running(
        waterline_binary()
            .args([
                "run",
                "--dataflow",
                dataflow.to_str().expect("utf-8 path"),
                "-w",
                "2",
                "--http-listen",
                &metrics_at.to_string(),
            ])
            .env("KAFKA_BOOTSTRAP", bootstrap())
            .env("WATERLINE_APP_ID", unique("app"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("waterline starts"),
    );

    // Scraped, and up.
    wait_for(prometheus_at, r#"up{job="waterline"}"#, limit, |v| v == 1.0);
    let read = r#"sum(waterline_records_read_total{job="waterline"})"#;
    let first_total: usize = first.iter().map(Vec::len).sum();
    wait_for(prometheus_at, read, limit, |v| v >= first_total as f64);
    produce(&input, &second);
    wait_for(prometheus_at, read, limit, |v| v == total as f64);
    // Caught up: nothing left to read.
    let lag = r#"sum(waterline_consumer_lag_records{job="waterline"})"#;
    wait_for(prometheus_at, lag, limit, |v| v == 0.0);

    // Records read grew: from below the backlog to everything, never down.
    let grew = scalar(
        prometheus_at,
        &format!("min_over_time({read}[10m:1s]) < {total}"),
    );
    assert!(
        grew.is_some(),
        "a scrape saw fewer records read than were sent in all"
    );
    let rate = scalar(
        prometheus_at,
        r#"sum(resets(waterline_records_read_total{job="waterline"}[10m]))"#,
    );
    assert_eq!(rate, Some(0.0), "records read never went down");
    // The catch-up's peak lag, reported: a fast machine may finish it between two scrapes.
    let peak = scalar(prometheus_at, &format!("max_over_time({lag}[10m:1s])")).unwrap_or(0.0);

    // Dead letters by reason and late records equal the recomputation.
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for (_, _, kind) in &expected.dead {
        *want.entry(kind.clone()).or_default() += 1.0;
    }
    let dead = r#"sum(waterline_dead_letters_total{job="waterline"})"#;
    wait_for(prometheus_at, dead, limit, |v| {
        v == expected.dead.len() as f64
    });
    let got: BTreeMap<String, f64> = query(
        prometheus_at,
        r#"sum by (reason) (waterline_dead_letters_total{job="waterline"}) > 0"#,
    )
    .into_iter()
    .map(|(l, v)| (l.get("reason").cloned().unwrap_or_default(), v))
    .collect();
    assert_eq!(got, want, "dead letters by reason");
    let late_q = r#"sum(waterline_late_records_total{job="waterline"})"#;
    wait_for(prometheus_at, late_q, limit, |v| {
        v == expected.late.len() as f64
    });

    // The watermark is the least partition's greatest event time minus the bound.
    let watermark_ms = inputs
        .iter()
        .map(|p| {
            p.iter()
                .filter_map(|r| r.truth.as_ref().ok().map(|(t, _, _)| *t))
                .max()
                .expect("every partition has valid trades")
        })
        .min()
        .expect("partitions")
        - TRADES_OOO_MS;
    let wm = wait_for(
        prometheus_at,
        r#"waterline_watermark_seconds{job="waterline"}"#,
        limit,
        |v| (v * 1000.0).round() as u64 == watermark_ms,
    );
    let wm_lag = scalar(
        prometheus_at,
        r#"waterline_watermark_lag_seconds{job="waterline"}"#,
    )
    .expect("the watermark lag is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        (wm_lag - (now - wm)).abs() < 30.0,
        "watermark lag {wm_lag} is the wall clock minus the watermark {wm}"
    );

    // Windows closed and were committed; latency and commit histograms have samples.
    let finals = scalar(
        prometheus_at,
        r#"sum(waterline_window_results_total{job="waterline",kind="final"})"#,
    )
    .unwrap_or(0.0);
    assert!(finals > 100.0, "window results emitted: {finals}");
    let commits = scalar(
        prometheus_at,
        r#"sum(waterline_commits_total{job="waterline"})"#,
    )
    .unwrap_or(0.0);
    assert!(commits >= 2.0, "commits: {commits}");
    let latency = scalar(
        prometheus_at,
        r#"sum(waterline_end_to_end_latency_seconds_count{job="waterline",since="event_time"})"#,
    )
    .unwrap_or(0.0);
    assert!(latency > 0.0, "latency observations: {latency}");
    // Every dead letter, late record and window result committed was measured from the
    // Kafka timestamps of its inputs, which the producer set to the wall clock.
    let appended = scalar(
        prometheus_at,
        r#"sum(waterline_end_to_end_latency_seconds_count{job="waterline",since="append"})"#,
    )
    .unwrap_or(0.0);
    let written = scalar(
        prometheus_at,
        r#"sum(waterline_records_written_total{job="waterline"})"#,
    )
    .unwrap_or(0.0);
    assert!(
        appended > 0.0 && appended <= written,
        "append latency observations {appended}, records written {written}"
    );
    wait_for(
        prometheus_at,
        r#"waterline_ready{job="waterline"}"#,
        limit,
        |v| v == 1.0,
    );
    let rss = scalar(
        prometheus_at,
        r#"process_resident_memory_bytes{job="waterline"}"#,
    )
    .unwrap_or(0.0);
    assert!(rss > 1e6, "RSS exported: {rss}");
    assert_eq!(get(metrics_at, "/ready").map(|r| r.0), Some(200));
    assert_eq!(get(metrics_at, "/health").map(|r| r.0), Some(200));

    // Every metric the alert rules and the dashboard refer to exists.
    let (_, names) = get(prometheus_at, "/api/v1/label/__name__/values").expect("names");
    let names: Value = serde_json::from_str(&names).expect("JSON");
    let names: Vec<&str> = names["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for file in [
        "config/prometheus/alerts.yml",
        "config/grafana/waterline.json",
    ] {
        for name in referenced_metrics(&repo.join(file)) {
            // Series of the [enrich] reference topic exist only in dataflows that have one.
            if name == "waterline_reference_records_read_total" {
                continue;
            }
            let histogram = format!("{name}_bucket");
            assert!(
                names.contains(&name.as_str()) || names.contains(&histogram.as_str()),
                "{file} uses `{name}`, which waterline does not export"
            );
        }
    }
    if alerts.exists() {
        let (_, rules) = get(prometheus_at, "/api/v1/rules").expect("rules");
        let rules: Value = serde_json::from_str(&rules).expect("JSON");
        let groups = rules["data"]["groups"].as_array().expect("rule groups");
        assert!(!groups.is_empty(), "the alert rules are loaded");
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        {
            assert_ne!(
                rule["health"].as_str(),
                Some("err"),
                "rule {} evaluates: {}",
                rule["name"],
                rule["lastError"]
            );
        }
    }
    drop(waterline);
    report(&format!(
        "prometheus scrape: {total} records read, consumer lag peaked at {peak} and returned to 0, \
         {} dead letters by reason and {} late records equal the recomputation, watermark {watermark_ms} ms, \
         {finals} window results, {commits} commits",
        expected.dead.len(),
        expected.late.len()
    ));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
