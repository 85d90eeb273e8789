//! Every attribute name ksense emits, defined here and nowhere else (documented for users
//! in `docs/EVENTS.md`, which a test keeps in step with this file). Sinks map these names mechanically: OTLP keys as they are, journald
//! fields upper-cased with `.` turned into `_`, JSON keys as they are.

/// Thread-group id (what `ps` calls PID) of the acting process; for `process.fork`, the child.
pub const PROCESS_PID: &str = "process.pid";
/// The acting process's parent; for `process.fork`, the forking process.
pub const PROCESS_PARENT_PID: &str = "process.parent_pid";
/// The kernel task id.
pub const THREAD_ID: &str = "thread.id";
/// `comm`.
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
/// Canonical path of the file the kernel executed, as `/proc/<pid>/exe` shows it (symlinks
/// and `..` resolved; a memfd as `/memfd:<name> (deleted)`); absent when it could not be
/// established.
pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";
/// The path as given to execve (`process.exec` only): possibly relative, or through symlinks.
pub const KSENSE_PROCESS_EXEC_PATH: &str = "ksense.process.exec.path";
/// argv, as an array.
pub const PROCESS_COMMAND_ARGS: &str = "process.command_args";
/// argv joined with spaces.
pub const PROCESS_COMMAND_LINE: &str = "process.command_line";
/// Effective uid.
pub const PROCESS_USER_ID: &str = "process.user.id";
/// Real uid.
pub const PROCESS_REAL_USER_ID: &str = "process.real_user.id";
/// User name of the effective uid.
pub const PROCESS_OWNER: &str = "process.owner";
/// Process group id (the pid of the process group's leader).
pub const PROCESS_GROUP_LEADER_PID: &str = "process.group_leader.pid";
/// Session id (the pid of the session leader).
pub const PROCESS_SESSION_LEADER_PID: &str = "process.session_leader.pid";
/// When the process was created (RFC 3339).
pub const PROCESS_CREATION_TIME: &str = "process.creation.time";
/// Exit status, when it exited normally.
pub const PROCESS_EXIT_CODE: &str = "process.exit.code";
/// When it exited (RFC 3339).
pub const PROCESS_EXIT_TIME: &str = "process.exit.time";
/// The signal that killed it.
pub const KSENSE_PROCESS_EXIT_SIGNAL: &str = "ksense.process.exit.signal";
/// Whether it dumped core.
pub const KSENSE_PROCESS_EXIT_CORE_DUMPED: &str = "ksense.process.exit.core_dumped";
/// The exit of one thread of a process that lives on, not of the process.
pub const KSENSE_PROCESS_EXIT_THREAD: &str = "ksense.process.exit.thread";
/// `mm->start_code`, hex.
pub const KSENSE_PROCESS_CODE_START: &str = "ksense.process.code.start";
/// `mm->end_code`, hex.
pub const KSENSE_PROCESS_CODE_END: &str = "ksense.process.code.end";
/// Raw clone flags.
pub const KSENSE_CLONE_FLAGS: &str = "ksense.clone.flags";
/// CLONE_THREAD was set.
pub const KSENSE_CLONE_THREAD: &str = "ksense.clone.thread";
/// Container id, from the cgroup path.
pub const CONTAINER_ID: &str = "container.id";
/// The cgroup, as a `/proc/<pid>/cgroup` line.
pub const PROCESS_LINUX_CGROUP: &str = "process.linux.cgroup";
/// The hook that produced the event, e.g. `tp_btf/sched_process_exec`.
pub const KSENSE_PROBE: &str = "ksense.probe";
/// Per-agent sequence number, one more per event read from the kernel; on ksense's own records
/// (`ksense.loss`, `ksense.status`), the number of the last event read before it.
pub const KSENSE_EVENT_SEQ: &str = "ksense.event.seq";
/// The names of the attributes whose text is in the escaped form (`text::escaped`): they held
/// bytes that are not valid UTF-8. Absent when none is.
pub const KSENSE_ESCAPED: &str = "ksense.escaped";
/// The executed file has no name on any file system (a memfd, a deleted file), as the kernel
/// saw it at exec (`process.exec` only).
pub const KSENSE_PROCESS_EXECUTABLE_FILELESS: &str = "ksense.process.executable.fileless";
/// The GNU build-id note of the executed file, hex, when it has one: on the exec and every
/// later event of the process.
pub const PROCESS_EXECUTABLE_BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
/// SHA-256 of the executed file's content (of the very inode the kernel executed), hex: on the
/// exec and every later event of the process.
pub const KSENSE_PROCESS_EXECUTABLE_SHA256: &str = "ksense.process.executable.sha256";
/// Why `ksense.process.executable.sha256` is absent: `too_large`, `pending`, `busy`,
/// `unreadable`, `changed`.
pub const KSENSE_PROCESS_EXECUTABLE_HASH_SKIPPED: &str = "ksense.process.executable.hash_skipped";
/// The process has a controlling terminal (`process.exec` only).
pub const PROCESS_INTERACTIVE: &str = "process.interactive";
/// The value of environment variable `<NAME>` when the new image started, one attribute per
/// variable of `[probes] environment` that was set (`process.exec` only): a pattern, made into
/// a name by [`environment_variable`].
pub const PROCESS_ENVIRONMENT_VARIABLE: &str = "process.environment_variable.<NAME>";
/// The environment was longer than [`ksense_abi::exec::ENV_CAP`] bytes and only its start was
/// read: a variable after the cut is missing.
pub const KSENSE_PROCESS_ENVIRONMENT_TRUNCATED: &str = "ksense.process.environment.truncated";
/// argv was longer than the cap ([`ksense_abi::exec::ARGS_CAP`] bytes, in the probe or when read
/// from `/proc/<pid>/cmdline`) and was cut.
pub const KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED: &str = "ksense.process.command_args.truncated";
/// The parent's executable path (as `process.executable.path`), from the process table.
pub const KSENSE_PROCESS_PARENT_EXECUTABLE_PATH: &str = "ksense.process.parent.executable.path";
/// The parent's argv joined with spaces, from the process table.
pub const KSENSE_PROCESS_PARENT_COMMAND_LINE: &str = "ksense.process.parent.command_line";
/// Ancestors from the parent upward, `<pid>:<executable path>` each, at most 16, ending at
/// `1:...` when the chain is complete.
pub const KSENSE_PROCESS_LINEAGE: &str = "ksense.process.lineage";
/// The module's name.
pub const KSENSE_KERNEL_MODULE_NAME: &str = "ksense.kernel.module.name";
/// Its size in bytes.
pub const KSENSE_KERNEL_MODULE_SIZE: &str = "ksense.kernel.module.size";
/// Its taint flags.
pub const KSENSE_KERNEL_MODULE_TAINTS: &str = "ksense.kernel.module.taints";
/// Start of the changed range, hex.
pub const KSENSE_MEMORY_START: &str = "ksense.memory.start";
/// Length of the changed range in bytes.
pub const KSENSE_MEMORY_LENGTH: &str = "ksense.memory.length";
/// Protection before, `rwx`-style.
pub const KSENSE_MEMORY_PROTECTION_OLD: &str = "ksense.memory.protection.old";
/// Protection requested, `rwx`-style.
pub const KSENSE_MEMORY_PROTECTION_NEW: &str = "ksense.memory.protection.new";
/// What the range is (`main_code`, `library_code`, `anonymous`, `stack`, `heap`, `file`).
pub const KSENSE_MEMORY_REGION: &str = "ksense.memory.region";
/// The backing file of a file-backed range.
pub const KSENSE_MEMORY_FILE_PATH: &str = "ksense.memory.file.path";
/// Writable and executable after the change, or writable memory made executable.
pub const KSENSE_MEMORY_WX: &str = "ksense.memory.wx";
/// The range covers several mappings and the hook saw only the first (present when true).
pub const KSENSE_MEMORY_SPANS_MAPPINGS: &str = "ksense.memory.spans_mappings";
/// The syscall's return value (0 or -errno).
pub const KSENSE_MEMORY_RESULT: &str = "ksense.memory.result";
/// What made the change: `mprotect` (a protection change) or `mmap` (a mapping created
/// executable).
pub const KSENSE_MEMORY_OPERATION: &str = "ksense.memory.operation";
/// How many identical occurrences one event stands for (coalescing).
pub const KSENSE_EVENT_COUNT: &str = "ksense.event.count";
/// The event name, repeated as an attribute for OTLP backends that predate the field.
pub const EVENT_NAME: &str = "event.name";
/// The event name of ksense's loss reports.
pub const KSENSE_LOSS: &str = "ksense.loss";
/// Why events were lost: `ring_buffer`, `queue_full`, `memory_budget`, `rate_limited`,
/// `sink_failed`, `sink_rejected`, `decode_error`.
pub const KSENSE_LOSS_CAUSE: &str = "ksense.loss.cause";
/// The kind lost, e.g. `process.exec`; `*` where the cause cannot tell.
pub const KSENSE_LOSS_EVENT_NAME: &str = "ksense.loss.event_name";
/// How many were lost for this cause and kind (and sink) since the previous report of them.
pub const KSENSE_LOSS_COUNT: &str = "ksense.loss.count";
/// The sink that lost them (`otlp`, `journald`, `file`, `stdout`), for the sink causes.
pub const KSENSE_LOSS_SINK: &str = "ksense.loss.sink";
/// The event name of ksense's heartbeat.
pub const KSENSE_STATUS: &str = "ksense.status";
/// `started`, `running` or `stopping`.
pub const KSENSE_STATUS_STATE: &str = "ksense.status.state";
/// Events read from the kernel since start.
pub const KSENSE_STATUS_EVENTS_READ: &str = "ksense.status.events_read";
/// Events handed to the sinks since start.
pub const KSENSE_STATUS_EVENTS_WRITTEN: &str = "ksense.status.events_written";
/// Everything lost since start.
pub const KSENSE_STATUS_LOST_TOTAL: &str = "ksense.status.lost_total";
/// `<event name>=<probe>` of every attached kind.
pub const KSENSE_STATUS_PROBES: &str = "ksense.status.probes";

/// The attribute name of environment variable `name`: [`PROCESS_ENVIRONMENT_VARIABLE`] with
/// `<NAME>` replaced.
pub fn environment_variable(name: &str) -> String {
    PROCESS_ENVIRONMENT_VARIABLE.replace("<NAME>", name)
}
