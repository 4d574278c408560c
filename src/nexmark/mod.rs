//! Nexmark: the event model and the benchmark's queries as dataflows.
//!
//! Events flow in as a timely stream of [`model::Event`]s whose timestamp is event time in
//! milliseconds, at or after each event's own `date_time`; the frontier is the watermark.
//! Queries window by `date_time` and emit their final rows as differential-style updates.

pub mod model;
pub mod queries;
