//! The `waterline` binary: parse arguments, set up logging, run, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;

use waterline::app::{self, Outcome, RunOptions};
use waterline::cli::{Cli, Command};
use waterline::config::{Config, LogFormat};
use waterline::metrics::Metrics;
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
            let spec = PipelineSpec::from_file(&args.dataflow)?;
            let mut config = Config::load(args.config.as_deref())?;
            if let Some(b) = args.bootstrap {
                config.bootstrap_servers = b;
            }
            init_logging(config.log_format, &config.log_level);
            let outcome = app::run_with_restarts(
                spec,
                config,
                RunOptions {
                    workers: args.workers as usize,
                    from: args.from,
                    until: args.until.or(args.stop_at_end.then_some(StopAt::End)),
                    reset: args.reset,
                    started: Default::default(),
                    resolved_until: Default::default(),
                    control: SourceControl::default(),
                    shutdown: stop_signal()?,
                    metrics: Metrics::new(),
                },
            )?;
            match outcome {
                Outcome::Completed => {
                    tracing::info!("completed: every window closed and every output flushed")
                }
                Outcome::Stopped => tracing::info!("stopped"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce(args) => {
            let mut config = Config::load(args.config.as_deref())?;
            if let Some(b) = &args.bootstrap {
                config.bootstrap_servers = b.clone();
            }
            init_logging(config.log_format, &config.log_level);
            let stop = stop_signal()?;
            let sent = waterline::produce::produce(&args, &config, &stop).with_context(|| {
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
        Command::Demo(args) => {
            init_logging(LogFormat::Text, "warn");
            waterline::demo::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
