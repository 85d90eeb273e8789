//! Loading the eBPF object and attaching, per event kind, the first hook the running kernel
//! accepts: fentry/fexit (BPF trampolines, kernel 5.5+), then BTF tracepoints (5.5+), then plain
//! tracepoints. A refused hook (the verifier, a sandbox's EPERM, a missing function) is
//! recorded with its reason and the next one is tried; one kind failing never stops the others.
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, ProgramError, TracePoint},
};
use ksense_abi::{
    CONFIG_GLOBAL, EVENTS_MAP, EXCLUDE_COMMS_MAP, EXCLUDE_UIDS_MAP, EventKind, Hook, HookFamily, LOST_MAP,
};

use crate::{
    btf,
    config::AttachMode,
    offsets::{self, Resolved},
    telemetry::RingLost,
};

mod kernel;

/// The eBPF object built from probes/ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ksense-probes"));

/// What to attach.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Hook family preference.
    pub mode: AttachMode,
    /// Kinds to attach.
    pub kinds: Vec<EventKind>,
    /// Ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// Switches handed to the probes.
    pub switches: offsets::Switches,
}

/// Why the eBPF object could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The object failed to load (maps could not be created).
    #[error("cannot load the eBPF object: {0} (ksense needs root, or CAP_BPF and CAP_PERFMON)")]
    Load(#[source] aya::EbpfError),
    /// A map the daemon reads is missing or of the wrong type.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// No enabled kind could be attached.
    #[error("no hook could be attached for any enabled event kind; see `ksense probes`")]
    NothingAttached,
}

/// What happened to one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded and attached: this kind's events come from it.
    Attached,
    /// Tried and refused, with the kernel's reason.
    Refused(String),
    /// Not tried, with the reason (a preferred hook attached, mode excludes it, a prerequisite
    /// is missing).
    Skipped(String),
}

impl Outcome {
    /// `attached`, `refused` or `skipped` (`ksense probes --json`).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Attached => "attached",
            Outcome::Refused(_) => "refused",
            Outcome::Skipped(_) => "skipped",
        }
    }

    /// Why it was refused or not tried.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Attached => None,
            Outcome::Refused(why) | Outcome::Skipped(why) => Some(why),
        }
    }
}

/// `attached`, `refused: <why>` or `not tried: <why>`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Attached => f.write_str("attached"),
            Outcome::Refused(why) => write!(f, "refused: {why}"),
            Outcome::Skipped(why) => write!(f, "not tried: {why}"),
        }
    }
}

/// One event kind's hook choice.
#[derive(Debug, Clone)]
pub struct KindReport {
    /// The kind.
    pub kind: EventKind,
    /// Whether the configuration enables it.
    pub enabled: bool,
    /// Every hook for the kind, in preference order, with what happened.
    pub hooks: Vec<(Hook, Outcome)>,
}

impl KindReport {
    /// The hook that was attached, if any.
    pub fn chosen(&self) -> Option<Hook> {
        self.hooks.iter().find(|(_, o)| *o == Outcome::Attached).map(|(h, _)| *h)
    }
}

