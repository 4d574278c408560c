//! Fault points: abort the process at a precise step, to test recovery.
//!
//! `WATERLINE_FAULT=<point>[:<n>]` aborts (SIGABRT, no clean-up, like a crash) the n-th time
//! (default: the first) the process reaches `<point>`:
//! - `before-commit`: a worker has written a commit's outputs and progress record but has
//!   not committed its transaction;
//! - `after-commit`: right after a commit succeeded;
//! - `during-recovery`: after the committed progress was read, before any worker starts.
//!
//! `WATERLINE_FAULT=commit-fails[:<n>]` makes the n-th commit fail instead (its transaction
//! aborted, as a broker does on a timeout), without a crash: the run restarts in-process.
//!
//! Unset (the normal case), a fault point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Fault {
    point: String,
    nth: usize,
    seen: AtomicUsize,
}

fn configured() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("WATERLINE_FAULT").ok()?;
            let (point, nth) = match spec.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Fault {
                point,
                nth,
                seen: AtomicUsize::new(0),
            })
        })
        .as_ref()
}

/// Whether the process should fail (not crash) at `point` now: true the n-th time it is
/// reached when `WATERLINE_FAULT=<point>:<n>` is set. `commit-fails` makes a commit fail
/// as if the broker had aborted its transaction.
pub fn fails(point: &str) -> bool {
    configured()
        .is_some_and(|f| f.point == point && f.seen.fetch_add(1, Ordering::SeqCst) + 1 == f.nth)
}

/// Marks that the process reached `point`; aborts if a fault was set there.
pub fn point(point: &str) {
    if let Some(f) = configured()
        && f.point == point
        && f.seen.fetch_add(1, Ordering::SeqCst) + 1 == f.nth
    {
        if crate::logging::is_json() {
            tracing::error!(point, "fault point reached (WATERLINE_FAULT): aborting");
        } else {
            eprintln!("waterline: fault point `{point}` reached (WATERLINE_FAULT): aborting");
        }
        std::process::abort();
    }
}
