//! `process.exit` records.
use ksense_abi::exit::Exit;

use super::prelude::*;
use crate::clock::rfc3339;

/// A task exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessExit {
    /// Raw wait status (`task->exit_code`).
    pub status: u32,
    /// The last thread of its process: this is the process exit.
    pub process_exit: bool,
}

impl ProcessExit {
    /// The exit status (0-255) when it exited normally.
    pub fn exit_code(&self) -> Option<u8> {
        (self.status & 0x7f == 0).then_some((self.status >> 8) as u8)
    }

    /// The signal that killed it.
    pub fn signal(&self) -> Option<u8> {
        let signal = (self.status & 0x7f) as u8;
        (signal != 0).then_some(signal)
    }

    /// Whether a core was dumped.
    pub fn core_dumped(&self) -> bool {
        self.status & 0x80 != 0
    }
}

fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: Exit = read_whole(bytes)?;
    let exit = ProcessExit { status: rec.exit_code, process_exit: rec.group_dead != 0 };
    Ok((Process::from_task(&rec.task, clock), Detail::Exit(exit)))
}

/// `process.exit` in the table of kinds.
pub(super) static KIND: KindSpec = KindSpec {
    kind: EventKind::Exit,
    config_key: "exit",
    decode,
    offsets,
    message_id: "2dee3ba51e464cb9b57f6bf8db8fffb6",
    catalog_subject: "Process @PROCESS_PID@ (@PROCESS_EXECUTABLE_NAME@) exited",
    catalog: CATALOG,
};

/// The journald catalog entry (`journalctl -x`): what the event is and what its fields say.
const CATALOG: &str = r#"ksense saw a process.exit event: process @PROCESS_PID@ ended.

PROCESS_EXIT_CODE is its exit status (0-255) when it exited by itself;
KSENSE_PROCESS_EXIT_SIGNAL is the signal that killed it otherwise, and
KSENSE_PROCESS_EXIT_CORE_DUMPED says whether it dumped core.
PROCESS_CREATION_TIME and PROCESS_EXIT_TIME bound its life. A thread's own
exit is reported only when ksense is configured to (probes.thread_exits),
with KSENSE_PROCESS_EXIT_THREAD=true.

An exit is logged at priority info, or warning when a signal killed the
process.
"#;

/// Where `do_exit` takes the exit code (fentry).
fn offsets(r: &mut Resolver<'_>) {
    if let Some(btf) = r.btf() {
        match btf.func_param_index("do_exit", "code") {
            Ok(i) => r.config.misc.do_exit_code_arg = i as u32,
            Err(e) => r.refuse(&[Hook::FentryDoExit], &e.to_string()),
        }
    }
}

impl Payload for ProcessExit {
    fn render(&self, process: &Process, time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        attrs.push((schema::PROCESS_EXIT_TIME, Value::Str(rfc3339(time))));
        attrs.push((schema::KSENSE_PROCESS_EXIT_CORE_DUMPED, Value::Bool(self.core_dumped())));
        attrs.push((schema::KSENSE_PROCESS_EXIT_THREAD, Value::Bool(!self.process_exit)));
        let what = if self.process_exit { String::new() } else { format!(" thread {}", process.tid) };
        match (self.exit_code(), self.signal()) {
            (Some(code), _) => {
                attrs.push((schema::PROCESS_EXIT_CODE, Value::Int(i64::from(code))));
                (Severity::Info, format!("{}{what} exited with code {code}", process.who()))
            }
            (None, Some(signal)) => {
                attrs.push((schema::KSENSE_PROCESS_EXIT_SIGNAL, Value::Int(i64::from(signal))));
                let core = if self.core_dumped() { " (core dumped)" } else { "" };
                let body = format!(
                    "{}{what} was killed by signal {signal} ({}){core}",
                    process.who(),
                    signal_name(signal)
                );
                (Severity::Warn, body)
            }
            (None, None) => unreachable!("a status with no signal bits is a normal exit"),
        }
    }
}

/// The conventional name of a signal number on Linux x86-64/arm64.
pub fn signal_name(signal: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "0", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
        "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
        "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
        "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
    ];
    NAMES.get(usize::from(signal)).copied().unwrap_or("real-time signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_exit() {
        let exit = ProcessExit { status: 7 << 8, process_exit: true };
        assert_eq!((exit.exit_code(), exit.signal(), exit.core_dumped()), (Some(7), None, false));
    }

    #[test]
    fn killed_with_core() {
        let exit = ProcessExit { status: 11 | 0x80, process_exit: true };
        assert_eq!((exit.exit_code(), exit.signal(), exit.core_dumped()), (None, Some(11), true));
        assert_eq!(signal_name(11), "SIGSEGV");
    }
}
