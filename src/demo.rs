//! `waterline demo`: the trades dataflow end to end, with no broker.
//!
//! ```text
//!  generator thread ──► mock cluster: trades (4 partitions)
//!                               │
//!                      waterline run (2 workers)
//!                               │
//!          trades-windows, trades-dead-letters, trades-late (mock topics)
//!                               │
//!                      printer thread ──► a table on stdout, then a summary
//! ```
//!
//! librdkafka's in-process mock cluster stands in for Kafka. It keeps at most 5 MiB per
//! partition, so the demo's volume stays far below that. Event time runs `speedup` times
//! faster than the wall clock, so a 15-second demo closes several one-minute windows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::app::{self, Outcome, RunOptions};
use crate::cli::{DemoArgs, GenerateArgs};
use crate::config::Config;
use crate::generate::{Kind, TradeGenerator};
use crate::metrics::Metrics;
use crate::output::{Topics, WindowResult, murmur2};
use crate::source::SourceControl;
use crate::spec::PipelineSpec;

const PARTITIONS: i32 = 4;

/// What the demo saw, for its summary.
#[derive(Debug, Default)]
pub struct DemoSummary {
    /// Records produced.
    pub events_in: u64,
    /// Of which generated invalid.
    pub generated_invalid: u64,
    /// Of which generated late.
    pub generated_late: u64,
    /// Window results read back.
    pub windows_out: u64,
    /// Dead letters read back.
    pub dead_letters: u64,
    /// Late records read back.
    pub late_records: u64,
}

/// Runs the demo; prints windows as they close, then a summary.
pub fn run(args: &DemoArgs) -> anyhow::Result<DemoSummary> {
    let mut spec = PipelineSpec::from_toml(
        "dataflows/trades.toml (embedded)",
        include_str!("../dataflows/trades.toml"),
    )?;
    // Six symbols hash onto four partitions, so one may stay empty. Idleness is judged on
    // the wall clock, which the demo does not speed up: a short timeout lets windows close
    // while it runs instead of after the dataflow's 30 s.
    spec.input.idle_timeout = Duration::from_secs(1);
    let mock = MockCluster::new(1)?;
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic(&spec.input.topic, PARTITIONS, 1)?;
    for t in &Topics::new(&spec, |_| PARTITIONS).names {
        mock.create_topic(t, PARTITIONS, 1)?;
    }
    mock.create_topic(&crate::progress::topic("waterline-demo"), 1, 1)?;
    let config = Config {
        app_id: "waterline-demo".into(),
        bootstrap_servers: bootstrap.clone(),
        create_topics: false,
        // The mock cluster accepts transactional calls but does not implement them.
        guarantee: crate::config::Guarantee::AtLeastOnce,
        ..Config::default()
    };

    println!(
        "waterline demo: {} trades/s for {}, event time ×{}, {} workers, embedded mock Kafka at {bootstrap}",
        args.rate,
        humantime::format_duration(args.duration),
        args.speedup,
        args.workers
    );
    println!(
        "dataflow `{}`: {} → {}",
        spec.name, spec.input.topic, spec.output.topic
    );
    println!();
    println!(
        "{:<24} {:<7} {:>6} {:>16} {:>12} {:>12} {:>12}",
        "window (UTC)", "symbol", "count", "sum", "min", "max", "avg"
    );

    let control = SourceControl::default();
    let produced = Arc::new(AtomicU64::new(0));
    let generated_invalid = Arc::new(AtomicU64::new(0));
    let generated_late = Arc::new(AtomicU64::new(0));
    let producer = {
        let bootstrap = bootstrap.clone();
        let topic = spec.input.topic.clone();
        let drain = Arc::clone(&control.drain);
        let (produced, invalid, late) = (
            Arc::clone(&produced),
            Arc::clone(&generated_invalid),
            Arc::clone(&generated_late),
        );
        let (rate, duration, speedup, seed) = (args.rate, args.duration, args.speedup, args.seed);
        std::thread::Builder::new()
            .name("demo-producer".into())
            .spawn(move || -> anyhow::Result<()> {
                let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("linger.ms", "5")
                    .create()?;
                let gen_args = GenerateArgs {
                    keys: 6,
                    invalid: 0.02,
                    late: 0.01,
                    duplicate: 0.0,
                    seed,
                    time_step_ms: 0,
                };
                let start_ms = crate::source::now_ms();
                let mut generator = TradeGenerator::new(gen_args, start_ms);
                let started = Instant::now();
                let mut n: u64 = 0;
                while started.elapsed() < duration {
                    let due = Duration::from_secs_f64(n as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        producer.poll(wait.min(Duration::from_millis(20)));
                        continue;
                    }
                    let event_ms = start_ms + started.elapsed().as_millis() as u64 * speedup;
                    let g = generator.next(event_ms);
                    match g.kind {
                        Kind::Invalid => invalid.fetch_add(1, Ordering::Relaxed),
                        Kind::Late => late.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    let key = g.key.clone().unwrap_or_default();
                    let partition = (murmur2(&key) & 0x7fff_ffff) % PARTITIONS;
                    let record = rdkafka::producer::BaseRecord::to(&topic)
                        .partition(partition)
                        .key(&key)
                        .payload(&g.payload);
                    producer.send(record).map_err(|(e, _)| e)?;
                    n += 1;
                    produced.store(n, Ordering::Relaxed);
                    producer.poll(Duration::ZERO);
                }
                rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))?;
                drain.store(true, Ordering::SeqCst);
                Ok(())
            })?
    };

    let finished = Arc::new(AtomicBool::new(false));
    let printer = {
        let bootstrap = bootstrap.clone();
        let spec = spec.clone();
        let finished = Arc::clone(&finished);
        std::thread::Builder::new()
            .name("demo-printer".into())
            .spawn(move || print_outputs(&bootstrap, &spec, &finished))?
    };

    let metrics = Metrics::new(&spec.name);
    let (dead_letter_topic, late_topic) = (
        spec.output.dead_letter_topic.clone(),
        spec.output.late_topic.clone(),
    );
    let outcome = app::run(
        spec,
        config,
        RunOptions {
            workers: args.workers as usize,
            cluster: None,
            from: None,
            until: None,
            reset: false,
            started: Default::default(),
            resolved_until: Default::default(),
            planned: Default::default(),
            control,
            shutdown: Arc::new(AtomicBool::new(false)),
            metrics: metrics.clone(),
        },
    );
    let produced_result = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the demo producer panicked"))?;
    finished.store(true, Ordering::SeqCst);
    let (windows_out, dead_letters, late_records) = printer
        .join()
        .map_err(|_| anyhow::anyhow!("the demo printer panicked"))??;
    produced_result?;
    if outcome? != Outcome::Completed {
        anyhow::bail!("the pipeline stopped before completing");
    }

    let summary = DemoSummary {
        events_in: produced.load(Ordering::Relaxed),
        generated_invalid: generated_invalid.load(Ordering::Relaxed),
        generated_late: generated_late.load(Ordering::Relaxed),
        windows_out,
        dead_letters,
        late_records,
    };
    println!();
    println!("summary");
    println!(
        "  events in        {:>8}  (generated: {} invalid, {} far behind in event time)",
        summary.events_in, summary.generated_invalid, summary.generated_late
    );
    println!("  valid events     {:>8}", metrics.records_decoded.get());
    println!("  windows out      {:>8}", summary.windows_out);
    println!(
        "  dead letters     {:>8}  → {}",
        summary.dead_letters, dead_letter_topic
    );
    println!(
        "  late records     {:>8}  → {}",
        summary.late_records, late_topic
    );
    drop(mock);
    Ok(summary)
}

