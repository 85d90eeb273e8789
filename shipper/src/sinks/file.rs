//! JSON lines to a file (`[sinks.file]`), rotated by size: when the file reaches `max_bytes` it
//! becomes `<path>.1` (the older ones shift to `.2`, ... up to `keep`) and a new file starts.
//! Lines are never split across files.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use super::{Sink, jsonl::write_record};
use crate::{
    record::LogRecord,
    telemetry::{Counters, SinkStats},
};

/// `[sinks.file]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Write JSON lines to `path`.
    pub enabled: bool,
    /// The file (its directory must exist).
    pub path: PathBuf,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` .. `<path>.<keep>`); 0 keeps none.
    pub keep: u32,
    /// Only these event kinds go to the file (see [`crate::config::Selection`]); all when absent.
    pub events: Option<Vec<crate::config::EventName>>,
    /// Only records of this severity or above go to the file.
    pub min_severity: Option<crate::record::Severity>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            enabled: false,
            path: "/var/log/ksense/events.json".into(),
            max_bytes: 100 << 20,
            keep: 5,
            events: None,
            min_severity: None,
        }
    }
}

/// Appends JSON lines to a file, rotating it by size.
pub struct FileSink {
    config: FileConfig,
    out: BufWriter<File>,
    size: u64,
    line: Vec<u8>,
    stats: Arc<SinkStats>,
}

impl FileSink {
    /// Opens (appends to) the configured file.
    pub fn open(config: FileConfig, stats: Arc<SinkStats>) -> io::Result<FileSink> {
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        Ok(FileSink { out: BufWriter::with_capacity(64 * 1024, file), config, size, line: Vec::with_capacity(2048), stats })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.config.path.display()));
        if self.config.keep == 0 {
            std::fs::remove_file(&self.config.path)?;
        } else {
            for n in (1..self.config.keep).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.config.path, numbered(1))?;
        }
        self.out = BufWriter::with_capacity(64 * 1024, open_append(&self.config.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        self.line.clear();
        write_record(&mut self.line, record)?;
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        Counters::bump(&self.stats.delivered);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Severity, Value};
    use std::time::SystemTime;

    #[test]
    fn rotates_by_size_and_keeps_whole_lines() {
        let dir = std::env::temp_dir().join(format!("ksense-file-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        let config = FileConfig { enabled: true, path: path.clone(), max_bytes: 1000, keep: 2, ..FileConfig::default() };
        let mut sink = FileSink::open(config, Arc::default()).unwrap();
        let record = LogRecord {
            event_name: "process.exec",
            severity: Severity::Info,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            body: "x".repeat(100),
            attributes: vec![("process.pid", Value::Int(1))],
        };
        for _ in 0..40 {
            sink.write(&record).unwrap();
        }
        sink.flush().unwrap();
        let mut lines = 0;
        for name in ["events.json", "events.json.1", "events.json.2"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() <= 1000, "{name} has {} bytes", text.len());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
                lines += 1;
            }
        }
        assert!(!dir.join("events.json.3").exists());
        assert!(lines < 40, "older files beyond keep are removed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
