//! docs/EVENTS.md is the users' contract: every attribute name defined in `shipper/src/schema.rs`
//! (the one place ksense's code names attributes) is documented there with a type, every
//! documented attribute exists in the schema, and the documented types are the ones real events
//! carry on this kernel.
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

/// Every `pub const NAME: &str = "attribute";` of schema.rs.
fn schema() -> BTreeSet<String> {
    SCHEMA_RS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": &str = \"")?.1.strip_suffix("\";").map(str::to_owned))
        .collect()
}

#[test]
fn every_schema_attribute_is_documented_and_every_documented_one_exists() {
    let (documented, schema) = (documented(), schema());
    assert!(schema.len() > 30, "schema.rs was not read right: {schema:?}");
    let undocumented: Vec<_> = schema.iter().filter(|n| !documented.contains_key(*n)).collect();
    let unknown: Vec<_> = documented.keys().filter(|n| !schema.contains(*n)).collect();
    assert!(undocumented.is_empty(), "in schema.rs but not in docs/EVENTS.md's attribute tables: {undocumented:?}");
    assert!(unknown.is_empty(), "in docs/EVENTS.md but not in schema.rs: {unknown:?}");
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
    for event in &stopped.events {
        kinds.insert(event["event.name"].as_str().unwrap_or_default().to_owned());
        for (name, value) in event["attributes"].as_object().expect("attributes") {
            let ty = documented.get(name).unwrap_or_else(|| panic!("`{name}` is not in docs/EVENTS.md: {event}"));
            assert!(ty.admits(value), "`{name}` is documented as {ty:?} but is {value}: {event}");
            checked.insert(name.clone());
        }
    }
    for kind in ["process.fork", "process.exec", "process.exit", "process.memory.protect"] {
        assert!(kinds.contains(kind), "no {kind} event seen, so its attributes went unchecked: {kinds:?}");
    }
    for name in ["ksense.process.exit.signal", "ksense.memory.wx", "process.command_args", "ksense.clone.flags"] {
        assert!(checked.contains(name), "`{name}` never seen: {checked:?}");
    }
}
