//! Kafka clients: configuration shared by every client, topic creation and metadata.
//!
//! Every librdkafka option set here carries a comment saying why.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;

/// Largest record waterline writes: a dead letter carries a rejected payload twice
/// (base64 and text), and payloads up to `max_payload_bytes` (4 MiB default) are accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Errors talking to Kafka at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The input topic is not there.
    #[error("input topic `{0}` does not exist on {1} (create it, or check [input].topic)")]
    MissingTopic(String, String),
    /// A topic waterline writes or reads besides the input is not there.
    #[error("{role} topic `{topic}` does not exist on {bootstrap} ({hint})")]
    MissingOtherTopic {
        /// What the topic is for: output, progress, reference.
        role: &'static str,
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        bootstrap: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A client call failed.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
}

/// Writes one of librdkafka's log lines through tracing, at the level rdkafka's default
/// `ClientContext::log` uses, with target `librdkafka` and the facility as a field.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// The options every client gets: bootstrap servers, then the config's pass-through
/// properties (which may override anything set here).
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    // Name the client in broker logs and quotas.
    c.set("client.id", format!("waterline-{}", config.app_id));
    // Requests go out as soon as they are written (TCP_NODELAY, as Kafka's Java clients
    // always do; librdkafka's default leaves Nagle's algorithm on). With it on, a small
    // request behind an unacknowledged one waited for the broker's delayed ACK: a 2M-trade
    // exactly-once backfill took 2.1 s instead of 2.5 s (median of 3 runs each).
    c.set("socket.nagle.disable", "true");
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c
}

/// A consumer used only for metadata and watermark look-ups.
pub fn metadata_consumer(config: &Config) -> Result<BaseConsumer, KafkaSetupError> {
    client_config(config)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            what: format!(
                "cannot create a Kafka client for {}",
                config.bootstrap_servers
            ),
            source,
        })
}

/// The number of partitions of `topic`, or `None` if it does not exist.
pub fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaSetupError> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| KafkaSetupError::Client {
            what: format!("cannot read metadata of topic `{topic}`"),
            source,
        })?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

/// The number of partitions of `topic`, waiting up to `wait` for it to appear: a topic
/// just created is not in every broker's metadata at once, and a busy broker can take
/// seconds to list it.
///
/// The pause between looks starts at 5 ms and doubles up to 100 ms: a broker usually lists
/// a topic within milliseconds of creating it, and a fixed 100 ms pause was most of a new
/// application's start-up (a run of 2M trades started in 0.22 s, 0.1 s of it here).
pub fn partition_count_after_create(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
    wait: Duration,
) -> Result<Option<i32>, KafkaSetupError> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(n) = partition_count(consumer, topic, timeout)? {
            return Ok(Some(n));
        }
        if start.elapsed() >= wait {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The low and high watermarks of `topic`/`partition`, asking again for up to 10 s while
/// the broker says the partition has no leader yet. A topic another process of the job
/// has just created is listed in the metadata a moment before its partitions lead:
/// that answer is `NotLeaderForPartition`, and it is not a failure of the run.
pub fn settled_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::error::KafkaError;
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition,
            )) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// A topic to create if missing.
pub struct TopicRequest<'a> {
    /// Name.
    pub name: &'a str,
    /// Partitions.
    pub partitions: i32,
    /// Topic-level configuration.
    pub config: Vec<(&'a str, &'a str)>,
}

/// Waits until `client` has a connection to a broker it learned from the metadata, not
/// only to a bootstrap address: call it before `init_transactions`, and before an
/// idempotent producer's first records.
///
/// librdkafka (2.10 and later) retires its bootstrap connections once the metadata names
/// the brokers, and connects to those afresh. A transactional producer that asks for its
/// coordinator or producer id while no connection is up retries on 500 ms timers, so
/// about half of all `init_transactions` took 500 ms longer than the round trips they
/// need (measured here: 505 ms against 55 ms). The first metadata request is answered by
/// a bootstrap connection; the second needs a learned broker's, so once it returns, one
/// is up. Both ask for `topic` only, which keeps them small on a cluster of many topics.
/// A failure here is left to the call that follows, which reports it.
pub fn connect<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>, topic: &str) {
    for _ in 0..2 {
        if client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .is_err()
        {
            return;
        }
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are. Returns
/// the names of those this call created.
pub fn ensure_topics(
    config: &Config,
    topics: &[TopicRequest<'_>],
) -> Result<Vec<String>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                what: "cannot create a Kafka admin client".into(),
                source,
            })?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                t.name,
                t.partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            for (k, v) in &t.config {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures_executor::block_on(admin.create_topics(new.iter(), &opts)).map_err(|source| {
            KafkaSetupError::Client {
                what: "cannot create topics".into(),
                source,
            }
        });
    // Dropping an admin client waits for its polling thread, which looks for a stop every
    // 100 ms: 70–100 ms of a new application's start-up went there. A thread of its own
    // drops it instead.
    std::thread::spawn(move || drop(admin));
    let results = results?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaSetupError::Client {
                    what: format!("cannot create topic `{name}`"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// TLS and SASL settings reach librdkafka, which accepts them: the build has OpenSSL.
    #[test]
    fn tls_and_sasl_properties_pass_through_to_the_clients() {
        let mut config = Config {
            bootstrap_servers: "127.0.0.1:1".into(),
            ..Config::default()
        };
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "waterline"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            config.kafka_properties.insert(k, v);
        }
        config
            .kafka_properties
            .insert_secret("sasl.password", Secret::new("not-a-real-password"));
        let c = client_config(&config);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.password"), Some("not-a-real-password"));
        let created: Result<BaseConsumer, _> = c.create();
        assert!(
            created.is_ok(),
            "librdkafka takes TLS + SCRAM: {:?}",
            created.err()
        );
    }
}
