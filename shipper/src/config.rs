//! The configuration file (`/etc/ksense/ksense.toml`, shipped as `config/ksense.toml`).
//!
//! Parsed strictly: an unknown key or a bad value is an error naming the file, line, column
//! and key. An empty file means every default.
use std::{
    fmt,
    sync::LazyLock,
    ops::Range,
    path::{Path, PathBuf},
};

use ksense_abi::EventKind;
use serde::Deserialize;
use toml::Spanned;

use crate::kinds::KINDS;

/// Where `ksense run` looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/ksense/ksense.toml";

/// The whole configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which events to collect and how to hook them.
    pub probes: ProbesConfig,
    /// Memory-protection reporting.
    pub memory: MemoryConfig,
    /// Backends.
    pub sinks: crate::sinks::SinksConfig,
    /// Which events go on to the sinks.
    pub filters: crate::filter::FiltersConfig,
    /// Buffer sizes and rate limits.
    pub limits: LimitsConfig,
    /// ksense's own records in the stream.
    pub telemetry: TelemetryConfig,
    /// Build-id and SHA-256 of executed files.
    pub identity: crate::identity::IdentityConfig,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Every this many seconds every sink gets a `ksense.status` record (also once at start
    /// and once at stop), so a backend can alert when a host's sensor goes quiet.
    pub status_interval_s: Spanned<u64>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { status_interval_s: Spanned::new(0..0, 60) }
    }
}

/// `[probes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbesConfig {
    /// Which hook family to use: `auto` tries fentry/fexit first and falls back to tracepoints.
    pub attach: AttachMode,
    /// Whether each event kind is reported, in [`EventKind::ALL`] order: the kind's key
    /// (`fork = true`; `crate::kinds::KindSpec::config_key`), every kind by default.
    pub kinds: [bool; EventKind::ALL.len()],
    /// Report the exit of every thread, not only the last thread of a process.
    pub thread_exits: bool,
    /// Report ksense's own events (its threads starting and ending). Off by default: they are
    /// dropped in the probes, so ksense's own work cannot feed back into what it reports.
    pub report_self: bool,
    /// Environment variables whose value at exec is reported as
    /// `process.environment_variable.<NAME>` (read by the exec probe from the new image, up to
    /// [`ksense_abi::exec::ENV_CAP`] bytes of environment; empty: the environment is not read).
    pub environment: Spanned<Vec<String>>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            attach: AttachMode::Auto,
            kinds: [true; EventKind::ALL.len()],
            thread_exits: false,
            report_self: false,
            environment: Spanned::new(0..0, ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"].map(str::to_owned).to_vec()),
        }
    }
}

impl ProbesConfig {
    /// Whether `kind` is reported.
    pub fn enabled(&self, kind: EventKind) -> bool {
        self.kinds[kind as usize - 1]
    }
}

/// The keys of `[probes]`: `attach`, each kind's, `thread_exits`, `report_self`, `environment`.
static PROBES_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let kinds = KINDS.iter().map(|kind| kind.config_key);
    std::iter::once("attach").chain(kinds).chain(["thread_exits", "report_self", "environment"]).collect()
});

/// A key of `[probes]`; refused, as a key (so the error points at it), when it is none.
struct ProbesKey(&'static str);

impl<'de> Deserialize<'de> for ProbesKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        let keys: &'static [&'static str] = &PROBES_KEYS;
        let known = keys.iter().find(|k| **k == key).ok_or_else(|| serde::de::Error::unknown_field(&key, keys))?;
        Ok(ProbesKey(known))
    }
}

/// Strict, as a derived one with `deny_unknown_fields` would be, but with a key per event
/// kind taken from the table of kinds.
impl<'de> Deserialize<'de> for ProbesConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ProbesConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [probes] table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ProbesConfig, A::Error> {
                use serde::de::Error as _;
                let mut probes = ProbesConfig::default();
                let mut seen = Vec::new();
                while let Some(ProbesKey(known)) = map.next_key()? {
                    if seen.contains(&known) {
                        return Err(A::Error::duplicate_field(known));
                    }
                    seen.push(known);
                    match known {
                        "attach" => probes.attach = map.next_value()?,
                        "thread_exits" => probes.thread_exits = map.next_value()?,
                        "report_self" => probes.report_self = map.next_value()?,
                        "environment" => probes.environment = map.next_value()?,
                        kind => {
                            let at = KINDS.iter().position(|k| k.config_key == kind).expect("a key of PROBES_KEYS");
                            probes.kinds[at] = map.next_value()?;
                        }
                    }
                }
                Ok(probes)
            }
        }
        deserializer.deserialize_struct("ProbesConfig", &PROBES_KEYS, Visitor)
    }
}

