//! What the benchmarks against Apache Kafka share: the broker and their settings, the
//! release binary and its runs (with their CPU time and peak RSS), filling and feeding
//! input topics, reading what a run committed, and percentiles.
//!
//! Each bench uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use waterline::cli::GenerateArgs;
use waterline::generate::{Kind, TradeGenerator};

/// How long a run may take to create its output topics or show its first output.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `$KAFKA_BOOTSTRAP`, or the address of a broker started with `scripts/kafka.sh`.
pub fn bootstrap() -> String {
    if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
        return b;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg("start")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("kafka.sh prints the bootstrap address last")
        .trim()
        .to_string()
}

/// The number in environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The (possibly fractional) number in environment variable `name`, or `default`; a value
/// that is not a number stops the bench, naming the variable.
pub fn env_f64(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => x,
            _ => panic!("{name} must be a positive number, got `{v}`"),
        },
    }
}

/// Wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}

/// A fresh directory for a bench's files (logs, dataflows, configs).
pub fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waterline-bench-{name}-{}", now_ms()));
    std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
    dir
}

pub fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The release binary, pointed at `bootstrap`, its stderr (the log) going to `log`, its
/// HTTP server on a free port unless the command says otherwise.
pub fn waterline(bootstrap: &str, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
    command
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env("WATERLINE__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the temporary directory is writable"));
    command
}

/// Runs `command` to its end and fails the bench, naming `log`, if it does not succeed.
pub fn run_ok(mut command: Command, log: &Path) {
    let status = command.status().expect("the command starts");
    assert!(
        status.success(),
        "{command:?} failed ({status}); see {}",
        log.display()
    );
}

/// A running `waterline run`; killed if the bench panics before stopping it, so that no
/// run outlives the bench.
pub struct Running(pub Child);

impl Running {
    /// Stops the run as an operator would (SIGTERM: it commits what it wrote and exits).
    pub fn stop(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM reaches the run");
        self.0.wait().expect("the run is our child")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After `stop` (or `measure`) the child is reaped and this does nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What [`measure`] saw of a child run to its end.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// From spawn to exit.
    pub wall_s: f64,
    /// User + system CPU seconds of the child (and its waited-for descendants).
    pub cpu_s: f64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Epoch ms at spawn and at exit.
    pub spawned_ms: i64,
    pub exited_ms: i64,
    /// CPU seconds the broker used meanwhile, when it runs on this machine
    /// ([`broker_cpu_secs`]): its share of the cores the run had.
    pub broker_cpu_s: Option<f64>,
}

/// Spawns `command`, samples its `VmHWM` every 10 ms until it exits (the high-water mark
/// only rises, so the last sample is the peak but for what the final 10 ms added), and
/// calls `watch` at every sample while it runs (e.g. to scrape its metrics). The child's
/// CPU time is the rise of this process's `cutime + cstime`, which counts it once waited
/// for. Fails the bench, naming `log`, if it does not exit successfully.
pub fn measure(mut command: Command, log: &Path, mut watch: impl FnMut()) -> Measured {
    let cpu_before = children_cpu_secs();
    let broker_before = broker_cpu_secs();
    let spawned_ms = now_ms();
    let started = Instant::now();
    let mut child = Running(command.spawn().expect("the command starts"));
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Some(kib) = status_kib(child.0.id(), "VmHWM:") {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        if let Some(status) = child.0.try_wait().expect("the child is ours") {
            break status;
        }
        watch();
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall_s = started.elapsed().as_secs_f64();
    let exited_ms = now_ms();
    assert!(
        status.success(),
        "{command:?} failed ({status}); see {}",
        log.display()
    );
    Measured {
        wall_s,
        cpu_s: children_cpu_secs() - cpu_before,
        peak_rss_kib,
        spawned_ms,
        exited_ms,
        broker_cpu_s: broker_before
            .zip(broker_cpu_secs())
            .map(|(before, after)| after - before),
    }
}

/// Waits, at most `max`, until the broker running on this machine is idle: under 0.04 CPU
/// seconds in 0.5 s (an idle broker here uses 0–0.02 s per 0.2 s). Returns how long it
/// waited. A broker sets up the logs of a topic just created after its controller has
/// answered: for three topics of 8 partitions that took it about a CPU second, on the
/// cores a run started at once shared with it. Without a local broker it waits 2 s.
pub fn settle_broker(max: Duration) -> Duration {
    let started = Instant::now();
    let Some(mut last) = broker_cpu_secs() else {
        std::thread::sleep(Duration::from_secs(2).min(max));
        return started.elapsed();
    };
    while started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(500));
        let Some(now) = broker_cpu_secs() else {
            break;
        };
        if now - last < 0.04 {
            break;
        }
        last = now;
    }
    started.elapsed()
}

