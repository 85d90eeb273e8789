//! The markdown report: one table per workload with the arms as columns (medians over pairs,
//! ratios to the `none` run of the same pair), then every run.
use std::fmt::Write;

use ksense_e2e::stats::{median, range};

use crate::{
    arms::{Arm, Measured},
    workload::{Outcome, Tally, Workload},
};

/// One workload run beside one arm.
pub struct Run {
    /// What ran.
    pub workload: Workload,
    /// Beside what.
    pub arm: Arm,
    /// Which pair (1-based): the `none` run of the same pair is its baseline.
    pub pair: usize,
    /// What the workload and the agent reported, or why the run failed.
    pub result: Result<Sample, String>,
}

/// A successful run.
pub struct Sample {
    /// The workload's own measurement.
    pub outcome: Outcome,
    /// The agent's, except for [`Arm::None`].
    pub agent: Option<Measured>,
}

impl Run {
    fn sample(&self) -> Option<&Sample> {
        self.result.as_ref().ok()
    }

    fn agent(&self) -> Option<&Measured> {
        self.sample()?.agent.as_ref()
    }

    /// Time per op over the `none` run's of the same pair.
    fn ratio(&self, runs: &[Run]) -> Option<f64> {
        let baseline =
            runs.iter().find(|r| r.workload == self.workload && r.pair == self.pair && r.arm == Arm::None)?;
        Some(self.sample()?.outcome.us_per_op() / baseline.sample()?.outcome.us_per_op())
    }
}

