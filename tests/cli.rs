//! The binary's start-up checks: bad dataflows, configs and flags fail at once with a
//! message naming the field, before any broker is contacted.

use std::process::Command;

fn waterline(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_bad_dataflow_names_every_bad_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    let good = include_str!("../dataflows/trades.toml");
    let bad = good
        .replace("size = \"1m\"", "size = \"one minute\"")
        .replace(
            "idle_timeout = \"30s\"",
            "idle_timeout = \"30s\"\nidle_timeot = \"1s\"",
        )
        .replace("\"avg\"]", "\"median\"]");
    std::fs::write(&path, bad).expect("write");
    let (ok, stderr) = waterline(&["run", "--dataflow", path.to_str().expect("utf-8")]);
    assert!(!ok);
    for needle in [
        "`windows[0].size`",
        "`input.idle_timeot`: is not a known setting",
        "`windows[0].aggregates[4]`: unknown aggregate `median`",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn a_bad_config_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[kafka]\nbootstrap_server = \"x:1\"\n[log]\nformat = \"xml\"\n",
    )
    .expect("write");
    let dataflow = concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/trades.toml");
    let (ok, stderr) = waterline(&[
        "run",
        "--dataflow",
        dataflow,
        "--config",
        path.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("`kafka.bootstrap_server`: is not a known setting"),
        "{stderr}"
    );
    assert!(stderr.contains("`log.format`"), "{stderr}");
}

#[test]
fn bad_flags_name_the_flag() {
    let (ok, stderr) = waterline(&["produce", "--late", "2"]);
    assert!(!ok);
    assert!(stderr.contains("--late"), "{stderr}");
}

#[test]
fn a_bad_expression_or_group_by_field_is_named_at_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    let good = include_str!("../dataflows/web_analytics.toml");
    let bad = good
        .replace(
            "expr = \"page.startsWith('/') && size(page) <= 200\"",
            "expr = \"page.startsWith('/') && size(pgae) <= 200\"",
        )
        .replace(
            "filter = \"event_type == 'page_view'\"\ngroup_by",
            "filter = \"event_type ==\"\ngroup_by",
        )
        .replace(
            "group_by = [\"page\"]",
            "group_by = [\"page\", \"country\"]",
        )
        .replace(
            "value = \"event_type == 'conversion'\"",
            "value = \"event_type\"",
        );
    assert_ne!(bad, good);
    std::fs::write(&path, bad).expect("write");
    let (ok, stderr) = waterline(&["run", "--dataflow", path.to_str().expect("utf-8")]);
    assert!(!ok);
    for needle in [
        "`validation.rules[1].expr`: refers to `pgae` not declared",
        "`windows[0].filter`: not a valid CEL expression",
        "`windows[0].group_by[1]`: `country` is not declared",
        "`windows[2].value`: evaluates to string, not int, uint or bool",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn produce_knows_the_web_events() {
    let (ok, stderr) = waterline(&["produce", "--kind", "clicks"]);
    assert!(!ok);
    assert!(
        stderr.contains("--kind") && stderr.contains("web"),
        "{stderr}"
    );
}
