//! Running a Nexmark query to the end of its input, measured: behind
//! `waterline nexmark run` and `benches/nexmark.rs`.
//!
//! In process: the events are generated before the clock starts, split by event number
//! (`n % W` to worker `n`), and each worker hands its share to the dataflow in order, each
//! event at its `date_time`. From Kafka: each worker reads its partitions through
//! [`super::kafka::topic_source`] to the end offsets they had at start. Either way the
//! report holds wall seconds, process CPU seconds (every thread, librdkafka's included)
//! and the number of result rows.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Input;
use timely::dataflow::operators::generic::Operator;

use super::generator::{Generator, GeneratorConfig};
use super::kafka::{SourceCounts, TopicReader, topic_source};
use super::model::Event;
use super::queries::{self, Query};

/// What a run did and what it cost.
#[derive(Clone, Debug)]
pub struct Report {
    /// The query.
    pub query: Query,
    /// Events read.
    pub events: u64,
    /// Wall-clock seconds, from the first event handed in to the last result.
    pub seconds: f64,
    /// CPU seconds of the whole process over the same span.
    pub cpu_seconds: f64,
    /// Result rows (the sum of the result diffs).
    pub results: i64,
    /// Records that did not decode (Kafka runs).
    pub decode_errors: u64,
}

impl Report {
    /// Events per wall second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Events per CPU second: throughput per core.
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "query: {}", self.query)?;
        writeln!(f, "events: {}", self.events)?;
        writeln!(f, "seconds: {:.3}", self.seconds)?;
        writeln!(f, "events/s: {:.0}", self.events_per_second())?;
        writeln!(f, "cpu seconds: {:.3}", self.cpu_seconds)?;
        writeln!(
            f,
            "events per cpu-second: {:.0}",
            self.events_per_cpu_second()
        )?;
        if self.decode_errors > 0 {
            writeln!(f, "decode errors: {}", self.decode_errors)?;
        }
        write!(f, "results: {}", self.results)
    }
}

/// User + system CPU seconds of this process so far (Linux: `/proc/self/stat`).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (in parentheses, may hold spaces): state is field 3;
    // utime and stime are fields 14 and 15, in clock ticks.
    let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / rustix::param::clock_ticks_per_second() as f64
}

/// Generates events `0..n`, split into `workers` shares by event number.
pub fn generate_shares(config: &GeneratorConfig, n: u64, workers: usize) -> Vec<Vec<Event>> {
    let w = workers.max(1) as u64;
    (0..w)
        .map(|i| Generator::partition(config.clone(), n, i, w).collect())
        .collect()
}

/// Runs `query` over the given shares, one worker per share, timing only the
/// processing.
pub fn in_process(query: Query, shares: Vec<Vec<Event>>) -> Result<Report, anyhow::Error> {
    let workers = shares.len().max(1);
    let events: u64 = shares.iter().map(|s| s.len() as u64).sum();
    let shares = Arc::new(Mutex::new(shares.into_iter().map(Some).collect::<Vec<_>>()));
    let results = Arc::new(AtomicI64::new(0));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    {
        let results = Arc::clone(&results);
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let share = shares
                .lock()
                .expect("no worker panicked holding the shares")
                .get_mut(worker.index())
                .and_then(Option::take)
                .unwrap_or_default();
            let count = Rc::new(Cell::new(0i64));
            let built = worker.dataflow::<u64, _, _>(|scope| {
                let (input, events) = scope.new_input::<Vec<Event>>();
                let diffs = queries::diffs(query, events)?;
                count_into(diffs, Rc::clone(&count));
                Ok::<_, queries::NotBuilt>(input)
            });
            let mut input = built.map_err(|e| e.to_string())?;
            for (i, e) in share.into_iter().enumerate() {
                let t = e.date_time();
                if *input.time() < t {
                    input.advance_to(t);
                }
                input.send(e);
                if i % 8192 == 8191 {
                    worker.step();
                }
            }
            drop(input);
            while worker.step_or_park(None) {}
            results.fetch_add(count.get(), Ordering::Relaxed);
            Ok::<(), String>(())
        })
        .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
        for r in guards.join() {
            r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(Report {
        query,
        events,
        seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu0,
        results: results.load(Ordering::Relaxed),
        decode_errors: 0,
    })
}

/// Runs `query` with `workers` workers over `topic`, read to the end offsets it has at
/// start; `bound_ms` is the watermark's out-of-orderness bound. Records the read cannot
/// reach (deleted or truncated before they were read) are an error naming the partition
/// and offset: the run ends with it instead of waiting for them.
pub fn from_topic(
    query: Query,
    workers: usize,
    bootstrap: &str,
    topic: &str,
    bound_ms: u64,
) -> Result<Report, anyhow::Error> {
    let counts = Arc::new(SourceCounts::default());
    let results = Arc::new(AtomicI64::new(0));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    {
        let (counts, results) = (Arc::clone(&counts), Arc::clone(&results));
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let guards = timely::execute(timely::Config::process(workers.max(1)), move |worker| {
            let reader =
                TopicReader::open(&bootstrap, &topic, worker.index(), worker.peers(), bound_ms)
                    .map_err(|e| e.to_string())?;
            let count = Rc::new(Cell::new(0i64));
            let counts = Arc::clone(&counts);
            worker
                .dataflow::<u64, _, _>(|scope| {
                    let events = topic_source(scope, reader, counts);
                    let diffs = queries::diffs(query, events)?;
                    count_into(diffs, Rc::clone(&count));
                    Ok::<_, queries::NotBuilt>(())
                })
                .map_err(|e| e.to_string())?;
            while worker.step_or_park(None) {}
            results.fetch_add(count.get(), Ordering::Relaxed);
            Ok::<(), String>(())
        })
        .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
        for r in guards.join() {
            r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    if let Some(e) = counts.error() {
        // The sources ended early: the results are of part of the input.
        return Err(e.clone().into());
    }
    Ok(Report {
        query,
        events: counts.records.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu0,
        results: results.load(Ordering::Relaxed),
        decode_errors: counts.decode_errors.load(Ordering::Relaxed),
    })
}

/// Sums the diffs of `diffs` into `count`.
fn count_into<'s>(diffs: timely::dataflow::StreamVec<'s, u64, isize>, count: Rc<Cell<i64>>) {
    diffs.sink(Pipeline, "CountResults", move |(input, _frontier)| {
        input.for_each(|_cap, batch| {
            count.set(count.get() + batch.iter().map(|d| *d as i64).sum::<i64>());
        });
    });
}
