//! The monitoring files: the Prometheus alert rules (`config/prometheus/alerts.yml`), their
//! unit tests (`alerts_test.yml`), the scrape config (`prometheus.yml`), the Grafana
//! dashboard (`config/grafana/waterline.json`) and the runbook (`docs/runbook.md`).
//!
//! promtool (Debian package `prometheus`) checks the rules and the config, runs the rules'
//! unit tests and parses every dashboard query. The metric names they use are checked
//! against the catalogue below.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use regex::Regex;
use serde_json::Value;

/// Every metric waterline exports (the metric contract; README "Operating waterline").
/// Histograms are listed by base name. The scrape test against a running binary checks
/// this list against its `/metrics`.
const CATALOGUE: &[&str] = &[
    // counters
    "waterline_records_read_total",
    "waterline_bytes_read_total",
    "waterline_records_decoded_total",
    "waterline_records_rejected_total",
    "waterline_dead_letters_total",
    "waterline_late_records_total",
    "waterline_duplicates_dropped_total",
    "waterline_window_results_total",
    "waterline_records_written_total",
    "waterline_commits_total",
    "waterline_commit_failures_total",
    "waterline_delivery_errors_total",
    "waterline_producer_retries_total",
    "waterline_restarts_total",
    "waterline_reference_records_read_total",
    "waterline_enriched_total",
    "waterline_missing_reference_total",
    // gauges
    "waterline_watermark_seconds",
    "waterline_watermark_lag_seconds",
    "waterline_partition_watermark_seconds",
    "waterline_partition_watermark_lag_seconds",
    "waterline_consumer_lag_records",
    "waterline_partition_idle",
    "waterline_open_windows",
    "waterline_window_state_entries",
    "waterline_dedupe_state_entries",
    "waterline_producer_queue_messages",
    "waterline_last_commit_timestamp_seconds",
    "waterline_ready",
    "waterline_build_info",
    // histograms
    "waterline_end_to_end_latency_seconds",
    "waterline_commit_duration_seconds",
    // process
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

const HISTOGRAMS: &[&str] = &[
    "waterline_end_to_end_latency_seconds",
    "waterline_commit_duration_seconds",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Runs promtool from the repository root; fails with its output when it fails, and says
/// how to install it when it is missing.
fn promtool(args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install the Debian package `prometheus` \
             (apt-get install prometheus; .ci/run does) to check the alert rules, \
             the Prometheus config and the dashboard queries"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        out.status
    );
    format!("{stdout}{stderr}")
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let out = promtool(&["check", "rules", "config/prometheus/alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "config/prometheus/alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_prometheus_config_is_valid_and_loads_the_alert_rules() {
    // rule_files is relative to prometheus.yml, so it resolves from any directory.
    let out = promtool(&["check", "config", "config/prometheus/prometheus.yml"]);
    assert!(out.contains("1 rule files found"), "{out}");
    let config = read("config/prometheus/prometheus.yml");
    assert!(config.contains("job_name: waterline"), "{config}");
    assert!(config.contains("\"waterline:9464\""), "{config}");
}

/// The alert names of alerts.yml, each with the text of its rule (a name can have more
/// than one rule).
fn alert_rules() -> Vec<(String, String)> {
    let text = read("config/prometheus/alerts.yml");
    let start = Regex::new(r"(?m)^\s*- alert: (\S+)\s*$").expect("valid regex");
    let starts: Vec<_> = start.captures_iter(&text).collect();
    assert!(!starts.is_empty(), "no alert in alerts.yml");
    starts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let whole = c.get(0).expect("group 0 is the match");
            let end = starts
                .get(i + 1)
                .map(|n| n.get(0).expect("group 0 is the match").start())
                .unwrap_or(text.len());
            (c[1].to_string(), text[whole.start()..end].to_string())
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_summary_description_and_runbook_section() {
    let runbook = read("docs/runbook.md");
    let headings: BTreeSet<String> = Regex::new(r"(?m)^## (\S+)\s*$")
        .expect("valid regex")
        .captures_iter(&runbook)
        .map(|c| c[1].to_string())
        .collect();
    let mut problems = vec![];
    for (name, rule) in alert_rules() {
        for field in ["severity:", "summary:", "description:"] {
            if !rule.contains(field) {
                problems.push(format!("{name}: no `{field}`"));
            }
        }
        let url = format!(
            "runbook_url: \"docs/runbook.md#{}\"",
            name.to_ascii_lowercase()
        );
        if !rule.contains(&url) {
            problems.push(format!("{name}: no `{url}`"));
        }
        // GitHub's anchor for the heading `## WaterlineX` is `waterlinex`.
        if !headings.contains(&name) {
            problems.push(format!("{name}: no `## {name}` section in docs/runbook.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_one_that_must_not() {
    let tests = read("config/prometheus/alerts_test.yml");
    // Each `alertname:` line is followed by its `exp_alerts:` line: `[]` (must not fire)
    // or a list (fires with these labels and annotations).
    let case =
        Regex::new(r"(?m)^\s*alertname: (\S+)\s*\n\s*exp_alerts:(.*)$").expect("valid regex");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for c in case.captures_iter(&tests) {
        if c[2].trim() == "[]" {
            quiet.insert(c[1].to_string());
        } else {
            fires.insert(c[1].to_string());
        }
    }
    let mut problems = vec![];
    for (name, _) in alert_rules() {
        if !fires.contains(&name) {
            problems.push(format!("{name}: no test in which it fires"));
        }
        if !quiet.contains(&name) {
            problems.push(format!("{name}: no test in which it must not fire"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn dashboard() -> Value {
    serde_json::from_str(&read("config/grafana/waterline.json"))
        .unwrap_or_else(|e| panic!("config/grafana/waterline.json is not JSON: {e}"))
}

/// Every panel, with the panels of collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, expr) of every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

#[test]
fn every_dashboard_panel_queries_something_for_the_chosen_dataflow() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let variables: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        variables.contains("dataflow") && variables.contains("datasource"),
        "template variables: {variables:?}"
    );
    let rows: Vec<&str> = panels(&d)
        .into_iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Health",
            "Throughput",
            "Latency",
            "Lag & watermarks",
            "Errors",
            "Capacity"
        ]
    );
    // A waterline_ metric selector that does not filter by the chosen dataflow.
    let selector = Regex::new(r"\b(waterline_[a-z0-9_]+)(\{[^}]*\})?").expect("valid regex");
    let mut problems = vec![];
    for panel in panels(&d).into_iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title}: datasource is not ${{datasource}}"));
        }
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| !e.trim().is_empty())
            .collect();
        if exprs.is_empty() {
            problems.push(format!("{title}: no target with an expr"));
        }
        for expr in exprs {
            for s in selector.captures_iter(expr) {
                let filtered = s
                    .get(2)
                    .is_some_and(|m| m.as_str().contains(r#"dataflow=~"$dataflow""#));
                if !filtered {
                    problems.push(format!(
                        "{title}: `{}` is not filtered by dataflow=~\"$dataflow\"",
                        &s[1]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_query_parses() {
    // promtool parses each query as a recording rule, with Grafana's variables replaced.
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries(&d).into_iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$dataflow", ".*");
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n"
        ));
        rules.push_str("        expr: |\n");
        for line in expr.lines() {
            rules.push_str(&format!("          {line}\n"));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, &rules).expect("write");
    let path = path.to_str().expect("utf-8 temp path");
    promtool(&["check", "rules", path]);
}

/// The metric names `text` uses (histogram series by their base name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = Regex::new(r"\b(?:waterline|process)_[a-z0-9_]*[a-z0-9]\b").expect("valid regex");
    name.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    n.strip_suffix(suffix)
                        .filter(|base| HISTOGRAMS.contains(base))
                })
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

#[test]
fn every_metric_used_is_in_the_catalogue() {
    let catalogue: BTreeSet<&str> = CATALOGUE.iter().copied().collect();
    let mut problems = vec![];
    for file in [
        "config/prometheus/alerts.yml",
        "config/prometheus/alerts_test.yml",
        "config/grafana/waterline.json",
        "docs/runbook.md",
    ] {
        for name in metric_names(&read(file)) {
            if !catalogue.contains(name.as_str()) {
                problems.push(format!("{file}: `{name}` is not in the metric catalogue"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The scan finds names at all (a broken pattern would pass everything).
    let used = metric_names(&read("config/grafana/waterline.json"));
    assert!(
        used.contains("waterline_end_to_end_latency_seconds")
            && used.contains("process_resident_memory_bytes"),
        "{used:?}"
    );
}

#[test]
fn the_catalogue_check_catches_an_unknown_name() {
    let names = metric_names(
        "rate(waterline_records_in_total[5m]) + waterline_commit_duration_seconds_bucket",
    );
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !CATALOGUE.contains(&n.as_str()))
        .collect();
    assert_eq!(unknown, ["waterline_records_in_total"]);
}

#[test]
fn the_grafana_provisioning_loads_the_dashboard_and_the_datasource() {
    let dashboards = read("config/grafana/provisioning/dashboards/waterline.yml");
    assert!(
        dashboards.contains("path: /etc/grafana/dashboards"),
        "{dashboards}"
    );
    let datasources = read("config/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        datasources.contains("url: http://prometheus:9090"),
        "{datasources}"
    );
    let compose = read("docker-compose.yml");
    for mount in [
        "./config/prometheus:/etc/prometheus:ro",
        "./config/grafana/provisioning:/etc/grafana/provisioning:ro",
        "./config/grafana/waterline.json:/etc/grafana/dashboards/waterline.json:ro",
    ] {
        assert!(compose.contains(mount), "docker-compose.yml lacks {mount}");
    }
}
