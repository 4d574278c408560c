//! JSON logs of the real binary: every line it writes, on stderr and stdout, parses as a
//! JSON object with a level, a timestamp and a message; lines written by a worker name the
//! worker and the dataflow; per-record lines are debug, never info; and a run that fails
//! at start-up says why in a JSON line too.
//!
//! JSON mode is chosen with `--log-format json` (and, for an error in the configuration
//! itself, with `WATERLINE__LOG__FORMAT=json` too).

mod common;

use std::process::Output;

use common::kafka::*;
use serde_json::Value;

/// Parses every line of the run's stdout and stderr as a JSON object with `level`,
/// `timestamp` and a message; panics, showing the line, on any other line.
fn json_lines(out: &Output) -> Vec<Value> {
    let mut lines = Vec::new();
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{stream} line is not JSON ({e}): {line}"));
            assert!(v.is_object(), "{stream} line is not an object: {line}");
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(v["timestamp"].is_string(), "no timestamp: {line}");
            assert!(
                v["message"].is_string() || v["fields"]["message"].is_string(),
                "no message: {line}"
            );
            lines.push(v);
        }
    }
    lines
}

fn message(v: &Value) -> &str {
    v["message"]
        .as_str()
        .or_else(|| v["fields"]["message"].as_str())
        .unwrap_or_default()
}

/// Runs the binary with `--log-format json` and `filter` as the log level.
fn waterline_json(app: &str, args: &[&str], filter: &str) -> Output {
    waterline_env(app, args, filter, &[])
}

/// [`waterline_json`] with more environment variables.
fn waterline_env(app: &str, args: &[&str], filter: &str, env: &[(&str, &str)]) -> Output {
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--log-format", "json", "--log-level", filter])
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(&args)
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", app)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
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

#[test]
fn a_json_run_writes_only_json_lines_with_worker_and_dataflow() {
    const PARTITIONS: usize = 3;
    let (input, out, dlq, late) = (
        unique("logs-in"),
        unique("logs-windows"),
        unique("logs-dlq"),
        unique("logs-late"),
    );
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(11, PARTITIONS, 2_000));
    produce(&input, &records);
    let invalid = inputs.iter().flatten().filter(|r| r.truth.is_err()).count();
    assert!(invalid > 10, "the input has dead letters ({invalid})");
    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let path = dataflow.to_str().expect("utf-8 path");
    // Debug for waterline itself, so the per-record lines are there to be checked.
    let run = waterline_json(
        &unique("app"),
        &["run", "--dataflow", path, "--stop-at-end", "-w", "2"],
        "waterline=debug,info",
    );
    assert!(run.status.success(), "the run succeeds");
    let lines = json_lines(&run);

    let worker_lines: Vec<&Value> = lines.iter().filter(|v| !v["worker"].is_null()).collect();
    for v in &worker_lines {
        assert_eq!(
            v["dataflow"], "trades",
            "a worker line names the dataflow: {v}"
        );
        assert!(v["worker"].as_u64().is_some_and(|w| w < 2), "{v}");
    }
    let assigned: Vec<&&Value> = worker_lines
        .iter()
        .filter(|v| message(v) == "worker assigned (partition, offset)")
        .collect();
    assert_eq!(assigned.len(), 2, "each worker says what it reads");
    for v in assigned {
        assert_eq!(v["topic"].as_str(), Some(input.as_str()), "{v}");
    }
    let starting = lines
        .iter()
        .find(|v| message(v) == "starting")
        .expect("a start-up line");
    assert_eq!(
        starting["dataflow"], "trades",
        "start-up lines name the dataflow"
    );

    // One line per dead letter, at debug, from the worker reading its partition.
    let per_record: Vec<&Value> = lines
        .iter()
        .filter(|v| matches!(message(v), "dead letter" | "late record" | "duplicate"))
        .collect();
    let dead = per_record
        .iter()
        .filter(|v| message(v) == "dead letter")
        .count();
    assert_eq!(dead, invalid, "a debug line per invalid record");
    for v in &per_record {
        assert_eq!(v["level"], "DEBUG", "per-record lines are debug: {v}");
        assert!(
            v["worker"].is_u64() && v["dataflow"] == "trades",
            "per-record lines name the worker: {v}"
        );
        let p = v["partition"].as_u64().expect("a partition");
        assert_eq!(
            p % 2,
            v["worker"].as_u64().expect("a worker"),
            "partition p is read by worker p % 2: {v}"
        );
        assert!(v["offset"].is_u64(), "{v}");
    }
    // Info and above: a handful of lines, not one per record.
    let loud = lines
        .iter()
        .filter(|v| !matches!(v["level"].as_str(), Some("DEBUG" | "TRACE")))
        .count();
    assert!(
        loud < 40,
        "{loud} lines at info or above for {} records",
        inputs.iter().map(Vec::len).sum::<usize>()
    );
    assert!(lines.iter().any(|v| message(v).starts_with("completed")));
}

#[test]
fn a_failing_start_says_why_in_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = unique("missing-in");
    let dataflow = trades_dataflow(
        dir.path(),
        &missing,
        &unique("o"),
        &unique("d"),
        &unique("l"),
    );
    let path = dataflow.to_str().expect("utf-8 path");
    let run = waterline_json(&unique("app"), &["run", "--dataflow", path], "info");
    assert!(!run.status.success(), "a missing input topic fails the run");
    let lines = json_lines(&run);
    let error = lines
        .iter()
        .find(|v| v["level"] == "ERROR")
        .expect("an error line");
    let text = message(error);
    assert!(
        text.contains(&missing) && text.contains("does not exist"),
        "the error names the topic: {error}"
    );
    assert_eq!(error["exit_code"], 1);

    // A dataflow refused before the configuration is read: JSON too.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&dataflow)
        .expect("read")
        .replace("size = \"1m\"", "size = \"one minute\"");
    std::fs::write(&bad, text).expect("write");
    let run = waterline_json(
        &unique("app"),
        &["run", "--dataflow", bad.to_str().expect("utf-8 path")],
        "info",
    );
    assert!(!run.status.success());
    let lines = json_lines(&run);
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        message(&lines[0]).contains("`windows[0].size`"),
        "{:?}",
        lines[0]
    );

    // A configuration file refused before logging is set up: JSON too, by the flag, and
    // by the environment when the flag is not given.
    let config = dir.path().join("bad-config.toml");
    std::fs::write(&config, "[kafka]\nbootstrap_server = \"x:1\"\n").expect("write");
    let config = config.to_str().expect("utf-8 path");
    let run = waterline_json(
        &unique("app"),
        &["run", "--dataflow", path, "--config", config],
        "info",
    );
    assert!(!run.status.success());
    let lines = json_lines(&run);
    assert!(
        lines.len() == 1 && message(&lines[0]).contains("`kafka.bootstrap_server`"),
        "{lines:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(["run", "--dataflow", path, "--config", config])
        .env("WATERLINE__LOG__FORMAT", "json")
        .output()
        .expect("the waterline binary runs");
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert!(
        lines.len() == 1 && message(&lines[0]).contains("`kafka.bootstrap_server`"),
        "{lines:?}"
    );
}
