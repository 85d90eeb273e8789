//! Which events go on to the sinks: one allow/deny step over the acting process.
//!
//! An event is dropped if any `exclude` rule matches its process; if any `include` rule is
//! configured, it is kept only if one of them matches. Each rule set applies to the event kinds
//! its `events` key names; without it, to every event except module loads and W^X memory
//! changes ([`Event::is_critical`]), which a monitored process could otherwise hide by taking an
//! excluded name, path or container. One file per rule kind: [`comm`] and
//! [`path`] (glob patterns), [`uid`] (effective uid), [`container`] (container id, `*` for "in
//! any container"). Exclusions that need no pattern matching (a uid, an exact comm) also run in
//! the kernel, so those events never cross the ring buffer (see [`kernel_exclusions`]); the same
//! rules run here again, which is harmless and covers hooks that cannot check.
use ksense_abi::EventKind;
use serde::Deserialize;

use crate::{event::Event, kinds::EventName, process::Process};

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
    /// The event kinds these rules apply to. Absent: every kind, except that module loads and
    /// W^X memory changes are never dropped by it; naming `kernel.module.load` or
    /// `process.memory.protect` here makes the rules apply to those too.
    pub events: Option<Vec<EventName>>,
}

/// The kinds a rule set without `events` applies to in the kernel: the process events. (Memory
/// changes that are not W^X are dropped by such a rule in user space, where W^X is known.)
const PROCESS_KINDS: [EventKind; 3] = [EventKind::Fork, EventKind::Exec, EventKind::Exit];

impl RuleSet {
    fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.path.is_empty() && self.uid.is_empty() && self.container.is_empty()
    }

    /// Whether the rules apply to `event` at all (its kind, see [`RuleSet::events`]).
    fn applies_to(&self, event: &Event) -> bool {
        match &self.events {
            None => !event.is_critical(),
            Some(kinds) => kinds.iter().any(|k| k.0 == event.kind()),
        }
    }

    /// The kinds the probes may drop for these rules, as [`EventKind::bit`]s.
    fn kernel_kinds(&self) -> u8 {
        match &self.events {
            None => PROCESS_KINDS.iter().fold(0, |bits, k| bits | k.bit()),
            Some(kinds) => kinds.iter().fold(0, |bits, k| bits | k.0.bit()),
        }
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

    /// Whether `event` goes on to the sinks.
    pub fn allows(&self, event: &Event) -> bool {
        let (include, exclude) = (&self.config.include, &self.config.exclude);
        if exclude.applies_to(event) && exclude.matches(&event.process) {
            return false;
        }
        include.is_empty() || !include.applies_to(event) || include.matches(&event.process)
    }
}

/// An exact comm as the probes hold it (NUL-padded).
pub type KernelComm = [u8; ksense_abi::TASK_COMM_LEN];

/// What the probes can drop themselves, each entry with the [`EventKind::bit`]s of the kinds
/// its rule applies to there.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelExclusions {
    /// Excluded effective uids.
    pub uids: Vec<(u32, u8)>,
    /// Excluded exact (wildcard-free) comms.
    pub comms: Vec<(KernelComm, u8)>,
}

