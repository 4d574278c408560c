//! The `waterline` binary: parse arguments, set up logging, run, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use waterline::app::{self, Outcome, RunOptions};
use waterline::cli::{Cli, ClusterFlags, Command};
use waterline::cluster::{self, Layout};
use waterline::config::{Config, Layered, LogFormat};
use waterline::metrics::Metrics;
use waterline::progress_bar::{Display, Reporter, Task};
use waterline::replay::StopAt;
use waterline::source::SourceControl;
use waterline::spec::PipelineSpec;

fn init_logging(format: LogFormat, level: &str) {
    waterline::logging::init(format, level);
}

/// SIGINT/SIGTERM set the returned flag; a second signal exits at once.
fn stop_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // An error found before the configuration is read is written as --log-format asks.
    let flag = match &cli.command {
        Command::Run(a) => a.settings.log_format.as_deref(),
        Command::Produce(a) => a.settings.log_format.as_deref(),
        Command::Config(a) => a.settings.log_format.as_deref(),
        Command::Demo(_) | Command::Nexmark(_) => None,
        Command::Cluster(a) => a.run.settings.log_format.as_deref(),
    };
    if flag == Some("json") {
        waterline::logging::prefer(LogFormat::Json);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // `error: …` on stderr, or one JSON line in JSON mode.
            waterline::logging::fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::from_sources(&args.settings.sources(Some(&args.run_settings)))?;
            let layout = cluster_layout(&args.cluster)?;
            init_logging(config.log_format, &config.log_level);
            let spec = PipelineSpec::from_file(&args.dataflow)?;
            let metrics = Metrics::new(&spec.name);
            let _http = match config.http_listen {
                None => None,
                Some(address) => Some(waterline::http::serve(address, metrics.clone())?),
            };
            let until = args.until.or(args.stop_at_end.then_some(StopAt::End));
            let planned = Arc::new(AtomicU64::new(0));
            // A bounded run shows how much of what it planned it has read.
            let progress = match until {
                Some(_) => Some(Reporter::start(
                    Task {
                        verb: "read",
                        deadline: None,
                    },
                    Display::choose(config.log_format),
                    {
                        let metrics = metrics.clone();
                        move || metrics.records_read()
                    },
                    {
                        let planned = Arc::clone(&planned);
                        move || planned.load(Ordering::Relaxed)
                    },
                )?),
                None => None,
            };
            let outcome = app::run_with_restarts(
                spec,
                config,
                RunOptions {
                    workers: args.workers as usize,
                    cluster: layout,
                    from: args.from,
                    until,
                    reset: args.reset,
                    started: Default::default(),
                    resolved_until: Default::default(),
                    planned,
                    control: SourceControl::default(),
                    shutdown: stop_signal()?,
                    metrics,
                },
            );
            if let Some(progress) = progress {
                progress.finish();
            }
            let outcome = outcome?;
            match outcome {
                Outcome::Completed => {
                    tracing::info!("completed: every window closed and every output flushed")
                }
                Outcome::Stopped => tracing::info!("stopped"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce(args) => {
            let config = Config::from_sources(&args.settings.sources(None))?;
            init_logging(config.log_format, &config.log_level);
            let stop = stop_signal()?;
            let sent_so_far = Arc::new(AtomicU64::new(0));
            let progress = Reporter::start(
                Task {
                    verb: "sent",
                    deadline: args.duration.map(|d| Instant::now() + d),
                },
                Display::choose(config.log_format),
                {
                    let sent_so_far = Arc::clone(&sent_so_far);
                    move || sent_so_far.load(Ordering::Relaxed)
                },
                {
                    let count = args.count.unwrap_or(0);
                    move || count
                },
            )?;
            let sent = waterline::produce::produce(&args, &config, &stop, &sent_so_far);
            progress.finish();
            let sent = sent.with_context(|| {
                format!(
                    "producing to `{}` on {}",
                    args.topic, config.bootstrap_servers
                )
            })?;
            eprintln!(
                "sent {} records to {} ({} invalid, {} late, {} duplicates)",
                sent.total, args.topic, sent.invalid, sent.late, sent.duplicate
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(args) => {
            let layered = Layered::load(&args.settings.sources(Some(&args.run_settings)))?;
            if args.print {
                print!("{}", layered.to_toml());
            } else {
                eprintln!("the configuration is valid (--print shows it)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            init_logging(LogFormat::Text, "warn");
            waterline::demo::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(args) => launch_cluster(&args),
        Command::Nexmark(args) => nexmark(args),
    }
}

/// The job of several processes the flags describe (`None`: this process alone).
fn cluster_layout(flags: &ClusterFlags) -> anyhow::Result<Option<Layout>> {
    Ok(Layout::from_flags(
        usize::from(flags.processes),
        flags.process.map(usize::from),
        flags.hosts.as_deref(),
        flags.listen.as_deref(),
        flags.cluster_timeout,
    )?)
}

/// `waterline cluster`: every process of the job on this host.
fn launch_cluster(args: &waterline::cli::ClusterArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.run.cluster;
    if flags.process.is_some() || flags.hosts.is_some() || flags.listen.is_some() {
        anyhow::bail!(
            "waterline cluster sets --process, --hosts and --listen for each process itself; \
             leave them out (or start each process with `waterline run`)"
        );
    }
    // The run's own checks, once, before starting processes that would all fail alike.
    PipelineSpec::from_file(&args.run.dataflow)?;
    let config = Config::from_sources(&args.run.settings.sources(Some(&args.run.run_settings)))?;
    let argv: Vec<String> = std::env::args().collect();
    let launch = cluster::launch::Launch {
        processes: usize::from(flags.processes),
        base_port: args.base_port,
        http_listen: config.http_listen,
        run_args: cluster::launch::run_args(&argv)?,
    };
    let code = cluster::launch::run(&launch, &stop_signal()?)?;
    Ok(ExitCode::from(code))
}

/// `waterline nexmark generate|run`.
fn nexmark(args: waterline::cli::NexmarkArgs) -> anyhow::Result<ExitCode> {
    use waterline::cli::NexmarkCommand;
    use waterline::nexmark::{generator::GeneratorConfig, kafka, run};
    init_logging(LogFormat::Text, "warn");
    let generator = |g: &waterline::cli::NexmarkGeneratorArgs| GeneratorConfig {
        seed: g.seed,
        rate: g.rate,
        ..GeneratorConfig::default()
    };
    match args.command {
        NexmarkCommand::Generate(a) => {
            let started = Instant::now();
            let bytes = kafka::produce(
                &a.bootstrap,
                &a.topic,
                a.partitions,
                &generator(&a.generator),
                a.events,
            )?;
            let secs = started.elapsed().as_secs_f64();
            println!("events: {}", a.events);
            println!("bytes: {bytes}");
            println!("seconds: {secs:.3}");
            println!("events/s: {:.0}", a.events as f64 / secs.max(1e-9));
        }
        NexmarkCommand::Run(a) => {
            let workers = a.workers as usize;
            let report = match (&a.topic, a.events) {
                (Some(topic), _) => {
                    run::from_topic(a.query, workers, &a.bootstrap, topic, a.bound_ms)?
                }
                (None, Some(n)) => {
                    let shares = run::generate_shares(&generator(&a.generator), n, workers);
                    run::in_process(a.query, shares)?
                }
                (None, None) => anyhow::bail!("give --events N or --topic T"),
            };
            println!("{report}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
