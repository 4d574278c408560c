//! End-to-end tests: the `waterline` binary against a real Apache Kafka broker.
//!
//! The broker is `$KAFKA_BOOTSTRAP` when set; otherwise `scripts/kafka.sh start` provides
//! one (Apache Kafka from Maven Central, single-node KRaft). Each test uses topics of its
//! own, so tests share one broker.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::kafka::*;
use common::{Expected, Input, Running, absorb, assert_matches, recompute_deduped, report};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;

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
fn a_missing_output_topic_is_named_as_an_output_topic() {
    // Regression: a missing output topic was reported as an "input topic"; and topics
    // just created are now waited for until the broker lists them.
    let dir = tempfile::tempdir().expect("temp dir");
    let input = unique("in");
    create_topic(&input, 1);
    let out = unique("missing-out");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &unique("d"), &unique("l"));
    let config = dir.path().join("no-create.toml");
    std::fs::write(&config, "[kafka]\ncreate_topics = false\n").expect("write");
    let run = waterline(&[
        "run",
        "--dataflow",
        dataflow.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
        "--stop-at-end",
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("output topic `{out}` does not exist")),
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
    set_idle_timeout(&dataflow, "1s");
    // The run's log goes to a file: a pipe nobody reads would block it once full.
    let log = dir.path().join("run.log");
    let mut child = Running(
        run_command(&dataflow, &unique("app"), &[], "waterline=trace,info")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("waterline starts"),
    );

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

/// `waterline run --dataflow <dataflow> -w 2 <args>` as application `app`, with `RUST_LOG`
/// = `log` and stdout discarded; the caller says where stderr goes.
fn run_command(
    dataflow: &std::path::Path,
    app: &str,
    args: &[&str],
    log: &str,
) -> std::process::Command {
    let mut command = waterline_binary();
    command
        .args([
            "run",
            "--dataflow",
            dataflow.to_str().expect("utf-8"),
            "-w",
            "2",
        ])
        .args(args)
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", app)
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::null());
    command
}

/// [`run_command`], spawned with stderr piped for the test to read.
fn spawn_run(
    dataflow: &std::path::Path,
    app: &str,
    args: &[&str],
    log: &str,
) -> std::process::Child {
    run_command(dataflow, app, args, log)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("waterline starts")
}

