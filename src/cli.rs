//! The command line: `run`, `produce`, `demo`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::replay::{StartAt, StopAt};

/// waterline — a Kafka-native stream processor: event-time windows with exact decimal
/// aggregates, dead letters for bad input, late records routed rather than dropped.
#[derive(Debug, Parser)]
#[command(name = "waterline", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a dataflow against Kafka until stopped (SIGINT/SIGTERM), or to the end of its
    /// input with --stop-at-end.
    Run(RunArgs),
    /// Generate trades (or send a file's lines) into a Kafka topic.
    Produce(ProduceArgs),
    /// Run the trades dataflow on an embedded Kafka mock cluster: no broker needed.
    Demo(DemoArgs),
}

/// `waterline run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The dataflow file to run.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dataflow: PathBuf,
    /// Environment settings (bootstrap servers, app id, logging).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker threads in this process.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Read every partition up to the end offsets seen at start, close every window, flush
    /// and exit 0 (the same as --until end).
    #[arg(long, conflicts_with = "until")]
    pub stop_at_end: bool,
    /// Start here instead of the committed positions: earliest, latest, an RFC 3339 time
    /// (each partition's first record stamped at or after it) or <partition>:<offset>,...
    /// (other partitions start as the dataflow says). Needs --reset when the application
    /// has committed progress.
    #[arg(long, value_name = "WHERE")]
    pub from: Option<StartAt>,
    /// Backfill: read as fast as possible up to here, close every window, commit and exit 0:
    /// end (the ends at start), an RFC 3339 time (stop before the first record stamped at
    /// or after it) or <partition>:<offset>,... (stop before these; other partitions stop
    /// at their end at start).
    #[arg(long, value_name = "WHERE")]
    pub until: Option<StopAt>,
    /// Discard the recorded positions (with --from: start there; without: where the
    /// dataflow's start_from says). Outputs committed before are still not written again,
    /// and the dataflow may have changed.
    #[arg(long)]
    pub reset: bool,
    /// Kafka bootstrap servers (overrides the config file and the environment).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap: Option<String>,
    /// Serve /metrics, /health and /ready here ("off" disables; port 0 picks a free port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "WATERLINE__HTTP__LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub http_listen: String,
}

/// `waterline produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers (default: config file, then $KAFKA_BOOTSTRAP, then 127.0.0.1:19092).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap: Option<String>,
    /// Environment settings.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Topic to write to.
    #[arg(long, default_value = "trades")]
    pub topic: String,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// Send each line of this file as one record, as it is (no generation).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rate", "count", "duration"])]
    pub file: Option<PathBuf>,
    /// Which events to generate: trades (dataflows/trades.toml) or web (page views,
    /// sessions and conversions for dataflows/web_analytics.toml).
    #[arg(long, value_enum, default_value_t = EventKind::Trades)]
    pub kind: EventKind,
    #[command(flatten)]
    /// What to generate.
    pub generate: GenerateArgs,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. "30s", "5m").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// The events `waterline produce` generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    /// Trades keyed by symbol.
    Trades,
    /// Web-analytics events keyed by user.
    Web,
}

/// What the generators make.
#[derive(Debug, Args, Clone)]
pub struct GenerateArgs {
    /// Number of distinct keys (symbols, or users with --kind web).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub keys: u32,
    /// Fraction of events that are invalid (malformed, failing rules, ...).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub invalid: f64,
    /// Fraction of events sent with an event time far enough back to be late.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub late: f64,
    /// Fraction of events sent twice (same event id).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub duplicate: f64,
    /// Seed for a repeatable run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event-time milliseconds between consecutive events (0: use the wall clock).
    #[arg(long, default_value_t = 0)]
    pub time_step_ms: u64,
}

/// `waterline demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to generate trades for.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Trades per second.
    #[arg(long, default_value_t = 250.0, value_parser = positive_rate)]
    pub rate: f64,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Event time passes this many times faster than the wall clock, so a 15 s demo
    /// closes several one-minute windows.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub speedup: u64,
    /// Seed for a repeatable run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {v}"))
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 100_000.0 {
        Ok(v)
    } else {
        Err(format!("must be above 0 and at most 100000, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = Cli::try_parse_from(["waterline", "produce", "--invalid", "1.5"])
            .expect_err("out of range");
        assert!(e.to_string().contains("--invalid"), "{e}");
        let e = Cli::try_parse_from(["waterline", "run", "--dataflow", "x", "-w", "0"])
            .expect_err("zero workers");
        assert!(e.to_string().contains("--workers"), "{e}");
        let e = Cli::try_parse_from(["waterline", "run", "-d", "x", "--from", "yesterday"])
            .expect_err("not a position");
        assert!(
            e.to_string().contains("--from") && e.to_string().contains("RFC 3339"),
            "{e}"
        );
        let e = Cli::try_parse_from([
            "waterline",
            "run",
            "-d",
            "x",
            "--stop-at-end",
            "--until",
            "end",
        ])
        .expect_err("two bounds");
        assert!(e.to_string().contains("--until"), "{e}");
    }
}
