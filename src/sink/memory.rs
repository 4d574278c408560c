//! An in-memory writer for tests: collects records in write order.

use std::sync::{Arc, Mutex};

use super::Writer;
use crate::output::OutRecord;

/// Appends every record to a shared vector.
#[derive(Clone, Default)]
pub struct MemoryWriter {
    /// Everything written, in order.
    pub records: Arc<Mutex<Vec<OutRecord>>>,
}

impl Writer for MemoryWriter {
    fn write(&mut self, record: &OutRecord) {
        self.records
            .lock()
            .expect("no writer panicked while holding the lock")
            .push(record.clone());
    }

    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}