/// User + system CPU seconds so far of the Apache Kafka broker running on this machine
/// (the process whose command line runs `kafka.Kafka`, as `scripts/kafka.sh` starts it),
/// or `None` when there is none here (a remote broker) or more than one.
pub fn broker_cpu_secs() -> Option<f64> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_broker = cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka");
        if !is_broker {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // Fields after the command name: state is field 3, utime and stime 14 and 15.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
        found = Some((ticks(14)? + ticks(15)?) / rustix::param::clock_ticks_per_second() as f64);
    }
    found
}

/// User + system CPU seconds of this process's waited-for descendants so far.
pub fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux: /proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3; cutime and cstime are fields 16 and 17.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<f64>().expect("a tick count");
    (ticks(16) + ticks(17)) / rustix::param::clock_ticks_per_second() as f64
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, the resident set; `VmHWM:`, its peak;
/// `RssAnon:`, its anonymous part: heap and stacks, without mapped files such as the
/// binary's pages).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.split_whitespace().next()?.parse().ok()
}

/// A port free on 127.0.0.1 just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// The sum of every sample of metric `name` on `http://<address>/metrics`, or `None` while
/// the server does not answer (not started yet).
pub fn scrape_sum(address: &str, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// The cumulative buckets `(le, count)` of histogram `name` on `http://<address>/metrics`,
/// summed over the series whose labels include `label` (e.g. `since="append"`), in `le`
/// order (`+Inf` last); `None` while the server does not answer.
pub fn scrape_buckets(address: &str, name: &str, label: &str) -> Option<Buckets> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    let bucket = format!("{name}_bucket{{");
    let mut sums: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with(&bucket) && l.contains(label))
    {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        sums.entry(le.to_bits()).or_insert((le, 0.0)).1 += count;
    }
    let mut buckets: Buckets = sums.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(buckets)
}

/// From two scrapes of the same cumulative buckets (`before` may be empty): the upper
/// bound of the bucket holding quantile `q` of the observations made in between, and
/// their count. `None` without observations.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let at = |le: f64| {
        before
            .iter()
            .find(|(l, _)| *l == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let total = after.last().map(|(le, c)| c - at(*le))?;
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(le, c)| c - at(*le) >= q * total)
        .map(|(le, _)| (*le, total))
}

/// `dataflows/trades.toml` reading `input` and writing `<outputs>-windows`, `<outputs>-dlq`
/// and `<outputs>-late`, with each `(from, to)` of `changes` applied too, written under
/// `dir`. Every text replaced must be there, so an edit of the dataflow cannot silently
/// leave a bench reading the wrong topic or with other settings than it says.
pub fn trades_dataflow(
    dir: &Path,
    input: &str,
    outputs: &str,
    changes: &[(&str, &str)],
) -> PathBuf {
    let renames = [
        (
            "topic = \"trades\"".to_string(),
            format!("topic = \"{input}\""),
        ),
        (
            "\"trades-windows\"".to_string(),
            format!("\"{outputs}-windows\""),
        ),
        (
            "\"trades-dead-letters\"".to_string(),
            format!("\"{outputs}-dlq\""),
        ),
        ("\"trades-late\"".to_string(), format!("\"{outputs}-late\"")),
    ];
    let changes = changes
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()));
    let mut text = include_str!("../../dataflows/trades.toml").to_string();
    for (from, to) in renames.into_iter().chain(changes) {
        assert!(text.contains(&from), "dataflows/trades.toml has `{from}`");
        text = text.replace(&from, &to);
    }
    let path = dir.join(format!("{outputs}.toml"));
    std::fs::write(&path, text).expect("the temporary directory is writable");
    path
}

/// Creates `topic` with `partitions` partitions, empty, and waits until the broker lists
/// it (a busy broker can take seconds to show a new topic in its metadata).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topics(bootstrap, &[(topic, partitions, &[])]);
}

