//! Memory over time: `waterline run` (the release binary, exactly-once, 2 workers) on a
//! live topic fed at a steady rate, with a tumbling, a hopping and a session window
//! (`benches/dataflows/all_windows.toml`), its resident set size sampled every 10 s.
//!
//! The feed is `waterline produce` at 5,000 trades/s over 1,000 symbols, event time = wall
//! clock (each trade up to 2 s behind it), into a fresh 4-partition topic that keeps 2
//! minutes of data. State is per (key, open window), so once the first windows have closed
//! (about a minute in) the RSS should stop growing; the verdict gives the spread and the
//! least-squares slope of the samples after the first minute. Memory figures never fail the
//! benchmark; a run that dies or reads nothing does.
//!
//! The table also shows the anonymous part of the RSS (`RssAnon`: heap and stacks), which
//! leaves out pages of the binary and libraries mapped in as code paths are first used.
//! Records read come from the offsets the run commits for lag tools (about every second),
//! lag from the input's high watermarks.
//!
//! ```text
//! cargo bench --bench memory                                   # 10 minutes
//! WATERLINE_BENCH_MEMORY_SECS=120 WATERLINE_BENCH_RATE=2000 cargo bench --bench memory
//! ```
//!
//! Uses `$KAFKA_BOOTSTRAP`, or starts a broker with `scripts/kafka.sh`. The topics it
//! creates are deleted at the end.

mod common;

use common::{bootstrap, env_number, status_kib};
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One RSS sample.
struct Sample {
    elapsed_s: f64,
    rss_mib: f64,
    anon_mib: f64,
    read: Option<i64>,
    lag: Option<i64>,
}

