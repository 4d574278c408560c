//! Nexmark q0, q5 and q11 against naive recomputations written here from the query
//! definitions alone (plain loops over the generated events), with 1 and 2 workers; and
//! the Kafka path (produce, then read back through the source) against the generator,
//! including topics whose end is a transaction marker or whose records were deleted.
//!
//! The Kafka tests use `$KAFKA_BOOTSTRAP`, or a broker `scripts/kafka.sh start` provides.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use timely::dataflow::StreamVec;
use timely::dataflow::operators::Input;
use timely::dataflow::operators::Inspect;
use waterline::nexmark::generator::{Generator, GeneratorConfig};
use waterline::nexmark::kafka;
use waterline::nexmark::model::Event;
use waterline::nexmark::queries::Query;
use waterline::nexmark::queries::q0::{Q0Row, q0};
use waterline::nexmark::queries::q5::{Q5Row, q5};
use waterline::nexmark::queries::q11::{Q11Row, q11};

/// Updates `(row, time, diff)` a query emitted, from all workers.
type Out<R> = Arc<Mutex<Vec<(R, u64, isize)>>>;

fn config(rate: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed: 42,
        rate,
        ..GeneratorConfig::default()
    }
}

fn events(c: &GeneratorConfig, n: u64) -> Vec<Event> {
    Generator::new(c.clone(), n).collect()
}

/// Runs `query` with `workers` workers, worker `i` feeding the events `n % workers == i`
/// at their own `date_time`; returns every update it emitted.
fn run<R, Q>(workers: usize, c: &GeneratorConfig, n: u64, query: Q) -> Vec<(R, u64, isize)>
where
    R: Clone + Debug + Send + 'static,
    Q: for<'s> Fn(StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (R, u64, isize)>
        + Send
        + Sync
        + 'static,
{
    run_events(workers, events(c, n), query)
}

/// Runs `query` over `all` (in time order) with `workers` workers, worker `i` feeding
/// the events at positions `p % workers == i`, each at its own `date_time`.
fn run_events<R, Q>(workers: usize, all: Vec<Event>, query: Q) -> Vec<(R, u64, isize)>
where
    R: Clone + Debug + Send + 'static,
    Q: for<'s> Fn(StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (R, u64, isize)>
        + Send
        + Sync
        + 'static,
{
    let out: Out<R> = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&out);
    let all = Arc::new(all);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = Arc::clone(&sink);
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<Vec<Event>>();
            query(events).inspect(move |u| sink.lock().expect("not poisoned").push(u.clone()));
            input
        });
        let share = all.iter().skip(index).step_by(peers).cloned();
        for (i, e) in share.enumerate() {
            input.advance_to(e.date_time());
            input.send(e);
            if i % 500 == 0 {
                worker.step();
            }
        }
        drop(input);
        while worker.step_or_park(None) {}
    })
    .expect("timely runs");
    Arc::try_unwrap(out)
        .expect("the workers are done")
        .into_inner()
        .expect("not poisoned")
}

/// The rows, sorted, after checking that each update is a final row (+1) emitted at or
/// after `end(row)`.
fn final_rows<R: Ord + Debug>(updates: Vec<(R, u64, isize)>, end: impl Fn(&R) -> u64) -> Vec<R> {
    let mut rows = Vec::new();
    for (row, time, diff) in updates {
        assert_eq!(diff, 1, "{row:?}: every result once, as an insertion");
        assert!(
            time >= end(&row),
            "{row:?} emitted at {time}, before its end"
        );
        rows.push(row);
    }
    rows.sort();
    rows
}