/// A topic to create: its name, partitions and topic configs.
pub type NewTopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Creates `topics`, empty, in one request, and waits until the broker lists each of them.
pub fn create_topics(bootstrap: &str, topics: &[NewTopicSpec<'_>]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client with valid settings");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let created = futures_executor::block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("the broker answers create_topics");
    for r in created {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a consumer with valid settings");
    for (name, partitions, _) in topics {
        assert_eq!(
            wait_for_topic(&probe, name),
            *partitions,
            "{name}'s partitions"
        );
    }
}

/// Deletes `names` (topics a bench made), so the shared broker does not keep them; says so
/// on stderr when it cannot.
pub fn delete_topics(bootstrap: &str, names: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client with valid settings");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match futures_executor::block_on(admin.delete_topics(&names, &AdminOptions::new())) {
        Err(e) => eprintln!("could not delete the bench's topics {names:?}: {e}"),
        Ok(results) => {
            for r in results {
                if let Err((topic, e)) = r {
                    eprintln!("could not delete topic {topic}: {e}");
                }
            }
        }
    }
}

/// A generator of pre-produced trades: `keys` symbols, event times 2 ms apart from a fixed
/// start, with these shares of invalid, late and duplicate records.
pub fn backfill_trades(
    keys: u32,
    invalid: f64,
    late: f64,
    duplicate: f64,
    seed: u64,
) -> GenerateArgs {
    GenerateArgs {
        keys,
        invalid,
        late,
        duplicate,
        seed,
        time_step_ms: 2,
    }
}

/// Creates `topic` with `partitions` partitions and fills it with `records` trades from
/// `trades`, round-robin over the partitions, as fast as the broker takes them.
pub fn fill_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: u64,
    trades: GenerateArgs,
) {
    create_topic(bootstrap, topic, partitions);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Large batches: this is set-up, not measured.
        .set("linger.ms", "20")
        .create()
        .expect("a producer with valid settings");
    let mut generator = TradeGenerator::new(trades, 1_768_312_800_000);
    for i in 0..records {
        let g = generator.next(0);
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % partitions as u64) as i32)
            .payload(&g.payload);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("the broker takes the input");
}

/// A `read_committed` consumer of every partition of each of `topics`, from the beginning,
/// once they exist (a run creates its outputs at start-up). It reports the end of each
/// partition (`KafkaError::PartitionEOF`), and answers a fetch as soon as anything is
/// there: the broker's default wait (500 ms) would dominate a latency measured with it.
pub fn committed_reader(bootstrap: &str, group: &str, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        // Assigned partitions, nothing to commit.
        .set("enable.auto.commit", "false")
        // Only what a downstream consumer of exactly-once output may see.
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        // As waterline's own clients do (src/kafka.rs), so that the reader's requests are
        // not held behind unacknowledged ones.
        .set("socket.nagle.disable", "true")
        .create()
        .expect("a consumer with valid settings");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..wait_for_topic(&consumer, topic) {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("a fresh list takes any partition");
        }
    }
    consumer.assign(&assignment).expect("assigning partitions");
    consumer
}

/// The partition count of `topic`, waiting up to [`START_TIMEOUT`] for it to appear.
pub fn wait_for_topic(consumer: &BaseConsumer, topic: &str) -> i32 {
    let started = Instant::now();
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("the broker answers metadata requests");
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            return n as i32;
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{topic} did not appear within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Calls `f` with each committed record of `topics` (topic, payload), from the beginning to
/// the end they have now; for outputs of a run that has exited.
///
/// The end is each partition's log end, asked of a `read_uncommitted` client: a
/// `read_committed` one is told the last stable offset, which stops before a transaction
/// whose commit markers the broker has not written yet. A run's `commit_transaction`
/// returns before those markers are written, so right after it exits, reading to the last
/// stable offset could end a partition early (seen here: a check that found 26,925 of
/// 50,000 records, all 50,000 there when read again).
pub fn read_to_end(bootstrap: &str, group: &str, topics: &[&str], mut f: impl FnMut(&str, &[u8])) {
    let consumer = committed_reader(bootstrap, group, topics);
    let log_ends: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("a consumer with valid settings");
    let mut open: BTreeSet<(String, i32)> = consumer
        .assignment()
        .expect("the assignment just made")
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let started = Instant::now();
    while !open.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "reading {topics:?} to the end took over 5 minutes; still open: {open:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => f(m.topic(), m.payload().unwrap_or_default()),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // Which topic is not said; the consumer's position is at the end for each
                // partition this p names whose position equals its high watermark.
                let position = consumer.position().expect("the consumer's positions");
                for e in position.elements() {
                    if e.partition() != p {
                        continue;
                    }
                    let (_, high) = log_ends
                        .fetch_watermarks(e.topic(), p, Duration::from_secs(10))
                        .expect("the broker answers watermark requests");
                    let at_end = match e.offset() {
                        Offset::Offset(o) => o >= high,
                        // Never fetched: only an empty partition ends with no position.
                        _ => high == 0,
                    };
                    if at_end {
                        open.remove(&(e.topic().to_string(), p));
                    }
                }
            }
            Some(Err(e)) => eprintln!("reading {topics:?}: {e} (retried)"),
            None => {}
        }
    }
}

