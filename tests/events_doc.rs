//! docs/EVENTS.md is the users' contract: every attribute name defined in `shipper/src/schema.rs`
//! (the one place ksense's code names attributes) is documented there with a type, every
//! documented attribute exists in the schema, the documented types are the ones real events
//! carry on this kernel, and the journald `MESSAGE_ID`s are the ones ksense sends.
use std::collections::{BTreeMap, BTreeSet};

use ksense_e2e::{Ksense, attr, is, run_workload};
use serde_json::Value;

const EVENTS_MD: &str = include_str!("../docs/EVENTS.md");
const SCHEMA_RS: &str = include_str!("../shipper/src/schema.rs");

/// An attribute's type as docs/EVENTS.md writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Int,
    Bool,
    Str,
    StrArray,
}

impl Type {
    /// The type cell of an attribute table row, e.g. `string (hex, ``0x...``)`, `string[]`.
    fn parse(cell: &str) -> Option<Type> {
        let word: String = cell.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '[' || *c == ']').collect();
        match word.as_str() {
            "int" => Some(Type::Int),
            "bool" => Some(Type::Bool),
            "string" => Some(Type::Str),
            "string[]" => Some(Type::StrArray),
            _ => None,
        }
    }

    /// Whether a JSON line's attribute value has this type.
    fn admits(self, value: &Value) -> bool {
        match self {
            Type::Int => value.is_i64() || value.is_u64(),
            Type::Bool => value.is_boolean(),
            Type::Str => value.is_string(),
            Type::StrArray => value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }
}

/// Every row of an attribute table in docs/EVENTS.md: `| `name` | type | on | meaning |`.
fn documented() -> BTreeMap<String, Type> {
    let mut attributes = BTreeMap::new();
    for line in EVENTS_MD.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // A table row splits into ["", cell, cell, ..., ""].
        let [_, name, ty, _on, _meaning, ..] = cells.as_slice() else { continue };
        let (Some(name), Some(ty)) = (name.strip_prefix('`').and_then(|n| n.strip_suffix('`')), Type::parse(ty)) else {
            continue;
        };
        assert!(attributes.insert(name.to_owned(), ty).is_none(), "docs/EVENTS.md lists `{name}` twice");
    }
    attributes
}

/// The first cell of every row of the tables headed `| event name | ...` (the event kinds, and
/// ksense's own records).
fn documented_events() -> BTreeSet<String> {
    let mut events = BTreeSet::new();
    let mut in_table = false;
    for line in EVENTS_MD.lines() {
        if line.starts_with("| event name |") {
            in_table = true;
        } else if !line.starts_with('|') {
            in_table = false;
        } else if in_table && let Some(name) = line.split('|').nth(1).and_then(|c| c.trim().strip_prefix('`')?.strip_suffix('`')) {
            events.insert(name.to_owned());
        }
    }
    events
}

/// `| `event name` | `message id` |` rows.
fn documented_message_ids() -> BTreeMap<String, String> {
    EVENTS_MD
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let [_, name, id, _] = cells.as_slice() else { return None };
            let id = id.strip_prefix('`')?.strip_suffix('`')?;
            (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (name.trim_matches('`').to_owned(), id.to_owned()))
        })
        .collect()
}

/// The documented type of attribute `name`: its own row, or the row of a pattern it fits
/// (`process.environment_variable.<NAME>` for `process.environment_variable.LD_PRELOAD`).
fn documented_type(documented: &BTreeMap<String, Type>, name: &str) -> Option<Type> {
    documented.get(name).copied().or_else(|| {
        documented.iter().find_map(|(pattern, ty)| {
            let (prefix, suffix) = pattern.split_once("<NAME>")?;
            let variable = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!variable.is_empty() && !variable.contains('.')).then_some(*ty)
        })
    })
}

/// Every `pub const NAME: &str = "attribute";` of schema.rs.
fn schema() -> BTreeSet<String> {
    SCHEMA_RS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": &str = \"")?.1.strip_suffix("\";").map(str::to_owned))
        .collect()
}

#[test]
fn every_schema_attribute_is_documented_and_every_documented_one_exists() {
    let (documented, events, schema) = (documented(), documented_events(), schema());
    assert!(schema.len() > 30, "schema.rs was not read right: {schema:?}");
    assert!(events.contains("process.exec"), "docs/EVENTS.md's event tables were not read right: {events:?}");
    // schema.rs also names ksense's own records (their event names): those are in an event table.
    let undocumented: Vec<_> = schema.iter().filter(|n| !documented.contains_key(*n) && !events.contains(*n)).collect();
    let unknown: Vec<_> = documented.keys().filter(|n| !schema.contains(*n)).collect();
    assert!(undocumented.is_empty(), "in schema.rs but not in docs/EVENTS.md's attribute tables: {undocumented:?}");
    assert!(unknown.is_empty(), "in docs/EVENTS.md but not in schema.rs: {unknown:?}");
}

#[test]
fn documented_message_ids_are_the_ones_journald_entries_carry() {
    use ksense::sinks::journald;
    let mut sent: BTreeMap<String, String> =
        ksense_abi::EventKind::ALL.iter().map(|&k| (k.name().to_owned(), journald::message_id(k).to_owned())).collect();
    sent.insert("ksense.loss".into(), journald::KSENSE_LOSS_MESSAGE_ID.into());
    sent.insert("ksense.status".into(), journald::KSENSE_STATUS_MESSAGE_ID.into());
    assert_eq!(documented_message_ids(), sent);
    assert_eq!(documented_events(), sent.keys().cloned().collect(), "every event, and only those, in the event tables");
}

/// Every attribute of every event ksense prints while a workload forks, execs, changes its own
/// code to writable and executable, and is killed by a signal, has its documented type.
#[test]
fn real_events_carry_the_documented_types() {
    let documented = documented();
    let ksense = Ksense::start(&[]);
    let (_, pid) = run_workload(&["mprotect-text-rwx"]);
    let killed = std::process::Command::new("sh").args(["-c", "kill -KILL $$"]).status().unwrap();
    assert!(!killed.success());
    ksense.wait_for("the workload's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let stopped = ksense.stop();
    let mut kinds = BTreeSet::new();
    let mut checked = BTreeSet::new();
    for event in stopped.events.iter().chain(&stopped.own) {
        kinds.insert(event["event.name"].as_str().unwrap_or_default().to_owned());
        for (name, value) in event["attributes"].as_object().expect("attributes") {
            let ty = documented_type(&documented, name).unwrap_or_else(|| panic!("`{name}` is not in docs/EVENTS.md: {event}"));
            assert!(ty.admits(value), "`{name}` is documented as {ty:?} but is {value}: {event}");
            checked.insert(name.clone());
        }
    }
    for kind in ["process.fork", "process.exec", "process.exit", "process.memory.protect", "ksense.status"] {
        assert!(kinds.contains(kind), "no {kind} event seen, so its attributes went unchecked: {kinds:?}");
    }
    for name in ["ksense.process.exit.signal", "ksense.memory.wx", "process.command_args", "ksense.clone.flags", "ksense.status.probes", "ksense.process.executable.sha256"] {
        assert!(checked.contains(name), "`{name}` never seen: {checked:?}");
    }
}
