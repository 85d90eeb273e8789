//! What the running kernel offers the probes, learnt before any program is verified, and a
//! refused program's error in words a person can act on.
//!
//! A refusal costs a full verification (up to 25 s under emulation on an old kernel, and aya
//! verifies a refused program a second time to fetch the log), so a hook whose helper the kernel
//! lacks is not tried at all: the helpers this kernel knows are the enumerators of its BTF's
//! `enum bpf_func_id`.
use ksense_abi::Hook;

use crate::btf::Btf;

/// A BPF helper a hook needs: its `enum bpf_func_id` name and number, and the Linux release
/// that added it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    /// The helper's name without the `bpf_` prefix, as in `BPF_FUNC_<name>`.
    pub name: &'static str,
    /// Its number, as the verifier names an unknown one (`invalid func unknown#<id>`).
    pub id: u32,
    /// The first Linux release that has it.
    pub since: &'static str,
}

/// Helpers ksense's programs call that are newer than the oldest kernel it supports (5.8, the
/// ring buffer), and the ones whose absence the verifier reports by number.
const HELPERS: &[Helper] = &[
    Helper { name: "probe_read_kernel", id: 113, since: "5.5" },
    Helper { name: "probe_read_kernel_str", id: 115, since: "5.5" },
    Helper { name: "ringbuf_output", id: 130, since: "5.8" },
    Helper { name: "get_current_task_btf", id: 158, since: "5.11" },
    Helper { name: "find_vma", id: 180, since: "5.17" },
    Helper { name: "get_func_arg", id: 183, since: "5.17" },
    Helper { name: "get_func_ret", id: 184, since: "5.17" },
];

/// The helpers `hook`'s programs call beyond those every supported kernel has.
pub fn helpers_needed(hook: Hook) -> &'static [&'static str] {
    match hook {
        // Finds the VMA under the address with a callback (bpf_find_vma), from the current task
        // as a BTF pointer.
        Hook::TracepointMprotect => &["get_current_task_btf", "find_vma"],
        _ => &[],
    }
}

/// The program to load instead of `program` on a kernel without `bpf_find_vma`: the mprotect
/// enter and mmap exit programs that walk the VMA tree.
pub fn without_find_vma(program: &'static str) -> &'static str {
    match program {
        "tracepoint_sys_enter_mprotect" => "tracepoint_sys_enter_mprotect_vma_tree",
        "tracepoint_sys_exit_mmap" => "tracepoint_sys_exit_mmap_vma_tree",
        other => other,
    }
}

/// The helpers of [`HELPERS`] this kernel lacks, by name; `None` when its BTF does not say
/// (no BTF, or no `enum bpf_func_id` in it), in which case every hook is tried.
pub fn missing_helpers(btf: Option<&Btf>) -> Option<Vec<&'static str>> {
    let btf = btf?;
    // ringbuf_output is in every kernel ksense runs on: its absence means the enum is unreadable.
    btf.enum_value("bpf_func_id", "BPF_FUNC_ringbuf_output").ok()?;
    Some(
        HELPERS
            .iter()
            .filter(|h| btf.enum_value("bpf_func_id", &format!("BPF_FUNC_{}", h.name)).is_err())
            .map(|h| h.name)
            .collect(),
    )
}

/// `bpf_<name> (Linux <release>+)` for a helper of [`HELPERS`].
pub fn describe_helper(name: &str) -> String {
    match HELPERS.iter().find(|h| h.name == name) {
        Some(h) => format!("bpf_{} (Linux {}+)", h.name, h.since),
        None => format!("bpf_{name}"),
    }
}

/// Why `hook` is not tried on a kernel lacking the helpers `missing`, if it needs one of them.
pub fn unusable_for_helpers(hook: Hook, missing: &[&str]) -> Option<String> {
    let lacking: Vec<String> =
        helpers_needed(hook).iter().filter(|name| missing.contains(name)).map(|name| describe_helper(name)).collect();
    (!lacking.is_empty()).then(|| format!("this kernel lacks the BPF helper {}", lacking.join(" and ")))
}

/// Lines of a verifier log kept for `-v`: the end, where the verifier says why it stopped.
const LOG_TAIL_LINES: usize = 12;

/// The last [`LOG_TAIL_LINES`] non-empty lines of a verifier log.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The kernel's internal "not supported" error number, which reaches user space when a BPF
/// trampoline cannot be made (no `errno` name in libc).
const ENOTSUPP: i32 = 524;

const NO_TRAMPOLINES: &str = "this kernel cannot attach BPF trampolines (fentry/fexit) to kernel functions on \
     this architecture: x86-64 has them from Linux 5.5, arm64 from 6.4 (ftrace direct calls)";

/// A refused attach in words, for the error numbers that have a cause worth naming; `None`
/// for the rest, which are shown as they are.
pub fn explain_attach_error(errno: i32) -> Option<&'static str> {
    (errno == ENOTSUPP).then_some(NO_TRAMPOLINES)
}