/// The `q` quantile of `sorted` (nearest rank below), in ms.
pub fn percentile(sorted: &[i64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentiles of no samples");
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64
}

// --- live runs and their latency --------------------------------------------------------

/// A live topic fed at a steady rate.
#[derive(Clone, Debug)]
pub struct Feed {
    /// Records per second.
    pub rate: f64,
    pub partitions: i32,
    /// Symbols (the dataflow's keys).
    pub keys: u32,
    /// Share of invalid records (each makes one dead letter).
    pub invalid: f64,
}

/// The windows of the dataflow, when their results are to be measured too.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    /// Tumbling window size and grace, ms.
    pub size_ms: i64,
    pub grace_ms: i64,
}

impl Windows {
    /// The first close (end + grace) at or after `t`: closes are at k × size + grace.
    /// The least close at or after `from` that can be measured when the feed started at
    /// `fed_from`: a window that ended before the feed had run for a second holds no
    /// records, or not those of every key, and has no results to wait for.
    fn measurable(&self, from: i64, fed_from: i64) -> i64 {
        from.max(fed_from + 1_000 + self.grace_ms)
    }

    fn first_close(&self, t: i64) -> i64 {
        (t - self.grace_ms - 1).div_euclid(self.size_ms) * self.size_ms
            + self.size_ms
            + self.grace_ms
    }
}

/// A latency run: what to run and for how long. The run's HTTP server is put on a free
/// port (`WATERLINE__HTTP__LISTEN`), so `args` must not name one.
pub struct LatencyRun<'a> {
    pub bootstrap: &'a str,
    /// Where the logs go.
    pub dir: &'a Path,
    /// The input topic to create, and the prefix of the output topics.
    pub topic: &'a str,
    /// `waterline run` without its dataflow; `--dataflow` is added.
    pub args: &'a [String],
    /// Changes to `dataflows/trades.toml` (see [`trades_dataflow`]).
    pub changes: &'a [(&'a str, &'a str)],
    pub feed: Feed,
    pub windows: Option<Windows>,
    /// The measured span, from when the run has caught up with the feed and at least 1 s
    /// after the first dead letter was read.
    pub seconds: u64,
    /// How long after the measured span its last outputs may take to arrive.
    pub drain: Duration,
}

/// What a latency run measured, in ms.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Per invalid record sent in the measured span: its dead letter read − its send.
    pub dead_letters: Vec<i64>,
    /// Per (window, key) whose close (end + grace) fell in the measured span, of a window
    /// that ended at least 1 s after the feed started: its result read − that close.
    pub windows: Vec<i64>,
    /// The rate the feed achieved over the run.
    pub fed_rate: f64,
    /// Seconds from spawning the run until it had caught up with the feed (at most 0.25 s
    /// of input behind); `None`: not within [`START_TIMEOUT`].
    pub caught_up_s: Option<f64>,
    /// Records the run's reading was behind the feed at the end of the measured span.
    pub behind_at_end: Option<f64>,
    /// The run's own view over the measured span and its drain, from its `/metrics`: the
    /// bucket bound (s) holding the p99 of `waterline_end_to_end_latency_seconds`
    /// `{since="append"}` (append → commit, mostly dead letters), and of
    /// `waterline_commit_duration_seconds`, with the number of commits.
    pub in_process_p99: Option<f64>,
    pub commit_p99: Option<f64>,
    pub commits: f64,
    /// Where the time goes, per stage, over the same span: (stage, p50, p99), in s. The
    /// feeder's `ack` (its send → the broker's acknowledgement, of every 16th record sent
    /// in the span) is measured here; the others are the bucket bounds holding the run's
    /// `waterline_stage_latency_seconds` quantiles.
    pub stages: Vec<(&'static str, Option<f64>, Option<f64>)>,
    /// The run's `waterline_watermark_lag_seconds` (wall clock − watermark, which includes
    /// the out-of-orderness), sampled every [`LAG_EVERY`] over the measured span and its
    /// drain, sorted, in ms: how far behind the feed the watermark was, whatever the stage
    /// that held it.
    pub watermark_lag: Vec<i64>,
}

/// How often a latency run samples the run's watermark lag.
const LAG_EVERY: Duration = Duration::from_millis(250);

/// The stages of `waterline_stage_latency_seconds`, in the order they happen.
const STAGES: [&str; 4] = ["fetch", "frontier", "commit_wait", "commit"];

