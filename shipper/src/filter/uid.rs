//! Rules on the effective uid.
use crate::process::Process;

/// Whether the process's effective uid is listed.
pub fn matches(uids: &[u32], p: &Process) -> bool {
    uids.contains(&p.euid)
}