fn main() {
    let seconds = env_number("WATERLINE_BENCH_MEMORY_SECS", 600).max(20);
    let rate = env_number("WATERLINE_BENCH_RATE", 5_000).max(1);
    let bootstrap = bootstrap();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis();
    let topic = format!("bench-memory-{stamp}");
    let app_id = format!("{topic}-app");
    let dir = std::env::temp_dir().join(format!("waterline-bench-{stamp}"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // The input keeps 2 minutes in small segments, so the broker holds ~2 minutes of
    // trades rather than the whole run (retention acts on closed segments). The run's own
    // topics are made here too, and waited for: a busy broker can take seconds to show a
    // new topic in its metadata, longer than `waterline run` looks for it.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let outputs = [
        format!("{topic}-windows"),
        format!("{topic}-dlq"),
        format!("{topic}-late"),
    ];
    let progress_topic = format!("{app_id}.progress");
    let output_config: &[(&str, &str)] = &[("max.message.bytes", "16777216")];
    let mut topics: Vec<common::NewTopicSpec> = vec![(
        &topic,
        PARTITIONS,
        &[
            ("retention.ms", "120000"),
            ("segment.bytes", "8388608"),
            ("segment.ms", "60000"),
        ],
    )];
    topics.extend(
        outputs
            .iter()
            .map(|name| (name.as_str(), PARTITIONS, output_config)),
    );
    topics.push((&progress_topic, 1, &[("cleanup.policy", "compact")]));
    common::create_topics(&bootstrap, &topics);

    let dataflow = dir.join("all_windows.toml");
    let text = include_str!("dataflows/all_windows.toml")
        .replace("\"bench-trades\"", &format!("\"{topic}\""))
        .replace("bench-trades-windows", &format!("{topic}-windows"))
        .replace("bench-trades-dead-letters", &format!("{topic}-dlq"))
        .replace("bench-trades-late", &format!("{topic}-late"));
    std::fs::write(&dataflow, text).expect("write dataflow");
    let config = dir.join("exactly-once.toml");
    std::fs::write(
        &config,
        "[processing]\nguarantee = \"exactly-once\"\ncommit_interval = \"100ms\"\n[log]\nlevel = \"warn\"\n",
    )
    .expect("write config");

    println!(
        "memory: {rate} trades/s (1,000 symbols, event time = wall clock) for {seconds} s, \
         {PARTITIONS} partitions, `waterline run` exactly-once, 2 workers, \
         tumbling 1m + hopping 1m/10s + session gap 1s (max 1m); Kafka at {bootstrap}"
    );

    // The feed runs a little longer than the sampling, so the input never stops early.
    let mut feed = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args([
            "produce", "--topic", &topic, "--keys", "1000", "--seed", "7",
        ])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &format!("{}s", seconds + 30)])
        .env("KAFKA_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("produce.log")).expect("log file"))
        .spawn()
        .expect("produce starts");
    let run_log = dir.join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(["run", "--dataflow", dataflow.to_str().expect("utf-8 path")])
        .args(["--config", config.to_str().expect("utf-8 path"), "-w", "2"])
        .env("KAFKA_BOOTSTRAP", &bootstrap)
        .env("WATERLINE_APP_ID", &app_id)
        .env("WATERLINE__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_log).expect("log file"))
        .spawn()
        .expect("run starts");
    let started = Instant::now();

    // Reads the run's lag-tool offsets (its consumer group is the app id) without joining
    // the group.
    let offsets: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &app_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets consumer");
    let progress = |offsets: &BaseConsumer| -> (Option<i64>, Option<i64>) {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let read = offsets
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()
            .map(|c| {
                c.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum::<i64>()
            });
        let high: Option<i64> = (0..PARTITIONS)
            .map(|p| {
                offsets
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .ok()
                    .map(|(_, h)| h)
            })
            .sum();
        (read, high.zip(read).map(|(h, r)| h - r))
    };

    println!(
        "{:>9} {:>9} {:>10} {:>10} {:>13} {:>9}",
        "elapsed", "RSS MiB", "×1st min", "anon MiB", "records read", "lag"
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut base: Option<f64> = None;
    let mut next = started + SAMPLE_EVERY;
    let end = started + Duration::from_secs(seconds);
    while next <= end {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += SAMPLE_EVERY;
        if let Some(status) = run.try_wait().expect("wait on the run") {
            stop(&mut feed);
            cleanup(&admin, &topic, &app_id);
            panic!(
                "`waterline run` exited with {status} after {:.0} s:\n{}",
                started.elapsed().as_secs_f64(),
                tail(&run_log)
            );
        }
        let mib = |field| status_kib(run.id(), field).map(|k| k as f64 / 1024.0);
        let (Some(rss_mib), Some(anon_mib)) = (mib("VmRSS:"), mib("RssAnon:")) else {
            continue;
        };
        let elapsed_s = started.elapsed().as_secs_f64();
        let (read, lag) = progress(&offsets);
        if base.is_none() && elapsed_s >= 59.0 {
            base = Some(rss_mib);
        }
        let ratio = base.map_or_else(|| "-".to_string(), |b| format!("{:.2}", rss_mib / b));
        let show = |v: Option<i64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        println!(
            "{:>8.0}s {rss_mib:>9.1} {ratio:>10} {anon_mib:>10.1} {:>13} {:>9}",
            elapsed_s,
            show(read),
            show(lag)
        );
        samples.push(Sample {
            elapsed_s,
            rss_mib,
            anon_mib,
            read,
            lag,
        });
    }
    let final_read = samples.last().and_then(|s| s.read).unwrap_or(0);
    let final_lag = samples.last().and_then(|s| s.lag);
    stop(&mut run);
    stop(&mut feed);
    cleanup(&admin, &topic, &app_id);
    assert!(
        final_read > 0,
        "the run committed no input offsets in {seconds} s:\n{}",
        tail(&run_log)
    );

    // Minutes 2..: the samples after the first minute, when every window kind has closed
    // windows and freed their state at least once.
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.elapsed_s >= 59.0).collect();
    if steady.len() < 2 {
        println!("verdict: too short for a verdict (fewer than 2 samples after the first minute)");
        return;
    }
    let rss: Vec<(f64, f64)> = steady.iter().map(|s| (s.elapsed_s, s.rss_mib)).collect();
    let anon: Vec<(f64, f64)> = steady.iter().map(|s| (s.elapsed_s, s.anon_mib)).collect();
    let (min, max, slope) = spread_and_slope(&rss);
    let (anon_min, anon_max, anon_slope) = spread_and_slope(&anon);
    println!(
        "verdict: after the first minute RSS {min:.1}..{max:.1} MiB (max/min {:.2}), \
         slope {slope:+.2} MiB/min (least squares over {} samples); anonymous (heap) \
         {anon_min:.1}..{anon_max:.1} MiB, slope {anon_slope:+.2} MiB/min; \
         {final_read} records read, final lag {}",
        max / min,
        steady.len(),
        final_lag.map_or_else(|| "?".to_string(), |l| l.to_string())
    );
}

/// Least and greatest value of `(seconds, MiB)` samples, and the least-squares slope in
/// MiB per minute.
fn spread_and_slope(samples: &[(f64, f64)]) -> (f64, f64, f64) {
    let max = samples.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let min = samples.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.0 / 60.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 / 60.0 - mx) * (s.1 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 / 60.0 - mx).powi(2)).sum();
    (min, max, sxy / sxx)
}

/// Stops a child with SIGTERM (the run then finishes its transaction), waiting up to 30 s
/// before killing it.
fn stop(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Deletes the topics this benchmark made, so the shared broker does not keep them.
fn cleanup(admin: &AdminClient<DefaultClientContext>, topic: &str, app_id: &str) {
    let names = [
        topic.to_string(),
        format!("{topic}-windows"),
        format!("{topic}-dlq"),
        format!("{topic}-late"),
        format!("{app_id}.progress"),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Err(e) = futures_executor::block_on(admin.delete_topics(&names, &AdminOptions::new())) {
        eprintln!("could not delete the benchmark's topics {names:?}: {e}");
    }
}

/// The last 4 KiB of a log file.
fn tail(path: &std::path::Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("({} is unreadable)", path.display());
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
