//! Where records go. Each sink owns its formatting and buffering; the pipeline hands every
//! sink every record and asks them to flush when the queue runs dry.
use std::io;

use crate::record::LogRecord;

pub mod jsonl;
pub mod pretty;

/// A destination for records.
pub trait Sink: Send {
    /// Short name for diagnostics, e.g. `stdout-json`.
    fn name(&self) -> &'static str;
    /// Writes (or buffers) one record.
    fn write(&mut self, record: &LogRecord) -> io::Result<()>;
    /// Pushes buffered records out.
    fn flush(&mut self) -> io::Result<()>;
}