/// A histogram's cumulative buckets, `(le, count)`.
pub type Buckets = Vec<(f64, f64)>;

/// The histograms a latency run reads from the run's `/metrics` at both ends of its span:
/// append → commit, the commit durations, then each of [`STAGES`].
fn scrape_run_histograms(metrics: &str) -> Vec<Buckets> {
    let mut series = vec![
        (
            "waterline_end_to_end_latency_seconds",
            "since=\"append\"".to_string(),
        ),
        ("waterline_commit_duration_seconds", "worker=".to_string()),
    ];
    series.extend(STAGES.map(|stage| {
        (
            "waterline_stage_latency_seconds",
            format!("stage=\"{stage}\""),
        )
    }));
    series
        .iter()
        .map(|(name, label)| scrape_buckets(metrics, name, label).unwrap_or_default())
        .collect()
}

/// The feeder's producer context: (send timestamp, acknowledged − sent) of every 16th
/// record the broker acknowledged.
#[derive(Clone, Default)]
struct Acks {
    delivered: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if self.delivered.fetch_add(1, Ordering::Relaxed) % 16 != 0 {
            return;
        }
        if let Ok(m) = result
            && let Some(sent) = m.timestamp().to_millis()
        {
            let acked = now_ms();
            self.samples
                .lock()
                .expect("the bench does not panic")
                .push((sent, acked - sent));
        }
    }
}

/// From the first dead letter read to the start of the measured span.
const WARM_UP_MS: i64 = 1_000;

/// A live run started: `waterline run` on a fresh topic and the feeder sending to it.
struct Live {
    child: Running,
    log: PathBuf,
    /// The run's HTTP address.
    metrics: String,
    /// Epoch ms just before the run was spawned and the feed began.
    fed_from: i64,
    spawned: Instant,
    stop: Arc<AtomicBool>,
    /// Records sent so far.
    sent: Arc<AtomicU64>,
    /// The send timestamps of the invalid records sent.
    invalid_sent: Arc<Mutex<Vec<i64>>>,
    /// The feeder; returns the rate it achieved.
    feeder: std::thread::JoinHandle<f64>,
    /// The feeder's acknowledgement times.
    acks: Acks,
}

/// Creates `run.topic`, spawns the run on it (its HTTP server on a free port) and starts
/// feeding it at `run.feed`.
fn start_live(run: &LatencyRun) -> Live {
    let (bootstrap, topic) = (run.bootstrap, run.topic);
    let dataflow = trades_dataflow(run.dir, topic, topic, run.changes);
    create_topic(bootstrap, topic, run.feed.partitions);
    let log = run.dir.join(format!("{topic}-run.log"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut command = waterline(bootstrap, &log);
    command
        .args(run.args)
        .args(["--dataflow", utf8(&dataflow)])
        .env("WATERLINE__HTTP__LISTEN", &metrics)
        .env("WATERLINE_APP_ID", format!("{topic}-app"));
    let spawned = Instant::now();
    let fed_from = now_ms();
    let child = Running(command.spawn().expect("waterline starts"));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let invalid_sent = Arc::new(Mutex::new(Vec::new()));
    let acks = Acks::default();
    let feeder = {
        let (bootstrap, topic, feed) = (bootstrap.to_string(), topic.to_string(), run.feed.clone());
        let (stop, sent, invalid_sent, acks) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&invalid_sent),
            acks.clone(),
        );
        std::thread::spawn(move || {
            feed_live(&bootstrap, &topic, &feed, &stop, &sent, &invalid_sent, acks)
        })
    };
    Live {
        child,
        log,
        metrics,
        fed_from,
        spawned,
        stop,
        sent,
        invalid_sent,
        feeder,
        acks,
    }
}

