//! Rules on the container id (from the cgroup path). `*` matches any process in a container;
//! otherwise a rule matches an id it is a prefix of (so the 12-digit short ids docker shows work).
use crate::process::Process;

/// Whether any rule matches the process's container.
pub fn matches(rules: &[String], p: &Process) -> bool {
    let Some(id) = p.container_id.as_deref() else { return false };
    rules.iter().any(|rule| rule == "*" || (!rule.is_empty() && id.starts_with(rule.as_str())))
}
