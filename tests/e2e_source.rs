//! The Kafka source on the real broker: when it counts as caught up with its input.
//!
//! A run is live while its source caught up within the last second (`sink::Prompt`), and
//! only then are final window results committed at once. Fetches held for `fetch.min.bytes`
//! almost never come back empty under a steady feed, so librdkafka's end-of-partition
//! notice alone would leave such a run never live. The reader also counts a partition as
//! caught up when the consumer's statistics show its fetcher at the end of the log; this
//! test checks both sides of that: not while far behind, and yes while keeping up with a
//! feed whose fetches are never empty.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::kafka::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use waterline::config::Config;
use waterline::progress::Position;
use waterline::source::kafka::KafkaReader;
use waterline::source::{Polled, Reader};

/// Records already in the topic when the reader starts: far more than librdkafka
/// prefetches (`queued.min.messages`, 10,000), so the fetcher cannot reach the end while
/// the test reads slowly.
const BACKLOG: usize = 200_000;

/// What one call of [`Reader::poll`] handed over.
#[derive(Default)]
struct Polls {
    records: usize,
    caught_up: usize,
}

fn poll(reader: &mut KafkaReader, max: usize) -> Polls {
    let mut polls = Polls::default();
    reader.poll(max, &mut |p| match p {
        Polled::Record(_) => polls.records += 1,
        Polled::CaughtUp(_) => polls.caught_up += 1,
        Polled::End(p) => panic!("an unbounded partition {p} reported its end"),
    });
    polls
}

#[test]
fn a_reader_that_keeps_up_is_caught_up_though_no_fetch_comes_back_empty() {
    let topic = unique("caught-up");
    create_topic(&topic, 1);
    let record = |i: usize| -> KeyValue { (None, Some(format!("{i:0>100}").into_bytes())) };
    produce(&topic, &[(0..BACKLOG).map(record).collect()]);

    // A steady feed, as a transactional producer writes it: one record every 10 ms, five
    // to a transaction, so the log also holds commit markers, which the reader's position
    // must step over. Every fetch waits 100 ms for 10 MB; each answer then carries about
    // ten records, and none is empty.
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let feeding = feeding.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("transactional.id", unique("caught-up-feeder"))
                .set("linger.ms", "0")
                .create()
                .expect("the feeder's producer");
            let timeout = Duration::from_secs(30);
            producer
                .init_transactions(timeout)
                .expect("the feeder's transactions");
            let mut i = BACKLOG;
            while feeding.load(Ordering::Relaxed) {
                producer.begin_transaction().expect("a transaction begins");
                for _ in 0..5 {
                    let value = record(i).1.expect("a value");
                    producer
                        .send(BaseRecord::<(), _>::to(&topic).partition(0).payload(&value))
                        .map_err(|(e, _)| e)
                        .expect("the feeder sends");
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                producer
                    .commit_transaction(timeout)
                    .expect("a transaction commits");
            }
        })
    };

    let mut config = Config {
        bootstrap_servers: bootstrap().to_string(),
        app_id: unique("caught-up-app"),
        ..Config::default()
    };
    config
        .kafka_properties
        .insert("fetch.min.bytes", "10000000");
    config.kafka_properties.insert("fetch.wait.max.ms", "100");
    let start = Position {
        partition: 0,
        offset: 0,
        max_seen: None,
        watermark: 0,
    };
    let mut reader =
        KafkaReader::new(&config, &topic, &[start], None, 0, None).expect("the reader starts");

    // Far behind: reading 100 records every 10 ms, the reader stays over 150,000 records
    // behind for 2 s, and its fetcher stops at what it may prefetch.
    let behind = Instant::now();
    let mut read = 0;
    let mut caught_up_behind = 0;
    while behind.elapsed() < Duration::from_secs(2) {
        let polls = poll(&mut reader, 100);
        read += polls.records;
        caught_up_behind += polls.caught_up;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        read < BACKLOG - 150_000,
        "the test read slowly enough to stay behind ({read} records in 2 s)"
    );
    assert_eq!(
        caught_up_behind,
        0,
        "a reader {} records behind never counts as caught up",
        BACKLOG - read
    );

    // Catch up, then keep up with the feed for 3 s.
    let catching_up = Instant::now();
    while read < BACKLOG {
        assert!(
            catching_up.elapsed() < Duration::from_secs(60),
            "the backlog was read ({read} of {BACKLOG})"
        );
        read += poll(&mut reader, 10_000).records;
    }
    let keeping_up = Instant::now();
    let (mut fed, mut caught_up) = (0, 0);
    while keeping_up.elapsed() < Duration::from_secs(3) {
        let polls = poll(&mut reader, 10_000);
        fed += polls.records;
        caught_up += polls.caught_up;
        std::thread::sleep(Duration::from_millis(5));
    }
    feeding.store(false, Ordering::Relaxed);
    feeder.join().expect("the feeder ran");
    assert!(
        fed >= 100,
        "the feed went on while the reader kept up ({fed} records)"
    );
    // Statistics come four times a second; the run counts as live while one came within
    // the last second.
    assert!(
        caught_up >= 4,
        "a reader keeping up counts as caught up several times in 3 s, though its fetches \
         are held for 10 MB ({caught_up} times)"
    );
}