/// How hooks are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// fentry/fexit where the kernel allows them, else BTF tracepoints, else plain tracepoints.
    Auto,
    /// Only fentry/fexit (kinds without such a hook, like exec, use tracepoints).
    Fentry,
    /// Only tracepoints (BTF-typed, else plain).
    Tracepoint,
}

/// `[memory]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Which changes to report: `wx` (only those that matter) or `all`. Mappings made executable
    /// by `mmap` are reported either way when anonymous or writable, never otherwise.
    pub report: MemoryReport,
    /// Repeats of one (process, range, transition, operation) within this many milliseconds are
    /// counted into one event (`ksense.event.count`); 0 reports each one.
    pub coalesce_window_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { report: MemoryReport::Wx, coalesce_window_ms: 1000 }
    }
}

/// Which memory-protection changes to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryReport {
    /// Changes that leave memory writable and executable, make code writable, make written
    /// memory executable, or add exec to anonymous, stack or heap memory.
    Wx,
    /// Every change.
    All,
}

/// `[limits]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Size of the kernel ring buffer in bytes: a power of two, at least 64 KiB.
    pub ring_buffer_bytes: Spanned<u32>,
    /// Events held between the ring-buffer reader and the pipeline, and records in each
    /// sink's queue. When the pipeline's are all taken, the reader pauses and events wait in
    /// the ring buffer; a sink whose queue is full drops (and counts) what it cannot take.
    pub queue_events: Spanned<usize>,
    /// Bytes that events and records may hold between the reader, the pipeline and the sinks
    /// (see [`crate::budget`]); beyond it records are dropped and counted (`memory_budget`).
    pub memory_budget_bytes: Spanned<usize>,
    /// The ring buffer is read at most once per this many milliseconds: under load, events are
    /// read in batches, one wakeup per batch instead of one per event. 0: read every event at once.
    pub read_interval_ms: u64,
    /// Most events per second passed on per event kind and effective uid, e.g.
    /// `{ "process.exec" = 5000 }`; beyond it events are dropped and counted (`rate_limited`).
    /// Unlisted kinds are unlimited; module loads and W^X changes always pass (naming
    /// `kernel.module.load` is an error).
    pub rate_per_second: std::collections::BTreeMap<String, u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            ring_buffer_bytes: Spanned::new(0..0, 4 << 20),
            queue_events: Spanned::new(0..0, 8192),
            memory_budget_bytes: Spanned::new(0..0, crate::budget::DEFAULT_BYTES),
            read_interval_ms: 10,
            rate_per_second: Default::default(),
        }
    }
}

/// The smallest `[limits] memory_budget_bytes`: below it, a few long command lines would fill it.
const MIN_MEMORY_BUDGET: usize = 1 << 20;

