//! Writing output records to Kafka with the idempotent producer.
//!
//! Each worker has its own producer and writes only the topic partitions routed to it, in
//! timestamp order. Delivery failures are collected and fail the run at the next flush:
//! an output that could not be written is never silently dropped.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;

use super::Writer;
use crate::config::Config;
use crate::kafka::{KafkaSetupError, MAX_MESSAGE_BYTES, client_config};
use crate::metrics::Metrics;
use crate::output::{OutRecord, Topics};

/// Counts delivery failures and keeps the first one's message.
pub struct DeliveryTracker {
    first_error: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::message::Message;
            self.metrics.delivery_errors.inc();
            let mut slot = self
                .first_error
                .lock()
                .expect("no thread panics holding the delivery lock");
            if slot.is_none() {
                *slot = Some(format!(
                    "delivery to {}/{} failed: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
    }
}

/// A worker's Kafka writer.
pub struct KafkaWriter {
    producer: ThreadedProducer<DeliveryTracker>,
    topics: Rc<Topics>,
    first_error: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
}

const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

impl KafkaWriter {
    /// A writer for `topics`.
    pub fn new(
        config: &Config,
        topics: Rc<Topics>,
        worker: usize,
        metrics: Metrics,
    ) -> Result<Self, KafkaSetupError> {
        let first_error = Arc::new(Mutex::new(None));
        let mut c = client_config(config);
        // Retries never duplicate or reorder records within a partition.
        c.set("enable.idempotence", "true")
            // Batch for throughput; results are already in order, a few ms cost nothing.
            .set("linger.ms", "5")
            // Dead letters carry whole rejected payloads.
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // Cheap on CPU, good on JSON.
            .set("compression.type", "lz4")
            .set(
                "client.id",
                format!("waterline-{}-sink-{worker}", config.app_id),
            );
        for (k, v) in &config.kafka_properties {
            c.set(k, v);
        }
        let producer = c
            .create_with_context(DeliveryTracker {
                first_error: Arc::clone(&first_error),
                metrics: metrics.clone(),
            })
            .map_err(|source| KafkaSetupError::Client {
                what: "cannot create the Kafka producer".into(),
                source,
            })?;
        Ok(KafkaWriter {
            producer,
            topics,
            first_error,
            metrics,
        })
    }
}

impl Writer for KafkaWriter {
    fn write(&mut self, record: &OutRecord) {
        let topic = &self.topics.names[record.topic as usize];
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(record.partition)
            .payload(&record.payload);
        if let Some(k) = &record.key {
            r = r.key(k);
        }
        loop {
            match self.producer.send(r) {
                Ok(()) => {
                    self.metrics.records_out.inc();
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.metrics.delivery_errors.inc();
                    let mut slot = self
                        .first_error
                        .lock()
                        .expect("no thread panics holding the delivery lock");
                    if slot.is_none() {
                        *slot = Some(format!(
                            "cannot produce to {topic}/{}: {e}",
                            record.partition
                        ));
                    }
                    return;
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        self.producer
            .flush(Timeout::After(FLUSH_TIMEOUT))
            .map_err(|e| format!("producer flush failed: {e}"))?;
        match self
            .first_error
            .lock()
            .expect("no thread panics holding the delivery lock")
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
