//! Nexmark throughput per core: q0, q5, q7, q8, q11 in process and through Kafka.
//!
//! Reproduce (the figures of one run are comparable with each other; the machine may be
//! shared, so compare ratios, and events per CPU-second rather than per wall second):
//!
//! ```text
//! KAFKA_BOOTSTRAP=127.0.0.1:19092 cargo bench --bench nexmark
//! WATERLINE_BENCH_EVENTS=5000000 WATERLINE_BENCH_KAFKA_EVENTS=1000000 cargo bench --bench nexmark
//! WATERLINE_BENCH_KAFKA=0 cargo bench --bench nexmark          # in process only
//! ```
//!
//! In process: N events (`WATERLINE_BENCH_EVENTS`, default 5M; seed 0, 10,000 events/s
//! of event time) are generated before the clock starts and handed to one worker in
//! order; the clock stops when the query's last result is out. The generation row is the
//! generator alone (generate and drop), the floor under any run that generates its input.
//!
//! Through Kafka (`$KAFKA_BOOTSTRAP`, or a broker `scripts/kafka.sh` starts): N events
//! (`WATERLINE_BENCH_KAFKA_EVENTS`, default 1M) are produced once into a fresh topic of 4
//! partitions; then a bare librdkafka consumer reads it all doing nothing (the baseline:
//! the input side's limit here), then each query reads it with one worker through
//! `nexmark::kafka::topic_source`. CPU seconds are the whole process's, librdkafka's
//! threads included.
//!
//! Printed: a markdown table with events/s, CPU seconds, events per CPU-second, the ratio
//! to the bare consumer (Kafka rows) and to the per-core target of issue 7 (DBSP's
//! published figures: q5 572K/s, q7 318K/s, q8 557K/s; q11 400K/s).

mod common;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use waterline::nexmark::generator::{Generator, GeneratorConfig};
use waterline::nexmark::kafka;
use waterline::nexmark::queries::Query;
use waterline::nexmark::run::{self, Report, cpu_seconds};

/// Per-core targets (events per CPU-second).
fn target(q: Query) -> Option<f64> {
    match q {
        Query::Q5 => Some(572_000.0),
        Query::Q7 => Some(318_000.0),
        Query::Q8 => Some(557_000.0),
        Query::Q11 => Some(400_000.0),
        Query::Q0 => None,
    }
}

struct Row {
    name: String,
    events: u64,
    seconds: f64,
    cpu: f64,
    results: Option<i64>,
    baseline: Option<f64>,
    target: Option<f64>,
}

impl Row {
    fn of(name: String, r: &Report, baseline: Option<f64>) -> Row {
        Row {
            name,
            events: r.events,
            seconds: r.seconds,
            cpu: r.cpu_seconds,
            results: Some(r.results),
            baseline,
            target: target(r.query),
        }
    }

    fn print(&self) {
        let eps = self.events as f64 / self.seconds.max(1e-9);
        let per_cpu = self.events as f64 / self.cpu.max(1e-9);
        let ratio = |x: Option<f64>, v: f64| x.map_or("".to_string(), |b| format!("{:.2}", v / b));
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {} | {} | {} |",
            self.name,
            self.events,
            self.seconds,
            eps,
            self.cpu,
            per_cpu,
            self.results.map_or("".into(), |r| r.to_string()),
            ratio(self.baseline, eps),
            ratio(self.target, per_cpu),
        );
    }
}

fn header() {
    println!(
        "| run | events | s | events/s | CPU s | events/CPU-s | results | ÷ baseline (events/s) | ÷ target (per CPU-s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
}

fn main() {
    let n = common::env_number("WATERLINE_BENCH_EVENTS", 5_000_000);
    let config = GeneratorConfig::default();
    println!(
        "## Nexmark in process, 1 worker, {n} events, {} events/s of event time\n",
        config.rate
    );
    header();

    let (c0, t0) = (cpu_seconds(), Instant::now());
    let mut bytes = 0usize;
    for e in Generator::new(config.clone(), n) {
        bytes += std::hint::black_box(&e).date_time() as usize & 1;
    }
    std::hint::black_box(bytes);
    Row {
        name: "generate only".into(),
        events: n,
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
        results: None,
        baseline: None,
        target: None,
    }
    .print();

    let shares = run::generate_shares(&config, n, 1);
    for q in Query::ALL {
        match run::in_process(q, shares.clone()) {
            Ok(r) => Row::of(q.name().into(), &r, None).print(),
            Err(e) => println!("| {q} | {e} | | | | | | | |"),
        }
    }
    drop(shares);

    if std::env::var("WATERLINE_BENCH_KAFKA").as_deref() == Ok("0") {
        return;
    }
    let Ok(bootstrap) = std::panic::catch_unwind(common::bootstrap) else {
        println!("\n(no broker: set KAFKA_BOOTSTRAP or let scripts/kafka.sh start one)");
        return;
    };
    let kn = common::env_number("WATERLINE_BENCH_KAFKA_EVENTS", 1_000_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let topic = format!("nexmark-bench-{}-{nanos}", std::process::id());
    let started = Instant::now();
    let bytes = kafka::produce(&bootstrap, &topic, 4, &config, kn).expect("produce the events");
    let produce_secs = started.elapsed().as_secs_f64();
    println!(
        "\n## Nexmark through Kafka ({bootstrap}), 1 worker, {kn} events in 4 partitions \
         ({:.0} bytes each; produced at {:.0} events/s)\n",
        bytes as f64 / kn as f64,
        kn as f64 / produce_secs
    );
    header();
    let base = bare_consumer(&bootstrap, &topic);
    let base_eps = base.events as f64 / base.seconds;
    base.print();
    for q in Query::ALL {
        match run::from_topic(q, 1, &bootstrap, &topic, 0) {
            Ok(r) => {
                assert_eq!(r.events, kn, "{q} read the whole topic");
                Row::of(format!("{q} (Kafka)"), &r, Some(base_eps)).print()
            }
            Err(e) => println!("| {q} (Kafka) | {e} | | | | | | | |"),
        }
    }
    delete_topic(&bootstrap, &topic);
}

/// Reads every partition of `topic` to its end at start, doing nothing with the records.
fn bare_consumer(bootstrap: &str, topic: &str) -> Row {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "waterline-nexmark-baseline")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("a consumer");
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut left = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .expect("offsets");
        left += high - low;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .expect("a partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut events, mut bytes) = (0u64, 0usize);
    while left > 0 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            events += 1;
            left -= 1;
        }
    }
    std::hint::black_box(bytes);
    Row {
        name: "bare consumer (baseline)".into(),
        events,
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
        results: None,
        baseline: None,
        target: None,
    }
}

fn delete_topic(bootstrap: &str, topic: &str) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    if let Ok(admin) = admin {
        let _ = futures_executor::block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
    }
}