/// A configuration that could not be read or is invalid.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path`, or [`DEFAULT_PATH`] if it exists, or else returns the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::from_file(path),
            None if Path::new(DEFAULT_PATH).exists() => Config::from_file(Path::new(DEFAULT_PATH)),
            None => Ok(Config::default()),
        }
    }

    /// Reads and validates one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            position: None,
            message: format!("cannot read the configuration: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`, which came from `path` (used in errors only).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let error = |span: Option<Range<usize>>, message: String| ConfigError {
            path: path.to_owned(),
            position: span.map(|s| line_col(text, s.start)),
            message,
        };
        // The path of the value at fault (`probes.fork`), for errors the parser words without
        // its key (a wrong type, a number out of range).
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            // A value read as `Spanned` adds a segment of toml's own to the path.
            let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let e = e.into_inner();
            let message = with_suggestion(e.message());
            error(e.span(), if key == "." { message } else { format!("{key}: {message}") })
        })?;
        let ring = &config.limits.ring_buffer_bytes;
        if !ring.get_ref().is_power_of_two() || *ring.get_ref() < 65536 {
            return Err(error(
                Some(ring.span()),
                format!(
                    "limits.ring_buffer_bytes = {}: expected a power of two of at least 65536",
                    ring.get_ref()
                ),
            ));
        }
        let kinds: Vec<&str> = ksense_abi::EventKind::ALL.iter().map(|k| k.name()).collect();
        if let Some(unknown) = config.limits.rate_per_second.keys().find(|k| !kinds.contains(&k.as_str())) {
            return Err(error(None, format!("limits.rate_per_second: unknown event kind {unknown:?}, expected one of {kinds:?}")));
        }
        let module = ksense_abi::EventKind::ModuleLoad.name();
        if config.limits.rate_per_second.contains_key(module) {
            return Err(error(None, format!("limits.rate_per_second: {module:?} is never rate limited (a storm of other events must not hide a module load); remove it")));
        }
        let queue = &config.limits.queue_events;
        if *queue.get_ref() == 0 {
            return Err(error(Some(queue.span()), "limits.queue_events must be at least 1".to_owned()));
        }
        let budget = &config.limits.memory_budget_bytes;
        if *budget.get_ref() < MIN_MEMORY_BUDGET {
            return Err(error(
                Some(budget.span()),
                format!("limits.memory_budget_bytes = {}: expected at least {MIN_MEMORY_BUDGET} (1 MiB)", budget.get_ref()),
            ));
        }
        let environment = &config.probes.environment;
        if let Some(bad) = environment.get_ref().iter().find(|name| !is_variable_name(name)) {
            return Err(error(
                Some(environment.span()),
                format!(
                    "probes.environment: {bad:?} is not a variable name ksense reports: expected 1 to \
                     {MAX_VARIABLE_NAME} letters, digits and underscores, not starting with a digit"
                ),
            ));
        }
        for (key, value) in [("cache_entries", &config.identity.cache_entries), ("queue_files", &config.identity.queue_files)] {
            if *value.get_ref() == 0 {
                return Err(error(Some(value.span()), format!("identity.{key} must be at least 1")));
            }
        }
        let status = &config.telemetry.status_interval_s;
        if *status.get_ref() == 0 {
            return Err(error(Some(status.span()), "telemetry.status_interval_s must be at least 1".to_owned()));
        }
        if let Err(e) = config.sinks.otlp.check() {
            return Err(error(otlp_key_span(text, e.key), format!("sinks.otlp.{}: {}", e.key, e.message)));
        }
        Ok(config)
    }
}

/// Where `key` of `[sinks.otlp]` is set in `text`, if it is.
fn otlp_key_span(text: &str, key: &str) -> Option<Range<usize>> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        sinks: Sinks,
    }
    #[derive(Deserialize, Default)]
    struct Sinks {
        #[serde(default)]
        otlp: std::collections::BTreeMap<String, Spanned<toml::Value>>,
    }
    let file: File = toml::from_str(text).ok()?;
    file.sinks.otlp.get(key).map(Spanned::span)
}

/// Longest `[probes] environment` name: its journald field,
/// `PROCESS_ENVIRONMENT_VARIABLE_<NAME>`, stays within journald's 64 characters.
const MAX_VARIABLE_NAME: usize = 35;