fn bids(all: &[Event]) -> impl Iterator<Item = &waterline::nexmark::model::Bid> {
    all.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn naive_q0(all: &[Event]) -> Vec<Q0Row> {
    let mut rows: Vec<Q0Row> = bids(all)
        .map(|b| Q0Row {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            date_time: b.date_time,
        })
        .collect();
    rows.sort();
    rows
}

/// Hopping windows `[s, s + size)`, `s` a multiple of `slide`: per window, the auctions
/// with the most bids.
fn naive_q5(all: &[Event], size: u64, slide: u64) -> Vec<Q5Row> {
    let mut counts: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in bids(all) {
        let mut s = b.date_time / slide * slide;
        loop {
            if b.date_time < s + size {
                *counts.entry(s).or_default().entry(b.auction).or_default() += 1;
            }
            if s < slide {
                break;
            }
            s -= slide;
            if s + size <= b.date_time {
                break;
            }
        }
    }
    let mut rows = Vec::new();
    for (start, per_auction) in counts {
        let max = per_auction.values().max().copied().unwrap_or(0);
        for (auction, num) in per_auction {
            if num == max {
                rows.push(Q5Row {
                    auction,
                    num,
                    window_start: start,
                    window_end: start + size,
                });
            }
        }
    }
    rows.sort();
    rows
}

/// Per bidder, bids sorted by time; a bid within `gap` of the session's last bid
/// (inclusive) extends it.
fn naive_q11(all: &[Event], gap: u64) -> Vec<Q11Row> {
    let mut times: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for b in bids(all) {
        times.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut rows = Vec::new();
    for (bidder, mut ts) in times {
        ts.sort();
        let (mut start, mut last, mut count) = (ts[0], ts[0], 0);
        for t in ts {
            if t > last + gap {
                rows.push(Q11Row {
                    bidder,
                    bid_count: count,
                    session_start: start,
                    session_end: last + gap,
                });
                (start, count) = (t, 0);
            }
            last = t;
            count += 1;
        }
        rows.push(Q11Row {
            bidder,
            bid_count: count,
            session_start: start,
            session_end: last + gap,
        });
    }
    rows.sort();
    rows
}

const N: u64 = 20_000;
/// 200 events/s: 100 s of event time, about 50 hopping windows, and a random bidder bids
/// every few seconds, so sessions both merge and split; 2000/s: 10 s, dense windows.
const RATES: [u64; 2] = [200, 2_000];

#[test]
fn q0_passes_every_bid_through() {
    let c = config(RATES[0]);
    let expected = naive_q0(&events(&c, N));
    assert_eq!(expected.len() as u64, N / 50 * 46);
    for workers in [1, 2] {
        let got = final_rows(run(workers, &c, N, q0), |r| r.date_time);
        assert_eq!(got, expected, "q0 with {workers} workers");
    }
}

#[test]
fn q5_matches_a_naive_recomputation() {
    for rate in RATES {
        let c = config(rate);
        let all = events(&c, N);
        let expected = naive_q5(&all, 10_000, 2_000);
        // The input is one that tells window bounds apart.
        assert_ne!(expected, naive_q5(&all, 10_001, 2_000));
        assert_ne!(expected, naive_q5(&all, 10_000, 2_500));
        assert!(expected.len() > 5, "{} rows", expected.len());
        for workers in [1, 2] {
            let got = final_rows(run(workers, &c, N, q5), |r| r.window_end);
            assert_eq!(got, expected, "q5 at {rate}/s with {workers} workers");
        }
    }
}

#[test]
fn q11_matches_a_naive_recomputation() {
    for rate in RATES {
        let c = config(rate);
        let all = events(&c, N);
        let expected = naive_q11(&all, 10_000);
        assert_ne!(expected, naive_q11(&all, 9_999));
        let multi = expected.iter().filter(|r| r.bid_count > 1).count();
        assert!(
            multi > 10 && multi < expected.len(),
            "{multi} of {}",
            expected.len()
        );
        for workers in [1, 2] {
            let got = final_rows(run(workers, &c, N, q11), |r| r.session_end);
            assert_eq!(got, expected, "q11 at {rate}/s with {workers} workers");
        }
    }
}

fn bid(bidder: u64, auction: u64, date_time: u64) -> Event {
    Event::Bid(waterline::nexmark::model::Bid {
        auction,
        bidder,
        price: 1,
        channel: String::new(),
        url: String::new(),
        date_time,
        extra: String::new(),
    })
}

/// Edge cases a generated input may miss: a bid exactly one gap after the last one
/// extends the session, one a millisecond later starts a new one; a bid at a window's
/// end belongs to the next windows only.
#[test]
fn session_and_window_bounds_are_exact() {
    let at = |t: u64| 1_000_000 + t;
    let mut input = vec![
        bid(1, 7, at(0)),
        bid(2, 8, at(5)),
        bid(1, 7, at(10_000)),
        bid(1, 7, at(20_001)),
        bid(2, 9, at(9_999)),
        bid(1, 9, at(30_001)),
    ];
    input.sort_by_key(Event::date_time);
    let row = |bidder, bid_count, start, last| Q11Row {
        bidder,
        bid_count,
        session_start: at(start),
        session_end: at(last) + 10_000,
    };
    let expected = vec![
        row(1, 2, 0, 10_000),
        row(1, 2, 20_001, 30_001),
        row(2, 2, 5, 9_999),
    ];
    assert_eq!(naive_q11(&input, 10_000), expected);
    for workers in [1, 2] {
        let got = final_rows(run_events(workers, input.clone(), q11), |r| r.session_end);
        assert_eq!(got, expected, "q11 with {workers} workers");
    }
    let q5_expected = naive_q5(&input, 10_000, 2_000);
    let in_window = |start: u64| {
        q5_expected
            .iter()
            .filter(|r| r.window_start == start)
            .map(|r| (r.auction, r.num))
            .collect::<Vec<_>>()
    };
    // [1 000 000, 1 010 000) holds bids at +0, +5, +9 999 (auctions 7, 8, 9 once each);
    // the bid at +10 000 is in the window starting at +2 000, not in this one.
    assert_eq!(in_window(at(0)), vec![(7, 1), (8, 1), (9, 1)]);
    assert_eq!(in_window(at(2_000)), vec![(7, 1), (9, 1)]);
    for workers in [1, 2] {
        let got = final_rows(run_events(workers, input.clone(), q5), |r| r.window_end);
        assert_eq!(got, q5_expected, "q5 with {workers} workers");
    }
}

/// Produced into Kafka and read back by two workers: the generator's events, each at a
/// timestamp at or after its `date_time`; q5 over the topic matches the recomputation.
#[test]
fn events_round_trip_through_kafka() {
    let bootstrap = common::kafka::bootstrap();
    let topic = common::kafka::unique("nexmark");
    let c = config(RATES[0]);
    let n = 10_000;
    kafka::produce(bootstrap, &topic, 3, &c, n).expect("produce");
    let read: Out<Event> = Arc::new(Mutex::new(Vec::new()));
    let q5_out: Out<Q5Row> = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(kafka::SourceCounts::default());
    {
        let (read, q5_out, counts) = (read.clone(), q5_out.clone(), counts.clone());
        let (bootstrap, topic) = (bootstrap.to_string(), topic.clone());
        timely::execute(timely::Config::process(2), move |worker| {
            let reader =
                kafka::TopicReader::open(&bootstrap, &topic, worker.index(), worker.peers(), 0)
                    .expect("open");
            let (read, q5_out, counts) = (read.clone(), q5_out.clone(), counts.clone());
            worker.dataflow::<u64, _, _>(move |scope| {
                let events = kafka::topic_source(scope, reader, counts);
                let events = events.inspect_core(move |batch| {
                    if let Ok((stamp, events)) = batch {
                        let t = *stamp.least().expect("data under a capability");
                        let mut read = read.lock().expect("not poisoned");
                        for e in events {
                            assert!(t >= e.date_time(), "{e:?} at {t}");
                            read.push((e.clone(), t, 1));
                        }
                    }
                });
                q5(events).inspect(move |u| q5_out.lock().expect("not poisoned").push(u.clone()));
            });
            while worker.step_or_park(None) {}
        })
        .expect("timely runs");
    }
    let mut got: Vec<Event> = read
        .lock()
        .expect("not poisoned")
        .drain(..)
        .map(|(e, _, _)| e)
        .collect();
    got.sort();
    let mut expected = events(&c, n);
    expected.sort();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the events read are the events produced");
    assert_eq!(counts.records.load(std::sync::atomic::Ordering::Relaxed), n);
    assert_eq!(
        counts
            .decode_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let q5_rows = final_rows(
        q5_out.lock().expect("not poisoned").drain(..).collect(),
        |r| r.window_end,
    );
    assert_eq!(q5_rows, naive_q5(&events(&c, n), 10_000, 2_000));
}

/// Runs `f` on a thread and returns what it returns, failing the test if it takes longer
/// than a minute: a read that never finishes is a hang, not a slow test.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the test already failed on the timeout.
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within 60 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// What [`q0_over_topic`] saw: q0's updates and the number of records the source read.
type Q0Run = Result<(Vec<(Q0Row, u64, isize)>, u64), kafka::SourceError>;

/// Reads `topic` with `workers` workers through the source into q0, like
/// `run::from_topic` but keeping the rows. `between(worker)` runs on every worker once
/// all have opened their readers (their end offsets are fixed) and before any has
/// fetched.
fn q0_over_topic(
    topic: &str,
    workers: usize,
    between: impl Fn(usize) + Send + Sync + 'static,
) -> Q0Run {
    let out: Out<Q0Row> = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(kafka::SourceCounts::default());
    {
        let (out, counts) = (out.clone(), counts.clone());
        let (bootstrap, topic) = (common::kafka::bootstrap().to_string(), topic.to_string());
        let (opened, ready) = (
            Arc::new(Barrier::new(workers)),
            Arc::new(Barrier::new(workers)),
        );
        timely::execute(timely::Config::process(workers), move |worker| {
            let reader =
                kafka::TopicReader::open(&bootstrap, &topic, worker.index(), worker.peers(), 0)
                    .expect("open");
            opened.wait();
            between(worker.index());
            ready.wait();
            let (out, counts) = (out.clone(), counts.clone());
            worker.dataflow::<u64, _, _>(move |scope| {
                q0(kafka::topic_source(scope, reader, counts))
                    .inspect(move |u| out.lock().expect("not poisoned").push(u.clone()));
            });
            while worker.step_or_park(None) {}
        })
        .expect("timely runs");
    }
    if let Some(e) = counts.error() {
        return Err(e.clone());
    }
    let updates = std::mem::take(&mut *out.lock().expect("not poisoned"));
    Ok((updates, counts.records.load(Ordering::Relaxed)))
}

/// A record to write: (partition, key, event).
type Placed = (i32, u64, Event);

/// Writes records into `topic` in transactions, each committed or aborted as its flag
/// says, encoded as `kafka::produce` encodes.
fn write_transactions(topic: &str, transactions: &[(Vec<Placed>, bool)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka::bootstrap())
        .set("transactional.id", format!("{topic}-writer"))
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");
    for (records, commit) in transactions {
        producer.begin_transaction().expect("begin_transaction");
        for (partition, key, event) in records {
            let payload = serde_json::to_vec(event).expect("an Event serializes");
            let key = key.to_be_bytes();
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(*partition)
                .key(&key[..])
                .payload(&payload[..])
                .timestamp(event.date_time() as i64);
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(timeout).expect("flush");
        if *commit {
            producer.commit_transaction(timeout).expect("commit");
        } else {
            producer.abort_transaction(timeout).expect("abort");
        }
    }
}

/// A topic whose partitions end on a transaction commit marker (an offset that is no
/// record), with an aborted transaction before it: the read ends, holds exactly the
/// committed events, and q0 over it matches the recomputation, through the source and
/// through `run::from_topic`.
#[test]
fn a_read_ends_on_a_transaction_marker() {
    let topic = common::kafka::unique("nexmark-txn");
    common::kafka::create_topic(&topic, 2);
    let c = config(RATES[1]);
    let n = 2_000u64;
    let all = events(&c, n);
    let record = |i: u64, e: &Event| ((i % 2) as i32, i, e.clone());
    let first: Vec<_> = (0..n / 2).map(|i| record(i, &all[i as usize])).collect();
    let last: Vec<_> = (n / 2..n).map(|i| record(i, &all[i as usize])).collect();
    // Bids no committed event has: were they read, q0 would pass them through.
    let t = all[(n / 2) as usize].date_time();
    let aborted: Vec<_> = (0..10)
        .map(|i| record(n + i, &bid(u64::MAX - i, 1, t)))
        .collect();
    write_transactions(&topic, &[(first, true), (aborted, false), (last, true)]);
    common::kafka::wait_until_stable(&topic, 2);
    let expected = naive_q0(&all);

    let t = topic.clone();
    let (updates, records) = within_a_minute("reading a topic that ends on a marker", move || {
        q0_over_topic(&t, 2, |_| {})
    })
    .expect("the read reaches the end");
    assert_eq!(records, n, "the committed records, and only those");
    assert_eq!(final_rows(updates, |r| r.date_time), expected);

    let bootstrap = common::kafka::bootstrap();
    let report = within_a_minute(
        "run::from_topic over a topic that ends on a marker",
        move || waterline::nexmark::run::from_topic(Query::Q0, 2, bootstrap, &topic, 0),
    )
    .expect("the run succeeds");
    assert_eq!(report.events, n);
    assert_eq!(report.results, expected.len() as i64);
}

/// Records written after the read fixed its end offsets are not its input: it holds
/// exactly the events written before.
#[test]
fn records_written_after_the_read_started_are_not_read() {
    let topic = common::kafka::unique("nexmark-growing");
    let c = config(RATES[0]);
    let n = 1_000;
    kafka::produce(common::kafka::bootstrap(), &topic, 2, &c, n).expect("produce");
    let t = topic.clone();
    let (updates, records) = within_a_minute("reading a topic still being written", move || {
        let writing = t.clone();
        q0_over_topic(&t, 2, move |worker| {
            if worker == 0 {
                let later = GeneratorConfig {
                    seed: 7,
                    ..config(RATES[0])
                };
                kafka::produce(common::kafka::bootstrap(), &writing, 2, &later, 500)
                    .expect("produce more");
            }
        })
    })
    .expect("the read reaches the end");
    assert_eq!(records, n);
    assert_eq!(
        final_rows(updates, |r| r.date_time),
        naive_q0(&events(&c, n))
    );
}

/// Records of a partition deleted after the read fixed its offsets and before it fetched
/// them: the read cannot reach its end, and ends with an error that names the topic, the
/// partition and the first offset it lacks, instead of waiting for them.
#[test]
fn records_deleted_before_they_are_read_end_the_read_with_an_error() {
    let topic = common::kafka::unique("nexmark-deleted");
    let c = config(RATES[0]);
    kafka::produce(common::kafka::bootstrap(), &topic, 2, &c, 1_000).expect("produce");
    let t = topic.clone();
    let result = within_a_minute("reading a topic whose records were deleted", move || {
        let deleting = t.clone();
        q0_over_topic(&t, 2, move |worker| {
            if worker == 0 {
                common::kafka::delete_records(&deleting, 1, 100);
            }
        })
    });
    let e = result.expect_err("the read fails");
    match &e {
        kafka::SourceError::RecordsGone {
            topic: t,
            partition,
            offset,
            log_start,
        } => assert_eq!((t, *partition, *offset, *log_start), (&topic, 1, 0, 100)),
        other => panic!("not the deleted records: {other}"),
    }
    let message = e.to_string();
    for part in [topic.as_str(), "partition 1", "offset 0"] {
        assert!(message.contains(part), "{part} in {message}");
    }
}

fn waterline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn the_cli_runs_a_query_and_names_bad_flags() {
    let out = waterline(&[
        "nexmark", "run", "--query", "q5", "--events", "50000", "-w", "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The recomputation says how many rows.
    let expected = naive_q5(&events(&GeneratorConfig::default(), 50_000), 10_000, 2_000);
    assert!(stdout.contains("events: 50000\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("results: {}", expected.len())),
        "{stdout}"
    );
    for line in [
        "seconds: ",
        "events/s: ",
        "cpu seconds: ",
        "events per cpu-second: ",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    for (args, flag) in [
        (
            &["nexmark", "run", "--query", "q9", "--events", "10"][..],
            "--query",
        ),
        (
            &["nexmark", "run", "--query", "q5", "--events", "ten"][..],
            "--events",
        ),
        (
            &[
                "nexmark", "run", "--query", "q5", "--events", "10", "--rate", "0",
            ][..],
            "--rate",
        ),
        (
            &[
                "nexmark", "run", "--query", "q5", "--events", "10", "-w", "0",
            ][..],
            "--workers",
        ),
        (
            &[
                "nexmark",
                "generate",
                "--topic",
                "t",
                "--events",
                "1",
                "--partitions",
                "0",
            ][..],
            "--partitions",
        ),
    ] {
        let out = waterline(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
    }
}
