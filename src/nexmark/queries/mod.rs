//! The Nexmark queries, each a function from the event stream to its result updates.

pub mod q7;
pub mod q8;
