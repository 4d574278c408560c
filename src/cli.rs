//! The command line: `run`, `cluster`, `produce`, `demo`, `config`, `nexmark`.
//!
//! Configuration flags ([`ConfigArgs`], [`RunSettingsArgs`]) are the last layer of
//! [`crate::config`]; they are taken as text and validated there, so a bad flag value is
//! reported together with every other configuration problem.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Flag, Profile, Sources};
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
    /// Run every process of a job of several processes on this host (for development):
    /// `waterline run` once per process, with a hosts file on 127.0.0.1.
    Cluster(ClusterArgs),
    /// Check the configuration `run` would use (files, environment, flags) and, with
    /// --print, print it as TOML with the layer each value came from.
    Config(ConfigCommandArgs),
    /// The Nexmark benchmark: generate its events into Kafka, or run one of its queries
    /// (in process or from a topic) and print its throughput.
    Nexmark(NexmarkArgs),
}

/// Where settings come from: files (--env, then each --config), then `WATERLINE__…`
/// environment variables, then these flags (--set first).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Configuration")]
pub struct ConfigArgs {
    /// Read <config-dir>/default.toml, then <config-dir>/<NAME>.toml (dev, prod, docker).
    #[arg(long = "env", value_name = "NAME")]
    pub env_name: Option<String>,
    /// The directory of --env's files.
    #[arg(long, value_name = "DIR", default_value = "config")]
    pub config_dir: PathBuf,
    /// A settings file, read after --env's; repeat for more (later files win).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Any setting, e.g. processing.guarantee=at-least-once or kafka.properties.linger.ms=5
    /// (repeatable; the named flags below win over it).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Kafka bootstrap servers (kafka.bootstrap_servers).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap: Option<String>,
    /// Application id (app_id): names the consumer group, transactional ids and progress topic.
    #[arg(long, value_name = "ID")]
    pub app_id: Option<String>,
    /// Log format, text or json (log.format).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or waterline=debug,info (log.level).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Configuration flags only `run` (and `config`) take.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Configuration")]
pub struct RunSettingsArgs {
    /// exactly-once or at-least-once (processing.guarantee).
    #[arg(long, value_name = "GUARANTEE")]
    pub guarantee: Option<String>,
    /// How often each worker commits outputs and progress, e.g. 100ms
    /// (processing.commit_interval).
    #[arg(long, value_name = "DURATION")]
    pub commit_interval: Option<String>,
    /// Where the metrics and health server listens, e.g. 0.0.0.0:9464, or off (http.listen).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

impl ConfigArgs {
    /// The layers these flags (and `run`'s, if given) name, over the process environment.
    pub fn sources(&self, run: Option<&RunSettingsArgs>) -> Sources {
        let mut flags: Vec<Flag> = self.set.iter().cloned().map(Flag::Set).collect();
        let mut named = |flag: &'static str, key: &'static str, value: &Option<String>| {
            if let Some(value) = value {
                flags.push(Flag::Named {
                    flag,
                    key,
                    value: value.clone(),
                });
            }
        };
        named("--bootstrap", "kafka.bootstrap_servers", &self.bootstrap);
        named("--app-id", "app_id", &self.app_id);
        named("--log-format", "log.format", &self.log_format);
        named("--log-level", "log.level", &self.log_level);
        if let Some(run) = run {
            named("--guarantee", "processing.guarantee", &run.guarantee);
            named(
                "--commit-interval",
                "processing.commit_interval",
                &run.commit_interval,
            );
            named("--http-listen", "http.listen", &run.http_listen);
        }
        Sources {
            profile: self.env_name.as_ref().map(|name| Profile {
                name: name.clone(),
                dir: self.config_dir.clone(),
            }),
            files: self.config.clone(),
            env: Sources::process_env(),
            flags,
        }
    }
}

/// `waterline config`.
#[derive(Debug, Args)]
pub struct ConfigCommandArgs {
    /// Print the effective configuration as TOML, each value with a comment naming the
    /// layer it came from; secrets show as "<redacted>".
    #[arg(long)]
    pub print: bool,
    #[command(flatten)]
    /// Where settings come from.
    pub settings: ConfigArgs,
    #[command(flatten)]
    /// `run`'s own settings.
    pub run_settings: RunSettingsArgs,
}

/// `waterline run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The dataflow file to run.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dataflow: PathBuf,
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
    #[command(flatten)]
    /// Where settings come from.
    pub settings: ConfigArgs,
    #[command(flatten)]
    /// `run`'s own settings.
    pub run_settings: RunSettingsArgs,
    /// One job across several processes and hosts.
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// `waterline produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    /// Where settings come from (bootstrap servers, app id, logging).
    pub settings: ConfigArgs,
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

// --- several processes ------------------------------------------------------------------

/// `waterline run` as one process of a job of several (timely's `-n`, `-p`, `-h`; `-w` is
/// --workers). See `crate::cluster`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Several processes (one job across hosts)")]
pub struct ClusterFlags {
    /// Processes in the job; each runs --workers worker threads, so the job has
    /// workers × processes workers, and partition p is read by global worker
    /// p % (workers × processes). Every process needs the same --processes, --workers,
    /// --hosts, dataflow and app id.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub processes: u16,
    /// This process's index, 0 ≤ I < --processes (its line in --hosts). Required with
    /// --processes above 1.
    #[arg(long, short = 'p', value_name = "I")]
    pub process: Option<u16>,
    /// A file listing every process's host:port, one per line in process order (blank
    /// lines and # comments are skipped). Each process listens on its own line.
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Listen here instead of this process's line of --hosts (e.g. 0.0.0.0:7000 when the
    /// listed name is not an address of this host).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// How long start-up waits for every other process before failing with the ones it
    /// could not reach.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub cluster_timeout: Duration,
}

/// `waterline cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What each process runs (--process, --hosts and --listen are set by the launcher).
    #[command(flatten)]
    pub run: RunArgs,
    /// Process i listens on 127.0.0.1:<base-port + i>.
    #[arg(long, default_value_t = 2101)]
    pub base_port: u16,
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
        let e = Cli::try_parse_from(["waterline", "run", "-d", "x", "--processes", "0"])
            .expect_err("zero processes");
        assert!(e.to_string().contains("--processes"), "{e}");
        let e = Cli::try_parse_from(["waterline", "run", "-d", "x", "--cluster-timeout", "soon"])
            .expect_err("not a duration");
        assert!(e.to_string().contains("--cluster-timeout"), "{e}");
    }