/// Waits up to `within` for `child` to exit; kills it and fails with `hung` otherwise.
fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
    hung: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().expect("SIGKILL");
            panic!("{hung}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run whose stderr is closed under it (a log shipper gone, `| head`) loses its log
/// lines and nothing else: it completes, exits 0, and commits every result. Until the log
/// writer ignored failed writes, the first line a worker logged after the close panicked
/// that worker, and the other waited for it forever.
#[test]
fn a_closed_stderr_loses_log_lines_not_the_run() {
    use std::io::BufRead;
    const PARTITIONS: usize = 4;
    let data = trades(77, PARTITIONS, 3_000);
    let (input, out, dlq, late) = (unique("quiet"), unique("w"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    produce(&input, &records);
    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    // Each dead letter and late record is a line from a worker thread.
    let mut child = spawn_run(
        &dataflow,
        &unique("quiet-app"),
        &["--until", "end"],
        "waterline=debug,warn",
    );
    let stderr = child.stderr.take().expect("a piped stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let assigned = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("worker assigned"));
    assert!(assigned, "a worker started before stderr closed");
    drop(lines);
    let status = exit_within(
        &mut child,
        Duration::from_secs(120),
        "the run hung after its stderr closed",
    );
    assert!(
        status.success(),
        "the run completes with stderr closed: {status}"
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert!(!expected.dead.is_empty() && !expected.late.is_empty());
    assert_matches(
        &committed(&out, &dlq, &late),
        &expected,
        "a run whose stderr closed",
    );
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
    set_idle_timeout(&dataflow, "1h");
    let app = unique("chaos-app");
    let log = dir.path().join("run.log");
    let spawn = |extra: &[&str]| {
        run_command(&dataflow, &app, extra, "warn")
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
    assert!(kills >= 10, "at least ten kills happened ({kills})");
    report(&format!(
        "chaos: {kills} kills with SIGKILL, {records} records in; committed output equals the recomputation exactly \
         ({} windows, {} dead letters of which {duplicates} duplicates, {} late records, nothing twice, nothing missing)",
        expected.windows.len(),
        expected.dead.len(),
        expected.late.len()
    ));
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
            let mut c = waterline_binary();
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
        report(&format!(
            "fault points {faults:?} then restart: committed output exact"
        ));
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
    let mut child = Running(
        waterline_binary()
            .args(["run", "--dataflow", dataflow, "-w", "2"])
            .env("KAFKA_BOOTSTRAP", bootstrap())
            .env("WATERLINE_APP_ID", &app)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("waterline starts"),
    );
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
    report(&format!(
        "replay: the first run committed {} of {} windows; the replay from {from} added the rest, none twice",
        first.windows.len(),
        expected.windows.len()
    ));
}

/// A commit that fails (its transaction aborted, as a broker does when a transaction times
/// out) does not end the run: it restarts in-process from the committed progress, after a
/// pause, and the output stays exact.
#[test]
fn a_failed_commit_restarts_the_run_in_process_and_stays_exact() {
    const PARTITIONS: usize = 4;
    let (input, out, dlq, late) = (unique("failcommit"), unique("o"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(31, PARTITIONS, 8_000));
    produce(&input, &records);
    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let config = dir.path().join("fast-commits.toml");
    std::fs::write(&config, "[processing]\ncommit_interval = \"20ms\"\n").expect("write");
    let run = waterline_binary()
        .args([
            "run",
            "--dataflow",
            dataflow.to_str().expect("utf-8"),
            "-w",
            "2",
        ])
        .args([
            "--until",
            "end",
            "--config",
            config.to_str().expect("utf-8"),
        ])
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", unique("failcommit-app"))
        .env("WATERLINE_FAULT", "commit-fails:6")
        .env("RUST_LOG", "warn")
        .output()
        .expect("waterline runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the run completes despite the failed commit:\n{stderr}"
    );
    assert_eq!(
        stderr
            .matches("restarting from the committed progress")
            .count(),
        1,
        "one in-process restart:\n{stderr}"
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert_matches(
        &committed(&out, &dlq, &late),
        &expected,
        "after a failed commit",
    );
}

/// At-least-once, a commit whose outputs the broker refuses must not leave a progress
/// record behind that covers them: the restart would start past those outputs, and they
/// would never be written. Here the dead-letter topic refuses every batch at first
/// (`max.message.bytes` below any dead letter's size), so the commits fail and the run
/// restarts in process; once the topic takes them again, the run must complete with every
/// output present (repeats allowed: at-least-once).
#[test]
fn an_at_least_once_commit_whose_outputs_are_refused_loses_none_of_them() {
    use std::io::BufRead;
    const PARTITIONS: usize = 4;
    let (input, out, dlq, late) = (unique("refused"), unique("o"), unique("d"), unique("l"));
    create_topic(&input, PARTITIONS as i32);
    create_topic_with(&dlq, 1, &[("max.message.bytes", "100")]);
    let (records, inputs) = split(trades(53, PARTITIONS, 4_000));
    produce(&input, &records);
    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let mut child = spawn_run(
        &dataflow,
        &unique("refused-app"),
        &[
            "--until",
            "end",
            "--guarantee",
            "at-least-once",
            "--commit-interval",
            "50ms",
        ],
        "warn",
    );
    let stderr = child.stderr.take().expect("a piped stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("no restart after a refused delivery:\n{}", log.join("\n"))
            });
        let restarted = line.contains("restarting from the committed progress");
        log.push(line);
        if restarted {
            break;
        }
    }
    alter_topic(&dlq, &[("max.message.bytes", "16777216")]);
    let status = exit_within(
        &mut child,
        Duration::from_secs(180),
        "the run did not complete once the topic took its outputs",
    );
    reader.join().expect("the stderr reader ends with the run");
    log.extend(lines.try_iter());
    let log = log.join("\n");
    assert!(status.success(), "the run completes: {status}\n{log}");
    assert!(
        log.contains(&format!("delivery to {dlq}")) && log.contains("too large"),
        "the restarts were for the refused dead letters:\n{log}"
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert!(!expected.dead.is_empty());
    let (got, repeats) = committed_allowing_repeats(&out, &dlq, &late);
    report(&format!(
        "refused outputs, at-least-once: {} dead letters expected, {} outputs written again \
         after the restarts",
        expected.dead.len(),
        repeats
    ));
    assert_matches(
        &got,
        &expected,
        "after commits whose dead letters were refused",
    );
}