/// Runs the dataflow on a fresh live topic and measures, with a `read_committed` consumer
/// on its outputs, how long after it was possible each output became visible: for every
/// invalid record sent in the measured span, its dead letter (read − Kafka timestamp, which
/// the feeder sets to the moment it sends it); with `windows`, for every window whose close
/// (end + grace) falls in the span and that ended at least 1 s after the feed started (an
/// earlier one holds no records), each key's result (read − close). The span starts
/// once the run has caught up with what the feed sent while it started (its
/// `waterline_records_read_total` at most 0.25 s of feed behind the records sent) and at
/// least 1 s after the first dead letter is read; it is `seconds` long, extended to hold
/// at least one window close. Fails the bench unless
/// every dead letter and every key's window result expected was read exactly once.
pub fn latency_run(run: &LatencyRun) -> Latencies {
    let (bootstrap, topic) = (run.bootstrap, run.topic);
    let (dlq, windows_topic) = (format!("{topic}-dlq"), format!("{topic}-windows"));
    let Live {
        child,
        log,
        metrics,
        fed_from,
        spawned,
        stop,
        sent,
        invalid_sent,
        feeder,
        acks,
    } = start_live(run);
    // How far the run's reading is behind the feed, in records (scraped from /metrics).
    let behind = || {
        let sent = sent.load(Ordering::Relaxed) as f64;
        scrape_sum(&metrics, "waterline_records_read_total").map(|read| sent - read)
    };
    let consumer = committed_reader(
        bootstrap,
        &format!("{topic}-reader"),
        &[&dlq, &windows_topic],
    );

    // (sent, read) of every dead letter; (close, key) → read times of window results.
    let mut letters: Vec<(i64, i64)> = Vec::new();
    let mut results: BTreeMap<(i64, String), Vec<i64>> = BTreeMap::new();
    let mut last_error = None;
    let grace = run.windows.map_or(0, |w| w.grace_ms);
    let mut read = |letters: &mut Vec<(i64, i64)>,
                    results: &mut BTreeMap<(i64, String), Vec<i64>>| {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let read_at = now_ms();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())
                    .expect("waterline writes its outputs as JSON");
                if m.topic() == dlq {
                    let sent = v["source"]["timestamp_ms"]
                        .as_i64()
                        .expect("the feeder stamps every record");
                    letters.push((sent, read_at));
                } else {
                    let end = v["window_end_ms"]
                        .as_i64()
                        .expect("a window result has its end");
                    let key = v["key"].as_str().expect("a window result has its key");
                    results
                        .entry((end + grace, key.to_string()))
                        .or_default()
                        .push(read_at);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            // Transient (librdkafka retries by itself); a lasting one shows as missing outputs.
            Some(Err(e)) => last_error = Some(e),
        }
    };
    let started = Instant::now();
    while letters.is_empty() {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "no dead letter within {START_TIMEOUT:?}; see {}",
            log.display()
        );
        read(&mut letters, &mut results);
    }
    // The measured span starts once the run has caught up with what the feed sent while
    // it started (at most a quarter of a second of input behind), and at least 1 s after
    // the first dead letter: past fencing, recovery and the first commits.
    let warm = letters[0].1 + WARM_UP_MS;
    let slack = run.feed.rate * 0.25;
    let mut caught_up_s = None;
    let mut next_scrape = Instant::now();
    while caught_up_s.is_none() && spawned.elapsed() < START_TIMEOUT {
        read(&mut letters, &mut results);
        if Instant::now() >= next_scrape {
            next_scrape += Duration::from_millis(100);
            if behind().is_some_and(|b| b <= slack) {
                caught_up_s = Some(spawned.elapsed().as_secs_f64());
            }
        }
    }
    if caught_up_s.is_none() {
        eprintln!(
            "{topic}: the run did not catch up with the feed ({} records/s) within \
             {START_TIMEOUT:?} ({:?} records behind); measuring anyway: the latencies hold \
             the backlog",
            run.feed.rate,
            behind()
        );
    }
    let from = warm.max(now_ms());
    let histograms_before = scrape_run_histograms(&metrics);
    let mut until = from + run.seconds as i64 * 1_000;
    if let Some(w) = run.windows {
        until = until.max(w.first_close(w.measurable(from, fed_from)) + 1);
    }
    let mut watermark_lag = Vec::new();
    let mut next_lag = Instant::now();
    let mut sample_lag = |watermark_lag: &mut Vec<i64>| {
        if Instant::now() >= next_lag {
            next_lag += LAG_EVERY;
            let lag = scrape_sum(&metrics, "waterline_watermark_lag_seconds");
            watermark_lag.extend(lag.map(|s| (s * 1000.0).round() as i64));
        }
    };
    while now_ms() < until {
        read(&mut letters, &mut results);
        sample_lag(&mut watermark_lag);
    }
    let behind_at_end = behind();
    let measured = |t: &i64| (from..until).contains(t);
    let expected_letters = invalid_sent
        .lock()
        .expect("the feeder does not panic")
        .iter()
        .filter(|s| measured(s))
        .count();
    let closes: Vec<i64> = match run.windows {
        None => Vec::new(),
        Some(w) => (w.first_close(w.measurable(from, fed_from))..until)
            .step_by(w.size_ms as usize)
            .collect(),
    };
    let keys = run.feed.keys as usize;
    let letters_in = |letters: &[(i64, i64)]| letters.iter().filter(|(s, _)| measured(s)).count();
    let results_in = |results: &BTreeMap<(i64, String), Vec<i64>>| {
        results
            .iter()
            .filter(|((c, _), _)| closes.contains(c))
            .count()
    };
    // The feed goes on meanwhile: an output is held until every partition's watermark has
    // passed it, which needs newer input on all of them.
    let drained = Instant::now();
    while (letters_in(&letters) < expected_letters || results_in(&results) < closes.len() * keys)
        && drained.elapsed() < run.drain
    {
        read(&mut letters, &mut results);
        sample_lag(&mut watermark_lag);
    }
    watermark_lag.sort_unstable();
    let histograms_after = scrape_run_histograms(&metrics);
    stop.store(true, Ordering::Relaxed);
    let fed_rate = feeder.join().expect("the feeder does not panic");

    let status = child.stop();
    assert!(
        status.success(),
        "run failed ({status}); see {}",
        log.display()
    );
    assert!(
        expected_letters > 0,
        "invalid records were sent in the measured span"
    );
    // A run that never caught up with the feed is reported as such (its latencies hold the
    // backlog, and outputs still behind it are missing from them), not failed: the
    // exactness of the outputs is checked by the bounded runs.
    let caught_up = caught_up_s.is_some();
    assert!(
        !caught_up || letters_in(&letters) == expected_letters,
        "one dead letter read per invalid record sent in the measured span, within \
         {:?} of its end: {} of {expected_letters} (last consumer error: {last_error:?}); \
         see {}",
        run.drain,
        letters_in(&letters),
        log.display()
    );
    assert!(
        !caught_up || run.windows.is_none() || !closes.is_empty(),
        "a window closed in the measured span"
    );
    for close in closes.iter().filter(|_| caught_up) {
        let got: Vec<(&String, usize)> = results
            .iter()
            .filter(|((c, _), _)| c == close)
            .map(|((_, k), reads)| (k, reads.len()))
            .collect();
        assert!(
            got.len() == keys && got.iter().all(|(_, n)| *n == 1),
            "one result per key ({keys} keys) read for the window closing at {close}, \
             within {:?} of the span's end; got {got:?} (last consumer error: \
             {last_error:?}); see {}",
            run.drain,
            log.display()
        );
    }
    let mut latencies = Latencies {
        dead_letters: letters
            .into_iter()
            .filter(|(sent, _)| measured(sent))
            .map(|(sent, read_at)| read_at - sent)
            .collect(),
        windows: results
            .into_iter()
            .filter(|((close, _), _)| closes.contains(close))
            .flat_map(|((close, _), reads)| reads.into_iter().map(move |r| r - close))
            .collect(),
        fed_rate,
        caught_up_s,
        behind_at_end,
        in_process_p99: bucket_quantile(&histograms_before[0], &histograms_after[0], 0.99)
            .map(|(le, _)| le),
        commit_p99: bucket_quantile(&histograms_before[1], &histograms_after[1], 0.99)
            .map(|(le, _)| le),
        commits: bucket_quantile(&histograms_before[1], &histograms_after[1], 0.5)
            .map_or(0.0, |(_, n)| n),
        stages: {
            let mut acked: Vec<i64> = acks
                .samples
                .lock()
                .expect("the feeder does not panic")
                .iter()
                .filter(|(sent, _)| measured(sent))
                .map(|(_, took)| *took)
                .collect();
            acked.sort_unstable();
            let sample = |q: f64| {
                (!acked.is_empty())
                    .then(|| acked[((acked.len() - 1) as f64 * q) as usize] as f64 / 1000.0)
            };
            let mut stages = vec![("ack", sample(0.5), sample(0.99))];
            for (i, stage) in STAGES.iter().enumerate() {
                let (before, after) = (&histograms_before[2 + i], &histograms_after[2 + i]);
                let bound = |q| bucket_quantile(before, after, q).map(|(le, _)| le);
                stages.push((stage, bound(0.5), bound(0.99)));
            }
            stages
        },
        watermark_lag,
    };
    latencies.dead_letters.sort_unstable();
    latencies.windows.sort_unstable();
    latencies
}