/// The report: `title` lines, then a section per workload in `runs`, then every run.
pub fn markdown(title: &[String], runs: &[Run]) -> String {
    let mut out = String::new();
    for line in title {
        writeln!(out, "{line}").unwrap();
    }
    let arms: Vec<Arm> = Arm::ALL.into_iter().filter(|a| runs.iter().any(|r| r.arm == *a)).collect();
    for workload in Workload::ALL.into_iter().filter(|w| runs.iter().any(|r| r.workload == *w)) {
        let ops =
            runs.iter().filter(|r| r.workload == workload).find_map(|r| Some(r.sample()?.outcome.ops)).unwrap_or(0);
        writeln!(out, "\n### {} ({} ops per run; one op: {})\n", workload.name(), thousands(ops), workload.op())
            .unwrap();
        writeln!(out, "| | {} |", arms.iter().map(|a| a.name()).collect::<Vec<_>>().join(" | ")).unwrap();
        writeln!(out, "| --- |{}", " ---: |".repeat(arms.len())).unwrap();
        let of = |arm: Arm| runs.iter().filter(move |r| r.workload == workload && r.arm == arm);
        let row = |out: &mut String, name: &str, cell: &dyn Fn(Arm) -> Option<String>| {
            let cells: Vec<String> = arms.iter().map(|&a| cell(a).unwrap_or_else(|| "-".into())).collect();
            writeln!(out, "| {name} | {} |", cells.join(" | ")).unwrap();
        };
        row(&mut out, "time per op, median (us)", &|a| {
            median(of(a).filter_map(|r| Some(r.sample()?.outcome.us_per_op()))).map(us)
        });
        row(&mut out, "ratio to none, median [min-max]", &|a| {
            let ratios: Vec<f64> = of(a).filter_map(|r| r.ratio(runs)).collect();
            let (min, max) = range(ratios.iter().copied())?;
            Some(format!("{:.3} [{min:.3}-{max:.3}]", median(ratios)?))
        });
        row(&mut out, "agent CPU per event handled (us)", &|a| {
            median(of(a).filter_map(|r| Some(r.agent()?.cpu_us as f64 / r.agent()?.handled.max(1) as f64))).map(us)
        });
        row(&mut out, "agent CPU per op (us)", &|a| {
            median(of(a).filter_map(|r| Some(r.agent()?.cpu_us as f64 / r.sample()?.outcome.ops as f64))).map(us)
        });
        row(&mut out, "journald + collector CPU per event handled (us)", &|a| {
            median(of(a).filter_map(|r| {
                let agent = r.agent()?;
                Some(agent.receivers_cpu_us? as f64 / agent.handled.max(1) as f64)
            }))
            .map(us)
        });
        row(&mut out, "agent peak RSS (MiB)", &|a| {
            of(a).filter_map(|r| Some(r.agent()?.peak_rss_kib)).max().map(|k| format!("{:.1}", k as f64 / 1024.0))
        });
        row(&mut out, "events handled per run, median (whole machine)", &|a| {
            median(of(a).filter_map(|r| Some(r.agent()?.handled as f64))).map(|n| thousands(n as u64))
        });
        row(&mut out, "workload events generated / delivered / lost (counted, whole machine), all pairs", &|a| {
            let (mut generated, mut delivered, mut lost) = (0, 0, 0);
            for r in of(a) {
                let (sample, agent) = (r.sample()?, r.agent()?);
                generated += workload.generated(sample.outcome.ops).total();
                delivered += agent.delivered.as_ref()?.total();
                lost += agent.lost;
            }
            Some(format!("{} / {} / {}", thousands(generated), thousands(delivered), thousands(lost)))
        });
        row(&mut out, "kernel-to-sink latency p50 / p99 (us), median", &|a| {
            let p50 = median(of(a).filter_map(|r| Some(r.agent()?.latency?.p50_us)))?;
            let p99 = median(of(a).filter_map(|r| Some(r.agent()?.latency?.p99_us)))?;
            Some(format!("{p50:.0} / {p99:.0}"))
        });
        if workload == Workload::ExecBurst {
            row(&mut out, "execs per second, median", &|a| {
                median(of(a).filter_map(|r| Some(1e6 / r.sample()?.outcome.us_per_op()))).map(|n| thousands(n as u64))
            });
        }
        row(&mut out, "failed runs", &|a| {
            let failed = of(a).filter(|r| r.result.is_err()).count();
            (failed > 0).then(|| format!("{failed} of {}", of(a).count()))
        });
    }
    writeln!(out, "\n### Every run\n").unwrap();
    let columns = "workload | pair | arm | us/op | ratio | agent CPU (ms) | peak RSS (MiB) | handled | generated \
                   | delivered (forks/execs/exits/mprotects) | lost";
    writeln!(out, "| {columns} |").unwrap();
    writeln!(out, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |").unwrap();
    for r in runs {
        let (workload, arm, pair) = (r.workload.name(), r.arm.name(), r.pair);
        let Some(sample) = r.sample() else {
            let reason = r.result.as_ref().err().map(|e| e.replace('\n', " ").replace('|', "/")).unwrap_or_default();
            writeln!(out, "| {workload} | {pair} | {arm} | failed: {reason} |||||||").unwrap();
            continue;
        };
        let ratio = r.ratio(runs).map(|x| format!("{x:.3}")).unwrap_or_default();
        let generated = thousands(r.workload.generated(sample.outcome.ops).total());
        let agent_cells = match &sample.agent {
            None => format!(" |  |  | {generated} |  | "),
            Some(a) => format!(
                "{:.1} | {:.1} | {} | {generated} | {} | {}",
                a.cpu_us as f64 / 1000.0,
                a.peak_rss_kib as f64 / 1024.0,
                thousands(a.handled),
                a.delivered.as_ref().map(by_kind).unwrap_or_default(),
                format!("{} {}", thousands(a.lost), a.lost_by_cause).trim_end()
            ),
        };
        writeln!(out, "| {workload} | {pair} | {arm} | {} | {ratio} | {agent_cells} |", us(sample.outcome.us_per_op()))
            .unwrap();
    }
    out
}

fn by_kind(t: &Tally) -> String {
    format!("{} ({}/{}/{}/{})", thousands(t.total()), t.forks, t.execs, t.exits, t.mprotects)
}

/// Microseconds with the precision that matters at their size.
fn us(x: f64) -> String {
    if x < 10.0 { format!("{x:.2}") } else { format!("{x:.1}") }
}

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
