//! `process.memory.protect` end to end on this kernel: W^X and code patching are reported with
//! their region and old protection, harmless changes only with `report = "all"`, failures with
//! their errno, and a toggling loop is coalesced without loss, also when there are more ranges
//! than the coalescing map holds. Executable mappings made by `mmap` are reported as such in
//! each attach mode this kernel allows, and read-only executable file mappings are not.
use ksense_e2e::{Ksense, Stopped, attr, checks, is, printed_hex, run_workload, temp_config};
use serde_json::Value;

fn changes(events: &[Value], pid: u32) -> Vec<&Value> {
    events.iter().filter(|e| is(e, "process.memory.protect") && attr(e, "process.pid") == pid).collect()
}

/// The change reported for `page` by `pid`.
fn change_at<'a>(events: &'a [Value], pid: u32, page: u64, what: &str) -> &'a Value {
    let page = format!("{page:#x}");
    events
        .iter()
        .find(|e| is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.start") == page.as_str())
        .unwrap_or_else(|| panic!("{what}: no change reported for page {page}: {:?}", changes(events, pid)))
}

fn run_and_stop(ksense: Ksense, command: &str) -> (Stopped, u32, u64) {
    let (out, pid) = run_workload(&[command]);
    let page = printed_hex(&out, "page");
    ksense.wait_for("the workload's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    (ksense.stop(), pid, page)
}

#[test]
fn own_text_made_rwx_is_main_code_wx_at_warn() {
    let ksense = Ksense::start(&[]);
    let rwx = checks::own_text_made_rwx_is_main_code_wx_at_warn(&ksense);
    assert_eq!(attr(&rwx, "ksense.memory.result"), 0, "{rwx}");
    let exe = attr(&rwx, "process.executable.path").as_str().unwrap();
    assert_eq!(attr(&rwx, "ksense.memory.file.path"), exe, "{rwx}");
    ksense.stop();
}

#[test]
fn anonymous_code_made_executable_is_wx() {
    let ksense = Ksense::start(&[]);
    let rx = checks::anonymous_code_made_executable_is_wx(&ksense);
    assert_eq!(attr(&rx, "ksense.memory.protection.old"), "rw-", "{rx}");
    assert_eq!(rx["severity"], "WARN", "{rx}");
    ksense.stop();
}

/// In each attach mode: an anonymous RWX mmap, private or shared, is reported as a W^X `mmap`,
/// an RW mmap written then made RX as an `mprotect` (and its mmap not at all), a writable
/// executable file mapping as an `mmap` and a read-only executable one not at all; each from
/// the hook `ksense probes` chose in that mode (a mapping from that hook's `mmap` program). A
/// mode whose hooks this kernel refuses is skipped, saying why.
#[test]
fn executable_mappings_are_reported_in_each_attach_mode() {
    let mut ran = 0;
    for mode in ["fentry", "tracepoint"] {
        let probes = checks::probes_report(mode);
        let Some(probe) = checks::chosen(&probes, "process.memory.protect") else {
            eprintln!("skipped in {mode} mode: this kernel attaches no process.memory.protect hook in it (see `ksense probes --attach {mode}`)");
            continue;
        };
        let ksense = Ksense::start(&["--attach", mode]);
        let events = [
            checks::anonymous_rwx_mapping_is_wx(&ksense),
            checks::shared_anonymous_rwx_mapping_is_wx(&ksense),
            checks::anonymous_code_made_executable_is_wx(&ksense),
            checks::only_writable_executable_file_mappings_are_reported(&ksense),
        ];
        let mmap_probe = match probe {
            "fentry/mprotect_fixup" => "fexit/mmap_region",
            "tracepoint/syscalls/sys_exit_mprotect" => "tracepoint/syscalls/sys_exit_mmap",
            other => panic!("{mode} mode: an unknown process.memory.protect hook {other}"),
        };
        for event in events {
            let expected = if attr(&event, "ksense.memory.operation") == "mmap" { mmap_probe } else { probe };
            assert_eq!(attr(&event, "ksense.probe"), expected, "{mode} mode: {event}");
        }
        ksense.stop();
        ran += 1;
    }
    assert!(ran > 0, "no attach mode has a process.memory.protect hook on this kernel");
}

/// One mprotect over a read-only file page and the written anonymous page after it: the
/// first VMA alone would call the change harmless (file, read -> read+exec), but the range
/// holds written memory made executable, so it is reported (with what is not known left out),
/// as W^X at WARN.
#[test]
fn a_change_over_two_mappings_is_not_judged_by_the_first() {
    let (stopped, pid, page) = run_and_stop(Ksense::start(&[]), "mprotect-span");
    let change = change_at(&stopped.events, pid, page, "file r-- + anonymous rw- -> r-x");
    assert_eq!(attr(change, "ksense.memory.length"), 8192, "{change}");
    assert_eq!(attr(change, "ksense.memory.protection.new"), "r-x", "{change}");
    if attr(change, "ksense.probe").as_str().is_some_and(|p| p.starts_with("tracepoint/")) {
        // The syscall tracepoints see the first VMA only: neither its protection nor its
        // region stands for the whole range, and the written page in it makes it W^X.
        assert_eq!(attr(change, "ksense.memory.region"), "unknown", "{change}");
        assert!(attr(change, "ksense.memory.protection.old").is_null(), "{change}");
        assert_eq!(attr(change, "ksense.memory.spans_mappings"), true, "{change}");
        assert_eq!(attr(change, "ksense.memory.wx"), true, "written memory made executable: {change}");
        assert_eq!(change["severity"], "WARN", "{change}");
    }
}

#[test]
fn read_only_change_is_reported_only_with_all() {
    let (stopped, pid, _) = run_and_stop(Ksense::start(&[]), "mprotect-anon-ro");
    assert!(changes(&stopped.events, pid).is_empty(), "reported by default: {:?}", changes(&stopped.events, pid));

    let config = temp_config("memory-all", checks::MEMORY_REPORT_ALL);
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    checks::read_only_change_is_reported_with_all(&ksense);
    ksense.stop();
}

#[test]
fn failed_call_reports_its_errno_with_all() {
    let config = temp_config("memory-bad", checks::MEMORY_REPORT_ALL);
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    checks::failed_call_reports_its_errno_with_all(&ksense);
    ksense.stop();
}

/// 100,000 RX/RW round trips: a handful of events whose counts add up to every transition,
/// and nothing lost.
#[test]
fn toggling_is_coalesced_without_loss() {
    const N: u64 = 100_000;
    let ksense = Ksense::start(&[]);
    let (out, events) = checks::toggling_is_coalesced(&ksense, N);
    let stopped = ksense.stop();
    eprintln!("toggler: {} ns per mprotect with ksense; {events} events for {} transitions", printed_hex(&out, "ns_per_call"), 2 * N);
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
}

/// More (range, transition)s seen twice in a row than the kernel's coalescing map holds (8,192):
/// once it is full, a change it has no entry for is written as its own record, and no entry
/// is pushed out with repeats it had counted: the counts add up to every transition.
#[test]
fn more_ranges_than_the_coalescing_map_holds_lose_no_repeat() {
    const PAGES: u64 = 5_000;
    // Up to 2 records a range (once the map is full), one more for the repeats of each entry:
    // room for them all on the one sink.
    let config = temp_config("spread", "[limits]\nmemory_budget_bytes = 268435456\nqueue_events = 100000\n[sinks.journald]\nenabled = false\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, pid) = run_workload(&["mprotect-spread", &PAGES.to_string()]);
    ksense.wait_for("the workload's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let stopped = ksense.stop();
    let events = changes(&stopped.events, pid);
    let total: u64 = events.iter().map(|e| attr(e, "ksense.event.count").as_u64().unwrap()).sum();
    let dropped = stopped.counter("lost_total") + stopped.counter("sink_stdout_queue_full") + stopped.counter("sink_stdout_memory_budget");
    assert_eq!(dropped, 0, "{}", stopped.stderr);
    assert_eq!(total, 4 * PAGES, "counts of {} events add up to {total}", events.len());
}
