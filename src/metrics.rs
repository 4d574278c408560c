//! Every Prometheus metric waterline exports, defined once. Operators receive a clone of
//! [`Metrics`] (cheap: the handles are shared) and never register anything themselves.

use prometheus::{IntCounter, IntGauge, Opts, Registry};

/// The metric handles, all registered in [`Metrics::registry`].
#[derive(Clone)]
pub struct Metrics {
    /// The registry holding every metric below.
    pub registry: Registry,
    /// Records read from input partitions.
    pub records_in: IntCounter,
    /// Records that decoded and validated.
    pub events_valid: IntCounter,
    /// Records sent to the dead-letter topic.
    pub dead_letters: IntCounter,
    /// (record, window) pairs routed to the late topic.
    pub late_records: IntCounter,
    /// Records dropped as duplicates of an earlier event id.
    pub duplicates: IntCounter,
    /// Window results emitted.
    pub windows_emitted: IntCounter,
    /// Records handed to the Kafka producer.
    pub records_out: IntCounter,
    /// Producer delivery failures.
    pub delivery_errors: IntCounter,
    /// Runs restarted in-process after a retriable failure (broker unreachable, commit
    /// failed).
    pub restarts: IntCounter,
    /// Records read from reference partitions.
    pub reference_records_in: IntCounter,
    /// Events joined with a reference version.
    pub enriched: IntCounter,
    /// Events without a reference version at their time.
    pub missing_reference: IntCounter,
    /// Latest watermark held by a source worker (epoch ms).
    pub watermark_ms: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric under the `waterline_` prefix.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("waterline".into()), None)
            .expect("the prefix `waterline` is a valid metric namespace");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("metric names are valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        let records_in = counter("records_in_total", "Records read from input partitions.");
        let events_valid = counter(
            "events_valid_total",
            "Records that decoded and passed validation.",
        );
        let dead_letters = counter(
            "dead_letters_total",
            "Records written to the dead-letter topic.",
        );
        let late_records = counter(
            "late_records_total",
            "Records routed to the late topic, per window they missed.",
        );
        let duplicates = counter(
            "duplicates_total",
            "Records dropped as repeats of an earlier event id within the dedupe horizon.",
        );
        let windows_emitted = counter("windows_emitted_total", "Final window results emitted.");
        let records_out = counter("records_out_total", "Records handed to the Kafka producer.");
        let delivery_errors = counter("delivery_errors_total", "Kafka producer delivery failures.");
        let restarts = counter(
            "restarts_total",
            "Runs restarted from the committed progress after a retriable failure.",
        );
        let reference_records_in = counter(
            "reference_records_in_total",
            "Records read from reference partitions ([enrich]).",
        );
        let enriched = counter(
            "enriched_total",
            "Events joined with the reference version valid at their time.",
        );
        let missing_reference = counter(
            "missing_reference_total",
            "Events without reference data at their time (dead letters, or passed on).",
        );
        let watermark_ms = IntGauge::with_opts(Opts::new(
            "watermark_milliseconds",
            "Event-time watermark held by a source worker, epoch milliseconds.",
        ))
        .expect("metric names are valid");
        registry
            .register(Box::new(watermark_ms.clone()))
            .expect("each metric is registered once");
        Metrics {
            registry,
            records_in,
            events_valid,
            dead_letters,
            late_records,
            duplicates,
            windows_emitted,
            records_out,
            delivery_errors,
            restarts,
            reference_records_in,
            enriched,
            missing_reference,
            watermark_ms,
        }
    }
}

impl Metrics {
    /// Records read from input partitions so far (what a bounded run's progress bar
    /// counts).
    pub fn records_read(&self) -> u64 {
        self.records_in.get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
