//! Nexmark: the standard online-auction benchmark, as waterline dataflows.
//!
//! In: [`model::Event`]s — people registering, auctions opening, bids — from the seeded
//! [`generator`] (in process) or from a Kafka topic ([`kafka`]). Out: each query's result
//! rows as differential-style updates `(row, time, diff)`.
//!
//! Time: the timely timestamp is event time in ms; an event enters at its `date_time`
//! or later (a source may hold it at its partition's watermark, `max(date_time, wm)`),
//! and the frontier is the watermark. Queries window by each event's own `date_time`.
//! A record that arrives at a timestamp at or past a window's end is late for that window
//! and does not count in it (its own partition had already passed the end). Results are
//! final: each row once with diff +1, emitted when the frontier passes its window's end,
//! at a timestamp at or after that end; the window's state is freed then.
//!
//! Queries ([`queries`]): q0 pass-through of bids, q5 hot items (hopping 10 s / 2 s),
//! q7 highest bid (tumbling 10 s, joined back), q8 new users who opened auctions
//! (tumbling 10 s join), q11 user sessions (10 s gap).

pub mod generator;
pub mod kafka;
pub mod model;
pub mod queries;
pub mod run;