/// What a saturation run measured: rates in records per second over its measured span.
#[derive(Clone, Copy, Debug)]
pub struct Saturation {
    /// The rate the feeder was asked for.
    pub offered: f64,
    /// The rate it achieved.
    pub fed: f64,
    /// The rate the run read at.
    pub read: f64,
}

impl Saturation {
    /// Whether the run fell behind the feed (read under 98% of what was fed): then `read`
    /// is the most it sustains live here. Otherwise the feeder, sharing the machine with
    /// the run and the broker, was the limit.
    pub fn run_bound(&self) -> bool {
        self.read < 0.98 * self.fed
    }

    /// The rate feeder, broker and run sustained together: the lesser of what was fed and
    /// what was read (a run catching up with the backlog of its start-up reads faster
    /// than the feed).
    pub fn sustained(&self) -> f64 {
        self.fed.min(self.read)
    }
}

/// Runs the dataflow on a fresh live topic fed at `run.feed.rate`, meant to be more than
/// it can take, and measures the rates of the feed and of the run's reading
/// (`waterline_records_read_total`) over `run.seconds`, from 3 s after its first record
/// was read: the most the run sustains live on this machine, with the feeder and the
/// broker's produce path taking their share of it. `run.windows` and `run.drain` are not
/// used; nothing is checked of the outputs (the bounded runs do that).
pub fn saturation_run(run: &LatencyRun) -> Saturation {
    let Live {
        child,
        log,
        metrics,
        stop,
        sent,
        feeder,
        ..
    } = start_live(run);
    let read = || scrape_sum(&metrics, "waterline_records_read_total");
    let started = Instant::now();
    while read().is_none_or(|r| r == 0.0) {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "the run read nothing within {START_TIMEOUT:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let sample = || {
        let r = read().expect("the run's metrics answer");
        (Instant::now(), sent.load(Ordering::Relaxed) as f64, r)
    };
    let (t0, sent0, read0) = sample();
    std::thread::sleep(Duration::from_secs(run.seconds));
    let (t1, sent1, read1) = sample();
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder does not panic");
    let status = child.stop();
    assert!(
        status.success(),
        "run failed ({status}); see {}",
        log.display()
    );
    let secs = (t1 - t0).as_secs_f64();
    Saturation {
        offered: run.feed.rate,
        fed: (sent1 - sent0) / secs,
        read: (read1 - read0) / secs,
    }
}

