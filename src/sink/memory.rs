//! An in-memory writer for tests: keeps what was committed, and can fail on purpose.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Writer;
use crate::output::OutRecord;
use crate::progress::Progress;

/// What a [`MemoryWriter`] holds.
#[derive(Debug, Default)]
pub struct Committed {
    /// Every committed record, in commit order.
    pub records: Vec<OutRecord>,
    /// Every committed progress record, in order.
    pub progress: Vec<Progress>,
    /// Per commit, in order: how long before it its first record was written (zero for a
    /// commit of no records).
    pub first_written: Vec<Duration>,
}

/// Buffers writes and moves them to [`Committed`] at each commit.
#[derive(Clone, Default)]
pub struct MemoryWriter {
    /// What was committed (shared by every clone).
    pub committed: Arc<Mutex<Committed>>,
    uncommitted: Vec<OutRecord>,
    /// When the first of `uncommitted` was written.
    first_write: Option<Instant>,
    /// Fail every commit after this many have succeeded (in this writer), like a crash.
    pub fail_after: Option<usize>,
    commits: usize,
}

impl MemoryWriter {
    /// A writer that commits into `committed`, failing every commit after the first `n`
    /// when `fail_after` is given.
    pub fn new(committed: Arc<Mutex<Committed>>, fail_after: Option<usize>) -> Self {
        MemoryWriter {
            committed,
            fail_after,
            ..MemoryWriter::default()
        }
    }
}

impl Writer for MemoryWriter {
    fn write(&mut self, record: &OutRecord) {
        self.first_write.get_or_insert_with(Instant::now);
        self.uncommitted.push(record.clone());
    }

    fn commit(&mut self, progress: &Progress) -> Result<(), String> {
        let first_write = self.first_write.take();
        if self.fail_after.is_some_and(|n| self.commits >= n) {
            self.uncommitted.clear();
            return Err("simulated crash before commit".into());
        }
        self.commits += 1;
        let mut c = self
            .committed
            .lock()
            .map_err(|_| "a writer panicked".to_string())?;
        c.records.append(&mut self.uncommitted);
        c.progress.push(progress.clone());
        c.first_written
            .push(first_write.map_or(Duration::ZERO, |t| t.elapsed()));
        Ok(())
    }

    fn abort(&mut self) {
        self.first_write = None;
        self.uncommitted.clear();
    }
}
