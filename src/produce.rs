//! `waterline produce`: a load generator (or file sender) for a Kafka topic.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::cli::{EventKind, ProduceArgs};
use crate::config::Config;
use crate::generate::{Generated, Kind, TradeGenerator, WebGenerator};
use crate::kafka::{self, TopicRequest};
use crate::output::murmur2;

/// Counts of what was sent.
#[derive(Debug, Default)]
pub struct Sent {
    /// All records.
    pub total: u64,
    /// Invalid ones.
    pub invalid: u64,
    /// Late ones.
    pub late: u64,
    /// Duplicates.
    pub duplicate: u64,
}

/// Runs the generator (or sends the file) until the count or duration is reached, or
/// `stop` is set. `sent_so_far` counts records as they are handed to the producer (for a
/// progress display).
pub fn produce(
    args: &ProduceArgs,
    config: &Config,
    stop: &std::sync::atomic::AtomicBool,
    sent_so_far: &AtomicU64,
) -> anyhow::Result<Sent> {
    if args.file.is_none() && args.rate <= 0.0 && args.count.is_none() && args.duration.is_none() {
        anyhow::bail!(
            "--rate 0 (as fast as possible) needs --count or --duration to say when to stop"
        );
    }
    kafka::ensure_topics(
        config,
        &[TopicRequest {
            name: &args.topic,
            partitions: args.partitions,
            config: vec![],
        }],
    )?;
    let probe = kafka::metadata_consumer(config)?;
    // A topic just created can take a moment to appear in the metadata.
    let timeout = Duration::from_secs(30);
    let partitions = kafka::partition_count_after_create(&probe, &args.topic, timeout, timeout)?
        .ok_or_else(|| anyhow::anyhow!("topic `{}` does not exist", args.topic))?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka::client_config(config)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut sent = Sent::default();
    let send = |sent: &mut Sent, key: Option<&[u8]>, payload: &[u8]| -> anyhow::Result<()> {
        send_one(&producer, &args.topic, partitions, sent.total, key, payload)?;
        sent.total += 1;
        sent_so_far.store(sent.total, Ordering::Relaxed);
        Ok(())
    };

    if let Some(path) = &args.file {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for line in std::io::BufReader::new(file).split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            send(&mut sent, None, &line)?;
        }
    } else {
        let start = crate::source::now_ms();
        let mut generator: Box<dyn FnMut(u64) -> Generated> = match args.kind {
            EventKind::Trades => {
                let mut g = TradeGenerator::new(args.generate.clone(), start);
                Box::new(move |now| g.next(now))
            }
            EventKind::Web => {
                let mut g = WebGenerator::new(args.generate.clone(), start);
                Box::new(move |now| g.next(now))
            }
        };
        let started = Instant::now();
        let mut counts = (0, 0, 0);
        loop {
            if stop.load(Ordering::Relaxed)
                || args.count.is_some_and(|c| sent.total >= c)
                || args.duration.is_some_and(|d| started.elapsed() >= d)
                || (args.count.is_none()
                    && args.duration.is_none()
                    && args.rate <= 0.0
                    && sent.total >= 1_000_000)
            {
                break;
            }
            if args.rate > 0.0 {
                let due = Duration::from_secs_f64(sent.total as f64 / args.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(100)));
                    continue;
                }
            }
            let g = generator(crate::source::now_ms());
            match g.kind {
                Kind::Invalid => counts.0 += 1,
                Kind::Late => counts.1 += 1,
                Kind::Duplicate => counts.2 += 1,
                Kind::Valid => {}
            }
            send(&mut sent, g.key.as_deref(), &g.payload)?;
        }
        (sent.invalid, sent.late, sent.duplicate) = counts;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(sent)
}

fn send_one(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partitions: i32,
    seq: u64,
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<()> {
    // Partition by key the way Java clients do, so keyed consumers agree.
    let partition = match key {
        Some(k) => (murmur2(k) & 0x7fff_ffff) % partitions,
        None => (seq % partitions as u64) as i32,
    };
    let mut r = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    if let Some(k) = key {
        r = r.key(k);
    }
    loop {
        match producer.send(r) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                r = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}
