//! `chronik bench compare BASELINE CURRENT`: what got worse, per leader and
//! in total, judged on floor-normalized p99 (p99 / the machine's floor in
//! the same run), since absolute times differ between machines.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::report::{GroupReport, Report, SCHEMA};

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The baseline report (JSON from --json).
    pub baseline: PathBuf,
    /// The report to judge; given several runs, the median one (by total
    /// p99 / floor) is judged, so one noisy run does not decide.
    #[arg(required = true, num_args = 1..)]
    pub current: Vec<PathBuf>,
    /// Fail (exit 1) when a p99 / floor ratio grew by more than this many percent.
    #[arg(long, default_value_t = 50.0)]
    pub max_regression: f64,
}

/// One compared row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scope: String,
    pub base: f64,
    pub current: f64,
    /// Percent change of the ratio (positive = worse).
    pub change_pct: f64,
    pub regressed: bool,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Whether rows compare floor-normalized p99 (else absolute p99 in µs).
    pub normalized: bool,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.rows.iter().any(|r| r.regressed)
    }

    pub fn render(&self, max_regression: f64) -> String {
        let mut out = String::new();
        let what = if self.normalized {
            "p99 / floor"
        } else {
            "p99 (us, no floor in one report)"
        };
        let _ = writeln!(
            out,
            "{:<10} {:>14} {:>14} {:>9}  ({what}; limit +{max_regression}%)",
            "scope", "baseline", "current", "change"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<10} {:>14.3} {:>14.3} {:>+8.1}%{}",
                r.scope,
                r.base,
                r.current,
                r.change_pct,
                if r.regressed { "  REGRESSED" } else { "" }
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

fn metric(g: &GroupReport, normalized: bool) -> Option<f64> {
    if g.latency.count == 0 {
        return None;
    }
    if normalized {
        g.p99_over_floor
    } else {
        Some(g.latency.p99_us)
    }
}

fn row(scope: String, base: f64, current: f64, max_regression: f64) -> Row {
    let change_pct = if base > 0.0 {
        (current / base - 1.0) * 100.0
    } else {
        0.0
    };
    Row {
        scope,
        base,
        current,
        change_pct,
        regressed: change_pct > max_regression,
    }
}

/// Compares `current` with `base`: the total and every leader present in both.
pub fn compare(base: &Report, current: &Report, max_regression: f64) -> Comparison {
    let normalized = base.floor.is_some() && current.floor.is_some();
    let mut c = Comparison {
        normalized,
        ..Comparison::default()
    };
    if !normalized {
        c.notes
            .push("a report has no floor: comparing absolute p99".into());
    }
    if base.kind != current.kind {
        c.notes.push(format!(
            "comparing a {} report with a {} report",
            base.kind, current.kind
        ));
    }
    if base.config.acks != current.config.acks || base.config.rate != current.config.rate {
        c.notes
            .push("acks or rate differ between the reports".into());
    }
    match (
        metric(&base.total, normalized),
        metric(&current.total, normalized),
    ) {
        (Some(b), Some(cur)) => c.rows.push(row("total".into(), b, cur, max_regression)),
        _ => c
            .notes
            .push("no latency samples in a total: nothing to compare".into()),
    }
    for bl in &base.leaders {
        let scope = format!("leader {}", bl.broker_id);
        match current.leaders.iter().find(|l| l.broker_id == bl.broker_id) {
            Some(cl) => {
                if let (Some(b), Some(cur)) =
                    (metric(&bl.stats, normalized), metric(&cl.stats, normalized))
                {
                    c.rows.push(row(scope, b, cur, max_regression));
                }
            }
            None => c
                .notes
                .push(format!("{scope} is missing from the current report")),
        }
    }
    for cl in &current.leaders {
        if !base.leaders.iter().any(|l| l.broker_id == cl.broker_id) {
            c.notes.push(format!(
                "leader {} is new in the current report",
                cl.broker_id
            ));
        }
    }
    c
}

fn load(path: &PathBuf) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let schema = value
        .get("schema")
        .and_then(|s| s.as_str())
        .unwrap_or("none");
    if schema != SCHEMA {
        return Err(format!(
            "{}: schema {schema:?}, expected {SCHEMA:?}",
            path.display()
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))
}

/// The median of several runs by total p99 / floor (absolute p99 when a
/// run has no floor); the upper one of the two middle runs for an even count.
pub fn median_run(mut runs: Vec<Report>) -> Option<Report> {
    let key = |r: &Report| r.total.p99_over_floor.unwrap_or(r.total.latency.p99_us);
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle)
}