    #[test]
    fn cluster_flags_are_timely_s() {
        let cli = Cli::try_parse_from([
            "waterline",
            "run",
            "-d",
            "x",
            "-w",
            "2",
            "-n",
            "3",
            "-p",
            "1",
            "--hosts",
            "h.txt",
        ])
        .expect("valid");
        let Command::Run(args) = cli.command else {
            panic!("a run")
        };
        assert_eq!(
            (args.workers, args.cluster.processes, args.cluster.process),
            (2, 3, Some(1))
        );
        assert_eq!(args.cluster.hosts, Some(PathBuf::from("h.txt")));
    }
}

/// `waterline nexmark`.
#[derive(Debug, Args)]
pub struct NexmarkArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NexmarkCommand,
}

/// `waterline nexmark …`.
#[derive(Debug, Subcommand)]
pub enum NexmarkCommand {
    /// Write N generated Nexmark events into a topic (event n to partition n % P).
    Generate(NexmarkGenerateArgs),
    /// Run a query to the end of its input and print events, seconds, events/s, CPU
    /// seconds, events per CPU-second and the result count.
    Run(NexmarkRunArgs),
}

/// The generator's settings.
#[derive(Debug, Args, Clone)]
pub struct NexmarkGeneratorArgs {
    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Events per second of event time (Nexmark's first_event_rate).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
}

/// `waterline nexmark generate`.
#[derive(Debug, Args)]
pub struct NexmarkGenerateArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP",
        value_name = "HOST:PORT,...",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Topic to write to (created if missing).
    #[arg(long)]
    pub topic: String,
    /// How many events.
    #[arg(long, value_name = "N")]
    pub events: u64,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    #[command(flatten)]
    /// The generator.
    pub generator: NexmarkGeneratorArgs,
}

fn parse_query(s: &str) -> Result<crate::nexmark::queries::Query, String> {
    crate::nexmark::queries::Query::parse(s)
        .ok_or_else(|| "expected one of q0, q5, q7, q8, q11".to_string())
}

/// `waterline nexmark run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["events", "topic"])))]
pub struct NexmarkRunArgs {
    /// The query: q0, q5, q7, q8 or q11.
    #[arg(long, value_parser = parse_query)]
    pub query: crate::nexmark::queries::Query,
    /// Generate this many events in process (before the clock starts).
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// Read the events from this topic instead, to its end at start.
    #[arg(long)]
    pub topic: Option<String>,
    /// Kafka bootstrap servers (with --topic).
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP",
        value_name = "HOST:PORT,...",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: u64,
    /// With --topic: the watermark's bound on out-of-orderness, in ms.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub bound_ms: u64,
    #[command(flatten)]
    /// The generator (with --events).
    pub generator: NexmarkGeneratorArgs,
}