/// A refused load in words: what the kernel lacks (and since which release it exists) or what
/// forbids the program, from the error number and the verifier log. Ends with the raw error.
pub fn explain_load_error(errno: Option<i32>, raw: &str, verifier_log: &str) -> String {
    let words = if let Some(id) = unknown_helper(verifier_log) {
        match HELPERS.iter().find(|h| h.id == id) {
            Some(h) => format!("this kernel lacks the BPF helper {}", describe_helper(h.name)),
            None => format!("this kernel lacks BPF helper number {id} (a newer kernel has it)"),
        }
    } else if verifier_log.contains("program is too large") {
        "the verifier's complexity limit was reached (it gives up after 1 million instructions processed; \
         newer kernels prune more and accept the program)"
            .to_owned()
    } else if verifier_log.contains("number of funcs in func_info doesn't match number of subprogs") {
        "this kernel does not know BPF callback functions (Linux 5.13+)".to_owned()
    } else if verifier_log.contains("unknown opcode") || verifier_log.contains("invalid BPF_LD_IMM") {
        "this kernel's verifier does not know an instruction the program uses (a newer kernel does)".to_owned()
    } else {
        match errno {
            Some(libc::EPERM) => "not permitted here: the kernel's security policy (an LSM, lockdown, a sandbox) \
                                  forbids this program type, or ksense lacks CAP_BPF and CAP_PERFMON"
                .to_owned(),
            Some(ENOTSUPP) => NO_TRAMPOLINES.to_owned(),
            Some(libc::E2BIG) => "the program is larger than this kernel accepts".to_owned(),
            Some(libc::ESRCH | libc::ENOENT) => "the kernel function or tracepoint is not there".to_owned(),
            _ => "the verifier refused it (run `ksense -v probes` for the end of its log)".to_owned(),
        }
    };
    format!("{words} [{raw}]")
}

/// The helper number in the verifier's `invalid func unknown#<id>`.
fn unknown_helper(log: &str) -> Option<u32> {
    let at = log.find("invalid func unknown#")? + "invalid func unknown#".len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_helper_is_named_with_its_release() {
        let log = "0: (85) call unknown#183\ninvalid func unknown#183\nprocessed 12 insns";
        let text = explain_load_error(Some(libc::EINVAL), "Invalid argument (os error 22)", log);
        assert_eq!(
            text,
            "this kernel lacks the BPF helper bpf_get_func_arg (Linux 5.17+) [Invalid argument (os error 22)]"
        );
    }

    #[test]
    fn the_complexity_limit_and_callbacks_are_told_apart() {
        let big = explain_load_error(Some(libc::E2BIG), "E2BIG", "BPF program is too large. Processed 1000001 insn\n");
        assert!(big.starts_with("the verifier's complexity limit was reached"), "{big}");
        let callbacks = explain_load_error(
            Some(libc::EINVAL),
            "EINVAL",
            "number of funcs in func_info doesn't match number of subprogs\n",
        );
        assert!(callbacks.contains("callback functions (Linux 5.13+)"), "{callbacks}");
        let eperm = explain_load_error(Some(libc::EPERM), "Operation not permitted (os error 1)", "");
        assert!(eperm.starts_with("not permitted here"), "{eperm}");
        assert!(eperm.ends_with("[Operation not permitted (os error 1)]"), "{eperm}");
    }

    #[test]
    fn a_hook_needing_a_missing_helper_says_which_and_since_when() {
        assert_eq!(
            unusable_for_helpers(Hook::TracepointMprotect, &["find_vma", "get_func_arg"]).as_deref(),
            Some("this kernel lacks the BPF helper bpf_find_vma (Linux 5.17+)")
        );
        assert_eq!(unusable_for_helpers(Hook::TracepointMprotect, &["get_func_arg"]), None);
        assert_eq!(unusable_for_helpers(Hook::FentryMprotectFixup, &["find_vma"]), None);
    }

    #[test]
    fn this_kernel_knows_every_helper_ksense_calls() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no readable /sys/kernel/btf/vmlinux");
            return;
        };
        // The host kernel is 6.x: newer than every helper in the table.
        assert_eq!(missing_helpers(Some(&btf)), Some(Vec::new()));
    }

    #[test]
    fn the_log_tail_is_its_last_lines() {
        let log: String = (0..40).map(|i| format!("line {i}\n\n")).collect();
        let tail = log_tail(&log);
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
        assert!(tail.ends_with("line 39"));
    }

    #[test]
    fn a_trampoline_refused_at_attach_names_the_release_per_architecture() {
        let words = explain_attach_error(ENOTSUPP).expect("524 explained");
        assert!(words.contains("arm64 from 6.4") && words.contains("x86-64 has them from Linux 5.5"), "{words}");
        assert_eq!(explain_attach_error(libc::EINVAL), None);
    }
}