/// The exclusions of `config` the probes can apply.
pub fn kernel_exclusions(config: &FiltersConfig) -> KernelExclusions {
    let kinds = config.exclude.kernel_kinds();
    KernelExclusions {
        uids: config.exclude.uid.iter().map(|&uid| (uid, kinds)).collect(),
        comms: config.exclude.comm.iter().filter_map(|c| comm::exact(c)).map(|comm| (comm, kinds)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kinds::{Detail, exec::ProcessExec, memory::ProcessMemoryProtect, module::KernelModuleLoad},
    };
    use ksense_abi::Hook;

    fn event(process: Process, detail: Detail, hook: Hook) -> Event {
        let now = std::time::SystemTime::now();
        Event { seq: 1, time: now, observed_time: now, hook, process, detail }
    }

    fn exec_of(process: Process) -> Event {
        let detail = ProcessExec { old_tid: 0, code_start: 0, code_end: 0, exec_path: None, executed_file: None, ..Default::default() };
        event(process, Detail::Exec(detail), Hook::TpBtfSchedProcessExec)
    }

    fn module_load_by(process: Process) -> Event {
        let detail = KernelModuleLoad { name: b"evil".to_vec(), size: None, taints: None };
        event(process, Detail::ModuleLoad(detail), Hook::TpBtfModuleLoad)
    }

    fn memory_change_by(process: Process, old_prot: u32, new_prot: u32) -> Event {
        let detail = ProcessMemoryProtect {
            operation: crate::kinds::memory::Operation::Mprotect,
            start: 0x1000,
            len: 4096,
            count: 1,
            old_prot: Some(old_prot),
            new_prot,
            region: Some(ksense_abi::memory::Region::Anonymous),
            result: Some(0),
            file: None,
            spans_mappings: false,
        };
        event(process, Detail::MemoryProtect(detail), Hook::TracepointMprotect)
    }

    fn process(comm: &str, exe: &str, euid: u32, container: Option<&str>) -> Process {
        Process {
            comm: comm.as_bytes().to_vec(),
            exe: Some(exe.as_bytes().into()),
            euid,
            container_id: container.map(Into::into),
            ..Process::default()
        }
    }

    fn allows(filter: &Filter, p: Process) -> bool {
        filter.allows(&exec_of(p))
    }

    #[test]
    fn exclude_wins_and_include_narrows() {
        let config: FiltersConfig = toml::from_str(
            "include = { path = [\"/usr/bin/*\"], container = [\"*\"] }\nexclude = { comm = [\"cron\"], uid = [65534] }",
        )
        .unwrap();
        let filter = Filter::new(config);
        assert!(allows(&filter, process("ls", "/usr/bin/ls", 0, None)));
        assert!(allows(&filter, process("app", "/app/run", 1000, Some("ab12"))), "any container");
        assert!(!allows(&filter, process("app", "/app/run", 1000, None)), "not included");
        assert!(!allows(&filter, process("cron", "/usr/bin/cron", 0, None)), "excluded comm");
        assert!(!allows(&filter, process("ls", "/usr/bin/ls", 65534, None)), "excluded uid");
    }

    #[test]
    fn empty_config_allows_everything() {
        assert!(allows(&Filter::default(), process("x", "/x", 0, None)));
    }

    /// A process taking an excluded (or not included) name, path, uid or container hides its
    /// process events, but not its module loads or W^X changes, unless a rule set names them.
    #[test]
    fn module_loads_and_wx_changes_pass_rules_that_do_not_name_them() {
        let (rw, rx, r) = (3, 5, 1);
        let config: FiltersConfig = toml::from_str(
            "include = { comm = [\"nginx\"] }\nexclude = { comm = [\"x\"], path = [\"/x/*\"], uid = [65534], container = [\"*\"] }",
        )
        .unwrap();
        let filter = Filter::new(config);
        let x = || process("x", "/x/x", 65534, Some("ab12"));
        assert!(!filter.allows(&exec_of(x())));
        assert!(filter.allows(&module_load_by(x())));
        assert!(filter.allows(&memory_change_by(x(), rw, rx)), "W^X");
        assert!(!filter.allows(&memory_change_by(x(), rw, r)), "not W^X: the rules apply");
        assert!(filter.allows(&memory_change_by(process("y", "/y", 0, None), rw, rx)), "include does not narrow W^X");

        let named: FiltersConfig = toml::from_str(
            "exclude = { comm = [\"x\"], events = [\"kernel.module.load\", \"process.memory.protect\"] }",
        )
        .unwrap();
        let filter = Filter::new(named);
        assert!(!filter.allows(&module_load_by(x())));
        assert!(!filter.allows(&memory_change_by(x(), rw, rx)));
        assert!(filter.allows(&exec_of(x())), "only the named kinds");
    }

    #[test]
    fn the_kernel_drops_only_the_kinds_a_rule_set_applies_to() {
        let default: FiltersConfig = toml::from_str("exclude = { uid = [7] }").unwrap();
        let bits = EventKind::Fork.bit() | EventKind::Exec.bit() | EventKind::Exit.bit();
        assert_eq!(kernel_exclusions(&default).uids, [(7, bits)]);
        let named: FiltersConfig = toml::from_str("exclude = { uid = [7], events = [\"kernel.module.load\"] }").unwrap();
        assert_eq!(kernel_exclusions(&named).uids, [(7, EventKind::ModuleLoad.bit())]);
    }

    #[test]
    fn only_plain_rules_go_to_the_kernel() {
        let config: FiltersConfig = toml::from_str("exclude = { comm = [\"cron\", \"kworker/*\"], uid = [7] }").unwrap();
        let KernelExclusions { uids, comms } = kernel_exclusions(&config);
        assert_eq!(uids.iter().map(|(uid, _)| *uid).collect::<Vec<_>>(), [7]);
        assert_eq!(comms.len(), 1);
        assert_eq!(&comms[0].0[..5], b"cron\0");
    }
}