/// The loaded eBPF object with its attached programs.
pub struct Probes {
    ebpf: Ebpf,
    /// Every loaded program, to unload at detach.
    loaded: Vec<(HookFamily, &'static str)>,
    /// Per kind, the hook chosen and why the others were not.
    pub report: Vec<KindReport>,
    /// The BPF helpers ksense knows of that this kernel lacks, each as `bpf_<name> (Linux
    /// <release>+)`; `None` when its BTF does not say.
    pub missing_helpers: Option<Vec<String>>,
}

impl Probes {
    /// Loads the object and attaches one hook per enabled kind.
    pub fn attach(options: &AttachOptions) -> Result<Probes, AttachError> {
        let tracefs = offsets::tracefs_root();
        // Each parse of the kernel's BTF holds 10-20 MiB while it lives, so only one lives at a
        // time: ours is dropped once the offsets are resolved, the one `EbpfLoader::new` makes
        // by itself is dropped at once, and a single aya parse serves the loader and every
        // program load.
        let (Resolved { config, mut unusable }, missing_helpers) = {
            let btf = btf::Btf::from_sys_fs();
            (crate::kinds::resolve_offsets(btf.as_ref(), tracefs.as_deref(), &options.switches), kernel::missing_helpers(btf.as_ref().ok()))
        };
        tracing::debug!(?config, "probe configuration resolved from BTF and tracefs");
        tracing::debug!(?missing_helpers, "BPF helpers this kernel lacks (from its BTF's enum bpf_func_id)");
        let missing = missing_helpers.as_deref().unwrap_or_default();
        // Before 5.17 the memory syscall hook finds VMAs by walking their tree, where there is one.
        let vma_tree = missing.contains(&"find_vma") && config.memory.mm_rb != 0;
        for hook in Hook::ALL {
            if let Some(why) = kernel::unusable_for_helpers(hook, missing)
                && !(hook == Hook::TracepointMprotect && vma_tree)
            {
                unusable.entry(hook).or_insert(why);
            }
        }
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        // Errors and statistics only: a per-instruction trace of a program refused at the
        // complexity limit overflows any buffer, and aya then verifies it again and again with
        // a larger one. `-vv` asks for the trace.
        let log_level = if tracing::enabled!(tracing::Level::TRACE) {
            VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
        } else {
            VerifierLogLevel::STATS
        };
        loader.verifier_log_level(log_level);
        let kernel_btf = aya::Btf::from_sys_fs();
        let mut ebpf = loader
            .btf(kernel_btf.as_ref().ok())
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(AttachError::Load)?;

        let mut loaded = Vec::new();
        let mut report = Vec::new();
        for kind in EventKind::ALL {
            let enabled = options.kinds.contains(&kind);
            let mut hooks = Vec::new();
            for hook in Hook::ALL.into_iter().filter(|h| h.kind() == kind) {
                let outcome = if !enabled {
                    Outcome::Skipped("event kind disabled in the configuration".into())
                } else if hooks.iter().any(|(_, o)| *o == Outcome::Attached) {
                    Outcome::Skipped("a preferred hook is attached".into())
                } else if let Some(why) = excluded_by_mode(options.mode, hook) {
                    Outcome::Skipped(why)
                } else if let Some(why) = unusable.get(&hook) {
                    Outcome::Skipped(why.clone())
                } else {
                    match (&kernel_btf, hook.family()) {
                        (Err(e), family) if family != HookFamily::Tracepoint => {
                            Outcome::Skipped(format!("no kernel BTF: {e}"))
                        }
                        (btf, _) => match load_and_attach(&mut ebpf, hook, btf.as_ref().ok(), vma_tree) {
                            Ok(programs) => {
                                loaded.extend(programs);
                                loaded.extend(attach_companions(&mut ebpf, hook, btf.as_ref().ok()));
                                Outcome::Attached
                            }
                            Err(why) => Outcome::Refused(why),
                        },
                    }
                };
                hooks.push((hook, outcome));
            }
            let kind_report = KindReport { kind, enabled, hooks };
            if enabled && kind_report.chosen().is_none() {
                // Reported once, here; the other kinds keep running.
                tracing::warn!(event = kind.name(), "no hook could be attached: {}", describe(&kind_report));
            }
            report.push(kind_report);
        }
        if loaded.is_empty() && !options.kinds.is_empty() {
            return Err(AttachError::NothingAttached);
        }
        let missing_helpers = missing_helpers.map(|names| names.iter().map(|n| kernel::describe_helper(n)).collect());
        Ok(Probes { ebpf, loaded, report, missing_helpers })
    }

    /// Takes the ring buffer the probes write to (once).
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        self.take_map(EVENTS_MAP)
    }

