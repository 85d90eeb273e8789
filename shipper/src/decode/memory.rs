//! `process.memory.protect` records.
use ksense_abi::memory::{
    MEMORY_FILE_CAP, MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, Memory, PROT_EXEC, PROT_READ, PROT_WRITE, Region,
};

use super::{DecodeError, process_from, read_whole};
use crate::{
    clock::Clock,
    event::{Detail, Event, Process, Render, hex},
    record::{Severity, Value, push_text},
    schema,
    text::{lossless, one_line},
};

/// A protection change (or `count` identical ones, coalesced in the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMemoryProtect {
    /// Start of the range.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Identical changes this event stands for.
    pub count: u64,
    /// Protection before (`PROT_*` bits), when known.
    pub old_prot: Option<u32>,
    /// Protection requested.
    pub new_prot: u32,
    /// What the range is, when known.
    pub region: Option<Region>,
    /// The syscall's result, when known.
    pub result: Option<i32>,
    /// The backing file: its basename from the kernel, replaced by the full path by enrichment.
    pub file: Option<Vec<u8>>,
}

impl ProcessMemoryProtect {
    /// The range ends up writable and executable, or memory that was writable became
    /// executable.
    pub fn wx(&self) -> bool {
        let new = self.new_prot;
        let old = self.old_prot.unwrap_or(0);
        (new & PROT_WRITE != 0 && new & PROT_EXEC != 0) || (old & PROT_WRITE != 0 && old & PROT_EXEC == 0 && new & PROT_EXEC != 0)
    }

    /// Executable memory was made writable.
    pub fn code_made_writable(&self) -> bool {
        self.old_prot.is_some_and(|old| old & PROT_EXEC != 0 && old & PROT_WRITE == 0) && self.new_prot & PROT_WRITE != 0
    }
}

/// `rwx`-style rendering of `PROT_*` bits, e.g. `r-x`.
pub fn prot_string(prot: u32) -> String {
    [(PROT_READ, 'r'), (PROT_WRITE, 'w'), (PROT_EXEC, 'x')]
        .iter()
        .map(|&(bit, c)| if prot & bit != 0 { c } else { '-' })
        .collect()
}

pub(super) fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: Memory = read_whole(bytes)?;
    if rec.file_len as usize >= MEMORY_FILE_CAP {
        return Err(DecodeError::Field("file_len"));
    }
    let old_known = rec.flags & MEMORY_OLD_KNOWN != 0;
    let memory = ProcessMemoryProtect {
        start: rec.start,
        len: rec.len,
        count: rec.count,
        old_prot: old_known.then_some(rec.old_prot),
        new_prot: rec.new_prot,
        region: old_known.then(|| Region::from_u32(rec.region)),
        result: (rec.flags & MEMORY_RESULT_KNOWN != 0).then_some(rec.result),
        file: (rec.file_len > 0).then(|| rec.file[..rec.file_len as usize].to_vec()),
    };
    Ok((process_from(&rec.task, clock), Detail::MemoryProtect(memory)))
}

impl Render for ProcessMemoryProtect {
    fn render(&self, event: &Event, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        attrs.push((schema::KSENSE_MEMORY_START, hex(self.start)));
        attrs.push((schema::KSENSE_MEMORY_LENGTH, Value::Int(self.len as i64)));
        if let Some(old) = self.old_prot {
            attrs.push((schema::KSENSE_MEMORY_PROTECTION_OLD, Value::Str(prot_string(old))));
        }
        attrs.push((schema::KSENSE_MEMORY_PROTECTION_NEW, Value::Str(prot_string(self.new_prot))));
        let region = self.region.unwrap_or(Region::Unknown).name();
        attrs.push((schema::KSENSE_MEMORY_REGION, Value::Str(region.to_owned())));
        if let Some(file) = &self.file {
            push_text(attrs, schema::KSENSE_MEMORY_FILE_PATH, file);
        }
        attrs.push((schema::KSENSE_MEMORY_WX, Value::Bool(self.wx())));
        if let Some(result) = self.result {
            attrs.push((schema::KSENSE_MEMORY_RESULT, Value::Int(i64::from(result))));
        }
        attrs.push((schema::KSENSE_EVENT_COUNT, Value::Int(self.count as i64)));
        let severity = if self.wx() || self.code_made_writable() { Severity::Warn } else { Severity::Info };
        let was = self.old_prot.map(|o| format!(" (was {})", prot_string(o))).unwrap_or_default();
        let times = if self.count > 1 { format!(", {} times", self.count) } else { String::new() };
        let failed = match self.result {
            Some(r) if r < 0 => format!(", failed with {r}"),
            _ => String::new(),
        };
        let body = format!(
            "{} set {:#x}+{} ({region}{}) to {}{was}{times}{failed}",
            event.who(),
            self.start,
            self.len,
            self.file.as_deref().map(|f| format!(" {}", one_line(&lossless(f)))).unwrap_or_default(),
            prot_string(self.new_prot),
        );
        (severity, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(old: Option<u32>, new: u32) -> ProcessMemoryProtect {
        ProcessMemoryProtect { start: 0, len: 4096, count: 1, old_prot: old, new_prot: new, region: None, result: None, file: None }
    }

    #[test]
    fn classifies_transitions() {
        let (r, w, x) = (PROT_READ, PROT_WRITE, PROT_EXEC);
        assert!(change(Some(r | x), r | w | x).wx());
        assert!(change(Some(r | w), r | x).wx(), "written memory made executable");
        assert!(!change(Some(r | w), r).wx());
        assert!(change(Some(r | x), r | w).code_made_writable());
        assert!(!change(Some(r | w), r | x).code_made_writable());
        assert_eq!(prot_string(r | x), "r-x");
        assert_eq!(prot_string(0), "---");
    }
}
