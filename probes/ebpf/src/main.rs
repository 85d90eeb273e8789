//! The ksense eBPF programs: one file per event kind, each holding that kind's hooks
//! (fentry/fexit, BTF tracepoint, plain tracepoint). The daemon loads and attaches, per kind,
//! the first hook the running kernel accepts.
//!
//! No kernel structure layout is compiled in: every field read goes through offsets the daemon
//! resolved from the running kernel's BTF (see `ksense_abi::config`).
#![no_std]
#![no_main]
// Checked by `cargo +nightly clippy --target bpfel-unknown-none -Z build-std=core` in probes/ebpf.
#![deny(clippy::undocumented_unsafe_blocks)]
// Map keys and values go by reference: by value, a record would be copied to the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]
// Atomic add/sub on map values (BPF_XADD); core's atomics are not available for the BPF target.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// BPF inline asm: context loads at fixed offsets (see `task::func_arg`).
#![feature(asm_experimental_arch)]

mod exec;
mod exit;
mod fork;
mod maps;
mod memory;
mod module;
mod task;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

/// GPL-compatible, as the tracing helpers (`bpf_probe_read_kernel`, ...) require.
// The loader reads the license from this section; no other item is placed in it or has the name.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
