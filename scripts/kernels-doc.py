#!/usr/bin/env python3
"""Writes docs/KERNELS.md from what the VM tests saw: for each kernel of the matrix, the
`ksense probes --json` of each attach mode that tests/vm/host.rs keeps in
target/vm/<line>-<arch>/probes-<mode>.json.

    scripts/kernels-doc.py [VM_DIR [OUT]]    # defaults: target/vm, docs/KERNELS.md

Run it after the VM tests (`cargo test -p ksense-e2e --test vm`); it fails when a kernel of the
matrix or a mode has no report, so the document never mixes runs silently."""
import json
import pathlib
import sys

# The matrix, in the order of tests/vm/host.rs: (directory, what it is).
MATRIX = [
    ("5.10-amd64", "Debian 11, 5.10 (amd64)"),
    ("6.1-amd64", "Debian 12, 6.1 (amd64)"),
    ("6.12-amd64", "Debian 12, 6.12 (amd64)"),
    ("6.1-arm64", "Debian 12, 6.1 (arm64)"),
]
MODES = ["fentry", "tracepoint"]

HEAD = """# Kernels

Which hook ksense attaches for each event kind, per kernel and attach mode, and what older
kernels lose. The tables are generated (`scripts/kernels-doc.py`) from `ksense probes --json`
as the VM tests (`tests/vm`, [VM.md](VM.md)) ran it on each kernel of the matrix; do not edit
them by hand.

The default attach mode (`auto`) tries the hooks in the same order as `fentry` mode: on every
amd64 kernel below, which all have BPF trampolines, it chooses what the `fentry` column shows;
on arm64 6.1, which has none for kernel functions (arm64 has them from 6.4), where `fentry`
shows none it chooses what the `tracepoint` column shows. The
`tracepoint` mode never uses trampolines (`[probes] attach = "tracepoint"`, `--attach
tracepoint`).
"""

TAIL = """
## The minimum kernel and why

**Linux 5.8** with BTF (`CONFIG_DEBUG_INFO_BTF=y`, `/sys/kernel/btf/vmlinux`): the probes write
every event into a BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`, `bpf_ringbuf_output`), which exists
from 5.8; below it the eBPF object does not load and ksense exits with the loader's error. The
oldest kernel tested is Debian 11's 5.10.

What is lost below each boundary (each is probed at start; `ksense probes` names the missing
helper or feature and the release that added it):

| kernel | what it adds | below it |
| --- | --- | --- |
| 5.5 (x86-64), 6.4 (arm64) | BPF trampolines: `fentry`/`fexit` | the `tp_btf`/`tracepoint` hooks are used: the same events and fields; the fork hook fires in `copy_process` rather than once `kernel_clone` returns; executable mappings are seen at the `mmap` syscall only (not `shmat`) |
| 5.5 | BTF-typed tracepoints (`tp_btf`), `bpf_probe_read_kernel` | (below 5.8 anyway) |
| 5.8 | the ring buffer | nothing loads |
| 5.11 | `bpf_get_current_task_btf` | the memory tracepoint hook walks the VMA tree (at `mprotect` entry, at `mmap` exit) instead of calling `bpf_find_vma` |
| 5.12 | a per-program guard in trampolines (`prog->active`): one fentry/fexit program never runs twice at once on a CPU | on 5.11 alone, whose fentry/fexit programs can be preempted (on a kernel built or booted preemptible), two tasks inside the memory hook on one CPU could build their records in the same per-CPU slot and one record mix both changes; 5.10 and older run these programs with preemption disabled |
| 5.13 | BPF callbacks (a function passed to a helper) | as above: the callback of `bpf_find_vma` cannot even be loaded |
| 5.17 | `bpf_find_vma`, `bpf_get_func_arg`/`bpf_get_func_ret` | ksense uses none it cannot do without: fentry/fexit programs read their arguments from the context, and on kernels before 6.1 the VMA under an `mprotect` or a new `mmap` is found by walking `mm->mm_rb` as the kernel's `find_vma` does; from 6.1 (maple tree, no `mm_rb`) `bpf_find_vma` is there |

Independently of the release: a kernel without BTF loses every hook but the plain tracepoints
(fork, exec, exit, module load with only what BPF helpers give; no memory hook, which needs
structure offsets); a kernel without `CONFIG_MODULES` has no module hook (no module can load);
a security policy (lockdown, an LSM, a sandbox) that refuses trampolines with EPERM leaves the
tracepoint family, as on the 6.18 development hosts.
"""


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"kernels-doc: {path}: {e} (run the VM tests first)")


def cell(kind):
    return f"`{kind['chosen']}`" if kind.get("chosen") else "**none**"


def main():
    vm_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/vm")
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "docs/KERNELS.md")
    text = [HEAD]
    for directory, title in MATRIX:
        reports = {mode: load(vm_dir / directory / f"probes-{mode}.json") for mode in MODES}
        release = reports[MODES[0]]["kernel"]
        text.append(f"\n## {title}: `{release}`\n\n")
        missing = reports[MODES[0]].get("missing_helpers")
        if missing:
            text.append("BPF helpers it lacks: " + ", ".join(f"`{h}`" for h in missing) + ".\n\n")
        text.append("| event | " + " | ".join(f"{m} mode" for m in MODES) + " |\n")
        text.append("| --- |" + " --- |" * len(MODES) + "\n")
        events = [k["event"] for k in reports[MODES[0]]["kinds"]]
        notes = []
        for event in events:
            kinds = {m: next(k for k in reports[m]["kinds"] if k["event"] == event) for m in MODES}
            text.append(f"| {event} | " + " | ".join(cell(kinds[m]) for m in MODES) + " |\n")
            for mode in MODES:
                for hook in kinds[mode]["hooks"]:
                    if hook["status"] == "refused":
                        notes.append(f"- {mode} mode, `{hook['probe']}` refused: {hook['reason']}")
                    elif hook["status"] == "skipped" and not hook["reason"].startswith(
                        ("a preferred hook", "attach mode is", "event kind disabled")
                    ):
                        notes.append(f"- {mode} mode, `{hook['probe']}` not tried: {hook['reason']}")
        if notes:
            text.append("\nHooks refused or not tried, and why:\n\n" + "\n".join(dict.fromkeys(notes)) + "\n")
    text.append(TAIL)
    out.write_text("".join(text))
    print(f"kernels-doc: wrote {out}")


main()
