//! The binary's configuration layers: every problem of every layer is reported at once
//! and the exit code is non-zero; `config --print` shows the effective settings with
//! their layers and never a secret. No broker is contacted.

use std::process::{Command, Output};

struct Run {
    command: String,
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).to_string()
    }

    /// Everything about the run, for a failure message.
    fn dump(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs the binary in the repository root with only `env` as its environment, so that a
/// `KAFKA_BOOTSTRAP` or `WATERLINE__…` of the caller cannot change the outcome.
fn waterline(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = command.output().expect("the binary runs");
    Run {
        command: format!("{env:?} waterline {}", args.join(" ")),
        out,
    }
}

#[test]
fn every_problem_of_every_layer_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "app_id = \"trades\"\n\
         [kafka]\nreplication_factor = 0\nbootstrap_server = \"k:9092\"\n\
         [processing]\nguarantee = \"twice\"\n\
         [kafka.properties]\n\"sasl.password\" = \"in-a-file\"\n",
    )
    .expect("write");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[log\nlevel = \"info\"\n").expect("write");
    let run = waterline(
        &[
            "run",
            "--dataflow",
            "dataflows/trades.toml",
            "--config",
            bad.to_str().expect("utf-8"),
            "--config",
            broken.to_str().expect("utf-8"),
            "--http-listen",
            "everywhere",
        ],
        &[
            ("WATERLINE__PROCESSING__COMMIT_INTERVAL", "soon"),
            ("WATERLINE__HTTP__READY_COMMIT_INTERVALS", "0"),
            ("WATERLINE__LOG__FORMATT", "json"),
        ],
    );
    assert!(!run.out.status.success(), "{}", run.dump());
    let stderr = run.stderr();
    for needle in [
        "bad.toml: `kafka.replication_factor`: must be between 1 and 32, found 0",
        "bad.toml: `kafka.bootstrap_server`: is not a known setting; did you mean `kafka.bootstrap_servers`?",
        "bad.toml: `processing.guarantee`: must be \"exactly-once\" or \"at-least-once\", found `twice`",
        "bad.toml: `kafka.properties.\"sasl.password\"`: is a secret",
        "broken.toml: not valid TOML at line 1",
        "env WATERLINE__PROCESSING__COMMIT_INTERVAL: `processing.commit_interval`: `soon` is not a duration",
        "env WATERLINE__HTTP__READY_COMMIT_INTERVALS: `http.ready_commit_intervals`: must be between 1 and",
        "env WATERLINE__LOG__FORMATT: `log.formatt`: is not a known setting; did you mean WATERLINE__LOG__FORMAT?",
        "flag --http-listen: `http.listen`: expected an address",
    ] {
        assert!(
            stderr.contains(needle),
            "missing {needle:?}\n{}",
            run.dump()
        );
    }
    assert!(
        stderr.contains("has 9 problem(s)"),
        "one problem per line:\n{}",
        run.dump()
    );
    assert!(
        !stderr.contains("in-a-file"),
        "a secret shown:\n{}",
        run.dump()
    );
}

#[test]
fn config_print_shows_each_layer_and_redacts_secrets() {
    let secret = "p4ss-only-in-the-environment";
    let run = waterline(
        &[
            "config",
            "--print",
            "--env",
            "prod",
            "--app-id",
            "printed-app",
            "--set",
            "kafka.properties.linger.ms=5",
        ],
        &[
            ("KAFKA_BOOTSTRAP", "alias:9092"),
            ("WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD", secret),
            ("WATERLINE__PROCESSING__GUARANTEE", "at-least-once"),
        ],
    );
    assert!(run.out.status.success(), "{}", run.dump());
    let stdout = run.stdout();
    assert!(
        !stdout.contains(secret),
        "the secret printed:\n{}",
        run.dump()
    );
    assert!(!run.stderr().contains(secret), "{}", run.dump());
    for (setting, origin) in [
        ("app_id = \"printed-app\"", "# flag --app-id"),
        (
            "bootstrap_servers = \"alias:9092\"",
            "# env KAFKA_BOOTSTRAP",
        ),
        ("replication_factor = 3", "# config/prod.toml"),
        (
            "\"sasl.password\" = \"<redacted>\"",
            "# env WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD",
        ),
        (
            "\"linger.ms\" = \"5\"",
            "# flag --set kafka.properties.linger.ms",
        ),
        (
            "guarantee = \"at-least-once\"",
            "# env WATERLINE__PROCESSING__GUARANTEE",
        ),
        ("listen = \"0.0.0.0:9464\"", "# config/prod.toml"),
        ("ready_commit_intervals = 100", "# config/default.toml"),
    ] {
        let line = stdout.lines().find(|l| l.starts_with(setting));
        assert!(
            line.is_some_and(|l| l.ends_with(origin)),
            "no line `{setting} ... {origin}`:\n{}",
            run.dump()
        );
    }
    let parsed: toml::Table = stdout.parse().expect("the print is TOML");
    assert_eq!(
        parsed["kafka"]["properties"]["sasl.password"].as_str(),
        Some("<redacted>")
    );
}

#[test]
fn config_fails_on_a_bad_setting_and_prints_nothing() {
    let run = waterline(
        &["config", "--print", "--env", "staging"],
        &[("WATERLINE__HTTP__LISTEN", "localhost")],
    );
    assert!(!run.out.status.success(), "{}", run.dump());
    assert!(run.stdout().is_empty(), "{}", run.dump());
    let stderr = run.stderr();
    for needle in [
        "flag --env: no environment `staging`",
        "dev, docker, prod",
        "env WATERLINE__HTTP__LISTEN: `http.listen`",
    ] {
        assert!(
            stderr.contains(needle),
            "missing {needle:?}\n{}",
            run.dump()
        );
    }
}

#[test]
fn produce_takes_the_configuration_flags() {
    let run = waterline(
        &["produce", "--log-format", "xml", "--set", "app_id=a b"],
        &[],
    );
    assert!(!run.out.status.success(), "{}", run.dump());
    let stderr = run.stderr();
    for needle in [
        "flag --log-format: `log.format`: must be \"text\" or \"json\", found `xml`",
        "flag --set app_id: `app_id`: must be at most 200 of the characters",
    ] {
        assert!(
            stderr.contains(needle),
            "missing {needle:?}\n{}",
            run.dump()
        );
    }
}
