//! Builds the eBPF programs (probes/ebpf, nightly + bpf-linker) so `cargo build` of ksense makes
//! one self-contained binary: src/attach/mod.rs embeds the object from OUT_DIR.
fn main() -> aya_build::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let probes = format!("{manifest_dir}/../probes/ebpf");
    // aya-build watches the eBPF crate; the layout it shares with us lives in the ABI crate.
    println!("cargo:rerun-if-changed={manifest_dir}/../probes/abi");
    aya_build::build_ebpf(
        [aya_build::Package { name: "ksense-probes", root_dir: &probes, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        e.context(
            "building the eBPF probes failed; run `sudo scripts/setup.sh` to install the \
             nightly rust-src component and bpf-linker",
        )
    })
}
