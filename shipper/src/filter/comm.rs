//! Rules on `comm` (the 15-character task name), as globs.
use super::glob;
use crate::process::Process;

/// Whether any pattern matches the process's comm.
pub fn matches(patterns: &[String], p: &Process) -> bool {
    patterns.iter().any(|pattern| glob::matches(pattern.as_bytes(), &p.comm))
}

/// The kernel's form of a wildcard-free comm rule (NUL-padded, as `task->comm`); `None` for a
/// glob or a name too long to ever match.
pub fn exact(pattern: &str) -> Option<[u8; ksense_abi::TASK_COMM_LEN]> {
    if !glob::is_literal(pattern) || pattern.len() >= ksense_abi::TASK_COMM_LEN {
        return None;
    }
    let mut comm = [0u8; ksense_abi::TASK_COMM_LEN];
    comm[..pattern.len()].copy_from_slice(pattern.as_bytes());
    Some(comm)
}
