//! waterline: a Kafka-native stream processor on timely dataflow.
//!
//! Records are read from assigned Kafka partitions (partition `p` by worker `p % W`),
//! decoded and validated (failures become dead letters with their reason and raw bytes),
//! and aggregated in event-time windows whose results are written back to Kafka. The
//! timely frontier is the watermark: each source worker holds its capability at the least
//! per-partition watermark (max event time seen − max out-of-orderness), so a window is
//! final when the frontier passes its end plus grace. Records whose window had already
//! closed at their partition's watermark are routed to a late topic, never dropped.
//!
//! Module map:
//! - [`spec`] dataflow files → a validated pipeline; [`config`] environment settings;
//!   [`fields`] the reader that reports every bad field at once.
//! - [`codec`] bytes → events, or a rejection with a reason ([`flat_json`] its one-pass
//!   fast path); [`expr`] CEL rules, filters and window values; [`dedupe`] repeated ids.
//! - [`time`] event time and per-partition watermarks.
//! - [`source`] the source operator and its readers (Kafka, in-memory).
//! - [`window`] assignment functions, accumulators, the window operator.
//! - [`enrich`] the temporal join with a compacted reference topic.
//! - [`output`] result, dead-letter and late-record encodings and routing;
//!   [`correlation`] the correlation ids they carry as Kafka headers.
//! - [`sink`] the sink operator and its writers (Kafka, in-memory).
//! - [`pipeline`] wires the operators; [`app`] runs a dataflow on Kafka.
//! - [`cluster`] one job across several processes and hosts (timely's cluster mode).
//! - [`generate`] the trade generator behind `waterline produce` and `waterline demo`.
//! - [`nexmark`] the Nexmark benchmark: its generator, queries and Kafka source.
//! - [`demo`] the embedded demo on librdkafka's mock cluster.
//! - [`metrics`] every Prometheus metric; [`logging`] text or JSON log lines;
//!   [`progress_bar`] progress of long runs on a terminal or in the logs.
#![forbid(unsafe_code)]

/// mimalloc for every binary built on this crate (the CLI, tests and benchmarks alike, so
/// they measure what runs in production): with glibc's malloc, allocation and
/// consolidation took a quarter of the dataflow's time (`perf` on `cargo bench --bench
/// pipeline`), mostly the short-lived strings and vectors of decoded events.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod correlation;
pub mod dedupe;
pub mod demo;
pub mod enrich;
pub mod expr;
pub mod fault;
pub mod fields;
pub mod flat_json;
pub mod generate;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod nexmark;
pub mod output;
pub mod pipeline;
pub mod produce;
pub mod progress;
pub mod progress_bar;
pub mod replay;
pub mod sink;
pub mod source;
pub mod spec;
pub mod time;
pub mod window;