    /// Takes the map `name` (once), as the type `M` it is read as.
    pub fn take_map<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(&mut self, name: &'static str) -> Result<M, AttachError> {
        let map = self.ebpf.take_map(name).ok_or(AttachError::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        M::try_from(map).map_err(|source| AttachError::Map { name, source })
    }

    /// Events the probes could not write because the ring buffer was full, per kind (summed
    /// over CPUs).
    pub fn ring_lost(&self) -> Result<RingLost, AttachError> {
        let map = |source| AttachError::Map { name: LOST_MAP, source };
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf.map(LOST_MAP).ok_or(map(aya::maps::MapError::InvalidName { name: LOST_MAP.into() }))?,
        )
        .map_err(map)?;
        let mut out = RingLost::default();
        for kind in EventKind::ALL {
            let per_cpu = lost.get(&(kind as u32), 0).map_err(map)?;
            out.0[kind as usize - 1] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Detaches every program: no new events are written after this returns.
    pub fn detach(&mut self) {
        for (family, program) in std::mem::take(&mut self.loaded) {
            if let Err(e) = unload(&mut self.ebpf, family, program) {
                tracing::warn!(program, "detaching failed: {e}");
            }
        }
    }

    /// Makes the probes drop events of the uids and exact comms `filters` excludes, of the kinds
    /// the rules apply to (replacing what was there: called at start and on SIGHUP).
    pub fn set_exclusions(&mut self, filters: &crate::filter::FiltersConfig) -> Result<(), AttachError> {
        let exclusions = crate::filter::kernel_exclusions(filters);
        replace_set(&mut self.ebpf, EXCLUDE_UIDS_MAP, &exclusions.uids)?;
        replace_set(&mut self.ebpf, EXCLUDE_COMMS_MAP, &exclusions.comms)
    }
}

/// Makes the hash map `name` hold exactly `keys` (value 1 each).
fn replace_set<K: aya::Pod + PartialEq>(ebpf: &mut Ebpf, name: &'static str, entries: &[(K, u8)]) -> Result<(), AttachError> {
    let error = |source| AttachError::Map { name, source };
    let map = ebpf.map_mut(name).ok_or(error(aya::maps::MapError::InvalidName { name: name.into() }))?;
    let mut set = aya::maps::HashMap::<_, K, u8>::try_from(map).map_err(error)?;
    let stale: Vec<K> = set.keys().filter_map(Result::ok).filter(|k| !entries.iter().any(|(key, _)| key == k)).collect();
    for key in stale {
        set.remove(&key).map_err(error)?;
    }
    for (key, kinds) in entries {
        set.insert(key, kinds, 0).map_err(error)?;
    }
    Ok(())
}

/// One line saying why each hook of a kind was not used.
pub fn describe(report: &KindReport) -> String {
    report
        .hooks
        .iter()
        .map(|(hook, outcome)| format!("{hook}: {outcome}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn excluded_by_mode(mode: AttachMode, hook: Hook) -> Option<String> {
    let trampoline = matches!(hook.family(), HookFamily::Fentry | HookFamily::Fexit);
    // A kind without a trampoline hook (exec) uses tracepoints in every mode.
    let kind_has_trampoline = Hook::ALL
        .iter()
        .any(|h| h.kind() == hook.kind() && matches!(h.family(), HookFamily::Fentry | HookFamily::Fexit));
    match mode {
        AttachMode::Auto => None,
        AttachMode::Fentry if !trampoline && kind_has_trampoline => Some("attach mode is fentry".into()),
        AttachMode::Tracepoint if trampoline => Some("attach mode is tracepoint".into()),
        _ => None,
    }
}

/// Loads and attaches one hook's programs, returning each with its family; on failure leaves
/// nothing loaded and says why. `vma_tree`: use the memory programs that walk the VMA tree.
fn load_and_attach(
    ebpf: &mut Ebpf,
    hook: Hook,
    btf: Option<&aya::Btf>,
    vma_tree: bool,
) -> Result<Vec<(HookFamily, &'static str)>, String> {
    let mut loaded: Vec<(HookFamily, &'static str)> = Vec::new();
    // A program's further plain tracepoints may be missing from this kernel: `pkey_mprotect`, the
    // mprotect hook's second syscall, exists only where the CPU has memory protection keys (x86
    // with PKU; not arm64 before 6.12). Such a place is left out; its first one is required.
    let tracefs = offsets::tracefs_root();
    let absent = |family: HookFamily, target: &str| {
        family == HookFamily::Tracepoint && tracefs.as_ref().is_some_and(|root| !root.join("events").join(target).is_dir())
    };
    let result = hook.attachments().iter().try_for_each(|&(program, target, family)| {
        let program = if vma_tree { kernel::without_find_vma(program) } else { program };
        let fresh = !loaded.iter().any(|&(_, p)| p == program);
        if !fresh && absent(family, target) {
            tracing::debug!(probe = %hook, "{target} is not in this kernel's tracefs: not attached there");
            return Ok(());
        }
        let result = attach_one(ebpf, family, program, target, fresh, btf);
        if fresh && result.is_ok() {
            loaded.push((family, program));
        }
        result
    });
    if let Err(why) = result {
        for (family, program) in loaded {
            let _ = unload(ebpf, family, program);
        }
        return Err(why);
    }
    Ok(loaded)
}

/// Attaches what the kernel accepts of a hook's companions (see `Hook::companions`); a refusal
/// is reported once and the hook runs without that detail.
fn attach_companions(ebpf: &mut Ebpf, hook: Hook, btf: Option<&aya::Btf>) -> Vec<(HookFamily, &'static str)> {
    let mut loaded = Vec::new();
    for &(program, target, family) in hook.companions() {
        match attach_one(ebpf, family, program, target, true, btf) {
            Ok(()) => loaded.push((family, program)),
            Err(why) => tracing::info!(probe = %hook, companion = %format!("{}/{target}", family.name()), "without this companion: {why}"),
        }
    }
    loaded
}

/// Loads `program` (if `fresh`) and attaches it at `target`.
fn attach_one(
    ebpf: &mut Ebpf,
    family: HookFamily,
    program: &str,
    target: &str,
    fresh: bool,
    btf: Option<&aya::Btf>,
) -> Result<(), String> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} is missing from the eBPF object"))?;
    let btf_required = || btf.ok_or_else(|| "no kernel BTF".to_owned());
    // Each family loads differently; all unload on failure so a refused hook leaves nothing.
    macro_rules! try_hook {
        ($ty:ty, $p:ident => $load:expr, $attach:expr) => {{
            let $p: &mut $ty = prog.try_into().map_err(|e: ProgramError| e.to_string())?;
            let result = if fresh { $load } else { Ok(()) }.and_then(|()| $attach.map(drop));
            if result.is_err() && fresh {
                let _ = $p.unload();
            }
            result
        }};
    }
    let result: Result<(), ProgramError> = match family {
        HookFamily::Fentry => try_hook!(FEntry, p => p.load(target, btf_required()?), p.attach()),
        HookFamily::Fexit => try_hook!(FExit, p => p.load(target, btf_required()?), p.attach()),
        HookFamily::TpBtf => try_hook!(BtfTracePoint, p => p.load(target, btf_required()?), p.attach()),
        HookFamily::Tracepoint => {
            let (category, name) = target.split_once('/').expect("plain tracepoint targets are group/name");
            try_hook!(TracePoint, p => p.load(), p.attach(category, name))
        }
    };
    result.map_err(|e| explain(program, target, &e))
}

/// Unloads (and so detaches) a program.
fn unload(ebpf: &mut Ebpf, family: HookFamily, program: &str) -> Result<(), ProgramError> {
    let Some(prog) = ebpf.program_mut(program) else { return Ok(()) };
    match family {
        HookFamily::Fentry => <&mut FEntry>::try_from(prog)?.unload(),
        HookFamily::Fexit => <&mut FExit>::try_from(prog)?.unload(),
        HookFamily::TpBtf => <&mut BtfTracePoint>::try_from(prog)?.unload(),
        HookFamily::Tracepoint => <&mut TracePoint>::try_from(prog)?.unload(),
    }
}

/// A refused program's reason in words (see [`kernel::explain_load_error`]); the raw error
/// and the end of the verifier log go to the debug log (`ksense -v`).
fn explain(program: &str, target: &str, error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            tracing::debug!(program, target, error = %io_error, "refused; the verifier log ends:\n{}", kernel::log_tail(&log));
            tracing::trace!(program, target, "whole verifier log:\n{log}");
            kernel::explain_load_error(io_error.raw_os_error(), &io_error.to_string(), &log)
        }
        other => {
            let mut text = other.to_string();
            let mut words = None;
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                let errno = s.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
                words = words.or_else(|| errno.and_then(kernel::explain_attach_error));
                source = s.source();
            }
            match words {
                Some(words) => format!("{words} [{target}: {text}]"),
                None => format!("{target}: {text}"),
            }
        }
    }
}