/// Runs `compare`; exit code 0 ok, 1 regressed, 2 unreadable input.
pub fn main(args: &CompareArgs) -> i32 {
    let loaded = std::iter::once(&args.baseline)
        .chain(&args.current)
        .map(load)
        .collect::<Result<Vec<Report>, String>>();
    let mut reports = match loaded {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chronik bench compare: {e}");
            return 2;
        }
    };
    let base = reports.remove(0);
    let runs = reports.len();
    let Some(current) = median_run(reports) else {
        eprintln!("chronik bench compare: no current report");
        return 2;
    };
    if runs > 1 {
        println!("judging the median of {runs} runs");
    }
    let c = compare(&base, &current, args.max_regression);
    print!("{}", c.render(args.max_regression));
    if c.rows.is_empty() {
        eprintln!("chronik bench compare: nothing comparable");
        return 2;
    }
    if c.regressed() {
        println!("REGRESSION beyond +{}%", args.max_regression);
        1
    } else {
        println!("ok: within +{}%", args.max_regression);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::report::*;
    use crate::stats::Summary;

    fn group(p99_us: f64, floor_us: f64) -> GroupReport {
        GroupReport {
            records: 100,
            latency: Summary {
                count: 100,
                p99_us,
                ..Summary::default()
            },
            p99_over_floor: Some(p99_us / floor_us),
            ..GroupReport::default()
        }
    }

    fn report(total_p99: f64, leaders: &[(i32, f64)], floor_us: f64) -> Report {
        Report {
            schema: SCHEMA.into(),
            kind: "produce".into(),
            started_unix_ms: 0,
            config: Config {
                bootstrap: None,
                embedded: true,
                brokers_requested: 1,
                topic: "t".into(),
                partitions: 1,
                replication_factor: 1,
                acks: "all".into(),
                record_size: 1,
                rate: 1.0,
                batch_records: 1,
                linger_ms: None,
                connections: 1,
                max_in_flight: 1,
                duration_s: 1.0,
                warmup_s: 0.0,
                request_timeout_s: 1.0,
            },
            versions: VersionsInfo::default(),
            machine: Machine::default(),
            cluster: ClusterInfo::default(),
            floor: Some(FloorInfo {
                dir: ".".into(),
                fsync_4k: Summary::default(),
                loopback_rtt: Summary::default(),
                stall_window_ms: 0.0,
                fsync_4k_stall_counted: Summary::default(),
                loopback_rtt_stall_counted: Summary::default(),
                floor_p99_us: floor_us,
            }),
            disk_bandwidth: None,
            harness: Harness::default(),
            records: RecordCounts::default(),
            total: group(total_p99, floor_us),
            leaders: leaders
                .iter()
                .map(|&(id, p99)| LeaderReport {
                    broker_id: id,
                    partitions: vec![0],
                    stats: group(p99, floor_us),
                })
                .collect(),
            partitions: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn judges_floor_normalized_p99_per_leader_and_total() {
        let base = report(1000.0, &[(1, 1000.0), (2, 1000.0)], 100.0);
        // Twice as slow in absolute terms on a machine with twice the floor:
        // no regression.
        let same = report(2000.0, &[(1, 2000.0), (2, 2000.0)], 200.0);
        let c = compare(&base, &same, 20.0);
        assert!(c.normalized);
        assert!(!c.regressed(), "{c:?}");
        assert_eq!(c.rows.len(), 3);

        // Leader 2 got 50 % worse relative to the floor.
        let worse = report(1100.0, &[(1, 1000.0), (2, 1500.0)], 100.0);
        let c = compare(&base, &worse, 20.0);
        assert!(c.regressed());
        let rows: Vec<_> = c
            .rows
            .iter()
            .filter(|r| r.regressed)
            .map(|r| r.scope.as_str())
            .collect();
        assert_eq!(rows, vec!["leader 2"]);
        assert!((c.rows[0].change_pct - 10.0).abs() < 1e-9);
        assert!(c.render(20.0).contains("REGRESSED"));
        // A looser limit lets it pass.
        assert!(!compare(&base, &worse, 60.0).regressed());
    }

    #[test]
    fn improvements_never_fail_and_missing_leaders_are_noted() {
        let base = report(1000.0, &[(1, 1000.0), (3, 1000.0)], 100.0);
        let better = report(500.0, &[(1, 500.0), (2, 500.0)], 100.0);
        let c = compare(&base, &better, 0.0);
        assert!(!c.regressed());
        assert!(c.notes.iter().any(|n| n.contains("leader 3 is missing")));
        assert!(c.notes.iter().any(|n| n.contains("leader 2 is new")));
    }

    #[test]
    fn several_runs_are_judged_by_their_median() {
        let runs = vec![
            report(9000.0, &[], 100.0),
            report(1000.0, &[], 100.0),
            report(1200.0, &[], 100.0),
        ];
        let m = median_run(runs).unwrap();
        assert_eq!(m.total.latency.p99_us, 1200.0);
        let even = vec![report(1.0, &[], 1.0), report(3.0, &[], 1.0)];
        assert_eq!(median_run(even).unwrap().total.latency.p99_us, 3.0);
        assert!(median_run(Vec::new()).is_none());
    }

    #[test]
    fn without_a_floor_absolute_p99_is_compared() {
        let base = report(1000.0, &[], 100.0);
        let mut cur = report(1300.0, &[], 100.0);
        cur.floor = None;
        let c = compare(&base, &cur, 20.0);
        assert!(!c.normalized);
        assert_eq!(c.rows[0].base, 1000.0);
        assert!(c.regressed());
    }
}
