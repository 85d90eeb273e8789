//! Rules on the executable path, as globs.
use super::glob;
use crate::process::Process;

/// Whether any pattern matches the process's executable path (a process whose path is
/// unknown matches none).
pub fn matches(patterns: &[String], p: &Process) -> bool {
    let Some(exe) = p.exe.as_deref() else { return false };
    patterns.iter().any(|pattern| glob::matches(pattern.as_bytes(), exe))
}