/// Sends trades to `topic` at `feed.rate`, round-robin over its partitions, each with Kafka
/// timestamp = the wall clock when sent and event time too (a valid trade's up to 2 s
/// behind, as [`TradeGenerator`] makes them), until `stop`, and lists the
/// timestamps of the invalid ones in `invalid_sent`. A timestamp is taken and listed under
/// the lock, so whoever holds it at wall-clock time `t` finds every invalid record stamped
/// before `t` listed. Paced in steps of 1 ms: what is due is sent, counted in `sent_count`,
/// then it sleeps. Returns the rate achieved.
fn feed_live(
    bootstrap: &str,
    topic: &str,
    feed: &Feed,
    stop: &AtomicBool,
    sent_count: &AtomicU64,
    invalid_sent: &Mutex<Vec<i64>>,
    acks: Acks,
) -> f64 {
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Batch as a real producer would: at 0, every record was a request of its own, and
        // at a few hundred thousand records/s the feeder and the broker took the two cores
        // the run needs. Up to 5 ms of waiting to be sent is part of each latency measured.
        .set("linger.ms", "5")
        // As waterline's own clients do (src/kafka.rs).
        .set("socket.nagle.disable", "true")
        // Room for a second of the feed while the broker is slow.
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(acks)
        .expect("a producer with valid settings");
    let mut generator = TradeGenerator::new(
        GenerateArgs {
            keys: feed.keys,
            invalid: feed.invalid,
            late: 0.0,
            duplicate: 0.0,
            seed: 5,
            time_step_ms: 0,
        },
        0,
    );
    let started = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * feed.rate) as u64;
        while i < due {
            let (sent, g) = {
                let mut listed = invalid_sent.lock().expect("the bench does not panic");
                let sent = now_ms();
                let g = generator.next(sent as u64);
                if g.kind == Kind::Invalid {
                    listed.push(sent);
                }
                (sent, g)
            };
            let r = BaseRecord::<[u8], [u8]>::to(topic)
                .partition((i % feed.partitions as u64) as i32)
                .timestamp(sent)
                .payload(&g.payload);
            send_waiting(&producer, r);
            i += 1;
        }
        sent_count.store(i, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = i as f64 / started.elapsed().as_secs_f64();
    producer
        .flush(Duration::from_secs(30))
        .expect("the broker takes the feed");
    rate
}

/// Sends `record`, waiting while the producer's local queue is full: a feed offered more
/// than the broker takes slows to what it takes.
fn send_waiting<'a, C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, [u8], [u8]>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("the feeder cannot send: {e}"),
        }
    }
}