fn print_outputs(
    bootstrap: &str,
    spec: &PipelineSpec,
    finished: &AtomicBool,
) -> anyhow::Result<(u64, u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "waterline-demo-printer")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut topics: Vec<String> = spec.windows.iter().map(|w| w.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let dlq = spec.output.dead_letter_topic.clone();
    let late = spec.output.late_topic.clone();
    let mut tpl = TopicPartitionList::new();
    for t in topics.iter().chain([&dlq, &late]) {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut counts = (0u64, 0u64, 0u64);
    let mut end: Option<BTreeMap<(String, i32), i64>> = None;
    let mut position: BTreeMap<(String, i32), i64> = BTreeMap::new();
    loop {
        if end.is_none() && finished.load(Ordering::SeqCst) {
            let mut ends = BTreeMap::new();
            for t in topics.iter().chain([&dlq, &late]) {
                for p in 0..PARTITIONS {
                    let (_, high) = consumer.fetch_watermarks(t, p, Duration::from_secs(10))?;
                    ends.insert((t.clone(), p), high);
                }
            }
            end = Some(ends);
        }
        if let Some(ends) = &end
            && ends
                .iter()
                .all(|(k, high)| position.get(k).copied().unwrap_or(0) >= *high)
        {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        position.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
        if m.topic() == dlq {
            counts.1 += 1;
        } else if m.topic() == late {
            counts.2 += 1;
        } else if let Some(r) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<WindowResult>(p).ok())
        {
            counts.0 += 1;
            let show = |d: Option<rust_decimal::Decimal>| {
                d.map(|d| d.round_dp(2).to_string()).unwrap_or_default()
            };
            println!(
                "{:<24} {:<7} {:>6} {:>16} {:>12} {:>12} {:>12}",
                format!("{}–{}", &r.window_start[11..19], &r.window_end[11..16]),
                r.key,
                r.count.unwrap_or_default(),
                show(r.sum),
                show(r.min),
                show(r.max),
                show(r.avg),
            );
        }
    }
    Ok(counts)
}
