//! Which events go on to the sinks: one allow/deny step over the acting process.
//!
//! An event is dropped if any `exclude` rule matches its process; if any `include` rule is
//! configured, it is kept only if one of them matches. One file per rule kind: [`comm`] and
//! [`path`] (glob patterns), [`uid`] (effective uid), [`container`] (container id, `*` for "in
//! any container"). Exclusions that need no pattern matching (a uid, an exact comm) also run in
//! the kernel, so those events never cross the ring buffer (see [`kernel_exclusions`]); the same
//! rules run here again, which is harmless and covers hooks that cannot check.
use serde::Deserialize;

use crate::event::Process;

pub mod comm;
pub mod container;
pub mod glob;
pub mod path;
pub mod rate;
pub mod uid;

/// `[filters]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Keep only events of processes matching one of these rules (when any is given).
    pub include: RuleSet,
    /// Drop events of processes matching any of these rules.
    pub exclude: RuleSet,
}

/// Rules of every kind; a process matches the set if it matches any rule in it.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSet {
    /// `comm` globs, e.g. `"kworker/*"`.
    pub comm: Vec<String>,
    /// Executable path globs, e.g. `"/usr/lib/jvm/*"`.
    pub path: Vec<String>,
    /// Effective uids.
    pub uid: Vec<u32>,
    /// Container ids (or prefixes of 12+ hex digits); `"*"` matches any container.
    pub container: Vec<String>,
}

impl RuleSet {
    fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.path.is_empty() && self.uid.is_empty() && self.container.is_empty()
    }

    fn matches(&self, p: &Process) -> bool {
        comm::matches(&self.comm, p) || path::matches(&self.path, p) || uid::matches(&self.uid, p) || container::matches(&self.container, p)
    }
}

/// The allow/deny step.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    config: FiltersConfig,
}

impl Filter {
    /// A filter for `config`.
    pub fn new(config: FiltersConfig) -> Filter {
        Filter { config }
    }

    /// Whether an event of process `p` goes on to the sinks.
    pub fn allows(&self, p: &Process) -> bool {
        if self.config.exclude.matches(p) {
            return false;
        }
        self.config.include.is_empty() || self.config.include.matches(p)
    }
}

/// What the probes can drop themselves: excluded uids and exact (wildcard-free) comms.
pub fn kernel_exclusions(config: &FiltersConfig) -> (Vec<u32>, Vec<[u8; ksense_abi::TASK_COMM_LEN]>) {
    (config.exclude.uid.clone(), config.exclude.comm.iter().filter_map(|c| comm::exact(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, exe: &str, euid: u32, container: Option<&str>) -> Process {
        Process {
            comm: comm.as_bytes().to_vec(),
            exe: Some(exe.as_bytes().into()),
            euid,
            container_id: container.map(Into::into),
            ..Process::default()
        }
    }

    #[test]
    fn exclude_wins_and_include_narrows() {
        let config: FiltersConfig = toml::from_str(
            "include = { path = [\"/usr/bin/*\"], container = [\"*\"] }\nexclude = { comm = [\"cron\"], uid = [65534] }",
        )
        .unwrap();
        let filter = Filter::new(config);
        assert!(filter.allows(&process("ls", "/usr/bin/ls", 0, None)));
        assert!(filter.allows(&process("app", "/app/run", 1000, Some("ab12"))), "any container");
        assert!(!filter.allows(&process("app", "/app/run", 1000, None)), "not included");
        assert!(!filter.allows(&process("cron", "/usr/bin/cron", 0, None)), "excluded comm");
        assert!(!filter.allows(&process("ls", "/usr/bin/ls", 65534, None)), "excluded uid");
    }

    #[test]
    fn empty_config_allows_everything() {
        assert!(Filter::default().allows(&process("x", "/x", 0, None)));
    }

    #[test]
    fn only_plain_rules_go_to_the_kernel() {
        let config: FiltersConfig = toml::from_str("exclude = { comm = [\"cron\", \"kworker/*\"], uid = [7] }").unwrap();
        let (uids, comms) = kernel_exclusions(&config);
        assert_eq!(uids, [7]);
        assert_eq!(comms.len(), 1);
        assert_eq!(&comms[0][..5], b"cron\0");
    }
}