/// Whether `name` can be reported: a portable variable name (letters, digits and `_`, not
/// starting with a digit) whose attribute name is unambiguous (no `.`) and short enough.
fn is_variable_name(name: &str) -> bool {
    (1..=MAX_VARIABLE_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Sections of earlier releases and where their keys are now.
const RENAMED: &[(&str, &str)] = &[("output", "`[sinks.stdout]` (the same keys)")];

/// serde's "unknown field `forkk`, expected one of `attach`, `fork`, ..." with
/// "; did you mean `fork`?" added when one expected key is close to the unknown one.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.trim_end().to_owned() };
    let Some((unknown, expected)) = rest.split_once('`') else { return message.trim_end().to_owned() };
    if let Some((_, now)) = RENAMED.iter().find(|(old, _)| *old == unknown) {
        return format!("{}; this section is now {now}", message.trim_end());
    }
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|key| (edit_distance(unknown, key), key))
        .filter(|(d, key)| *d <= 2.max(key.len() / 3))
        .min();
    match best {
        Some((_, key)) => format!("{}; did you mean `{key}`?", message.trim_end()),
        None => message.trim_end().to_owned(),
    }
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::Severity, sinks::Enabled};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ksense/ksense.toml"))
    }

    #[test]
    fn environment_names_are_checked() {
        let names = parse("[probes]\nenvironment = [\"LD_PRELOAD\", \"http_proxy\"]").unwrap().probes.environment.into_inner();
        assert_eq!(names, ["LD_PRELOAD", "http_proxy"]);
        for bad in ["", "A=B", "A.B", "1A", "\u{e9}", &"A".repeat(36)] {
            let err = parse(&format!("[probes]\nenvironment = [{bad:?}]")).unwrap_err().to_string();
            assert!(err.contains("ksense.toml:2:15: probes.environment:"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.probes.attach, AttachMode::Auto);
        assert!(config.probes.enabled(EventKind::Fork) && config.probes.enabled(EventKind::Exec) && config.probes.enabled(EventKind::Exit));
        assert!(!config.probes.thread_exits);
        assert_eq!(*config.limits.ring_buffer_bytes.get_ref(), 4 << 20);
    }

    #[test]
    fn shipped_config_parses_to_the_defaults() {
        let text = include_str!("../../config/ksense.toml");
        let config = parse(text).unwrap();
        let defaults = Config::default();
        assert_eq!(config.probes.attach, defaults.probes.attach);
        assert_eq!(config.probes.thread_exits, defaults.probes.thread_exits);
        assert_eq!(config.probes.report_self, defaults.probes.report_self);
        assert_eq!(config.probes.enabled(EventKind::ModuleLoad), defaults.probes.enabled(EventKind::ModuleLoad));
        assert_eq!(config.probes.enabled(EventKind::MemoryProtect), defaults.probes.enabled(EventKind::MemoryProtect));
        assert_eq!(config.memory.report, defaults.memory.report);
        assert_eq!(config.memory.coalesce_window_ms, defaults.memory.coalesce_window_ms);
        assert_eq!(config.limits.ring_buffer_bytes.get_ref(), defaults.limits.ring_buffer_bytes.get_ref());
        assert_eq!(config.limits.queue_events.get_ref(), defaults.limits.queue_events.get_ref());
        assert_eq!(config.limits.memory_budget_bytes.get_ref(), defaults.limits.memory_budget_bytes.get_ref());
        assert_eq!(config.telemetry, defaults.telemetry);
        assert_eq!(config.identity, defaults.identity);
    }

    #[test]
    fn a_tiny_memory_budget_or_status_interval_is_located() {
        let err = parse("[limits]\nmemory_budget_bytes = 1000\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:23: ") && err.contains("at least 1048576"), "{err}");
        let err = parse("[telemetry]\nstatus_interval_s = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:21: ") && err.contains("at least 1"), "{err}");
        let err = parse("[identity]\nwait_ms = 5\ncache_entries = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:3:17: identity.cache_entries must be at least 1"), "{err}");
        let err = parse("[identity]\nhash = true\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `hash`"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[probes]\nfork = true\nforkk = false\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:3:1: "), "{err}");
        assert!(err.contains("forkk"), "{err}");
        assert!(err.ends_with("did you mean `fork`?"), "{err}");
        let err = parse("[output]\nformat = \"json\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:1:") && err.ends_with("this section is now `[sinks.stdout]` (the same keys)"), "{err}");
    }

    /// A value of the wrong type or out of range is named by its key, not only its line.
    #[test]
    fn a_wrong_type_names_its_key() {
        for (text, key) in [
            ("[probes]\nfork = \"yes\"\n", "probes.fork: "),
            ("[limits]\nqueue_events = -5\n", "limits.queue_events: "),
            ("[filters]\nexclude = { uid = [-1] }\n", "filters.exclude.uid[0]: "),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("/etc/ksense/ksense.toml:2:") && err.contains(key), "{text}: {err}");
        }
    }

    /// What the OTLP sink could not use is refused when the file is read (so by `check-config`
    /// and a reload too), with the line and key; an endpoint's credentials are not shown.
    #[test]
    fn an_unusable_otlp_setting_names_line_and_key() {
        for (line, key) in [
            ("endpoint = \"not a url\"", "endpoint"),
            ("endpoint = \"ftp://collector:4317\"", "endpoint"),
            ("headers = { \"bad header\" = \"x\" }", "headers"),
            ("headers = { authorization = \"a\\nb\" }", "headers"),
            ("timeout_ms = 0", "timeout_ms"),
            ("max_request_bytes = 10", "max_request_bytes"),
            ("batch_size = 0", "batch_size"),
        ] {
            let err = parse(&format!("[sinks.otlp]\nenabled = true\n{line}\n")).unwrap_err().to_string();
            assert!(err.starts_with("/etc/ksense/ksense.toml:3:"), "{line}: {err}");
            assert!(err.contains(&format!("sinks.otlp.{key}: ")), "{line}: {err}");
        }
        let err = parse("[sinks.otlp]\nendpoint = \"http://user:secret@\"\n").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(parse("[sinks.otlp]\nendpoint = \"https://collector.example:4317\"\nheaders = { authorization = \"Bearer x\" }\n").is_ok());
    }

    #[test]
    fn bad_value_names_line_and_expected_values() {
        let err = parse("[probes]\nattach = \"kprobe\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:10: "), "{err}");
        assert!(err.contains("fentry") && err.contains("tracepoint"), "{err}");
    }

    #[test]
    fn filter_events_name_known_kinds() {
        let config = parse("[filters]\nexclude = { comm = [\"x\"], events = [\"kernel.module.load\"] }\n").unwrap();
        let kinds: Vec<_> = config.filters.exclude.events.iter().flatten().map(|k| k.0).collect();
        assert_eq!(kinds, [ksense_abi::EventKind::ModuleLoad]);
        let err = parse("[filters]\n\nexclude = { comm = [\"x\"], events = [\"module.load\"] }\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:3:"), "{err}");
        assert!(err.contains("unknown event kind \"module.load\""), "{err}");
    }

    #[test]
    fn module_loads_cannot_be_rate_limited() {
        let err = parse("[limits]\nrate_per_second = { \"kernel.module.load\" = 10 }\n").unwrap_err().to_string();
        assert!(err.contains("never rate limited"), "{err}");
        assert!(parse("[limits]\nrate_per_second = { \"process.memory.protect\" = 10 }\n").is_ok());
    }

    #[test]
    fn enabled_takes_a_bool_or_auto() {
        assert_eq!(parse("[sinks.journald]\nenabled = false\n").unwrap().sinks.journald.enabled, Enabled::Fixed(false));
        assert_eq!(parse("[sinks.journald]\nenabled = \"auto\"\n").unwrap().sinks.journald.enabled, Enabled::Auto);
        let err = parse("[sinks.journald]\nenabled = \"yes\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:11: ") && err.contains("true, false or \"auto\""), "{err}");
    }

    #[test]
    fn a_sink_selection_names_known_kinds_and_severities() {
        let config = parse("[sinks.journald]\nevents = [\"process.exec\", \"kernel.module.load\"]\nmin_severity = \"warn\"\n").unwrap();
        let journald = &config.sinks.journald;
        let kinds: Vec<_> = journald.events.iter().flatten().map(|k| k.0).collect();
        assert_eq!(kinds, [ksense_abi::EventKind::Exec, ksense_abi::EventKind::ModuleLoad]);
        assert_eq!(journald.min_severity, Some(Severity::Warn));

        let err = parse("[sinks.file]\nevents = [\"process.exec\", \"process.exce\"]\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:"), "{err}");
        assert!(err.contains("unknown event kind \"process.exce\"") && err.contains("process.memory.protect"), "{err}");
        let err = parse("[sinks.otlp]\nmin_severity = \"error\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:16: ") && err.contains("info") && err.contains("warn"), "{err}");
    }

    #[test]
    fn keep_is_bounded_with_file_line_and_key() {
        assert_eq!(parse("[sinks.file]\nkeep = 100\n").unwrap().sinks.file.keep, 100);
        assert_eq!(parse("[sinks.file]\nkeep = 0\n").unwrap().sinks.file.keep, 0);
        let e = parse("[sinks.file]\nenabled = false\nkeep = 101\n").expect_err("refused").to_string();
        assert!(e.starts_with("/etc/ksense/ksense.toml:3:"), "{e}");
        assert!(e.contains("sinks.file.keep = 101") && e.contains("0 to 100"), "{e}");
    }

    #[test]
    fn invalid_ring_buffer_size_is_located() {
        let err = parse("[limits]\nring_buffer_bytes = 1000\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/ksense/ksense.toml:2:21: "), "{err}");
        assert!(err.contains("power of two"), "{err}");
    }
}
