//! The kernel lab: the real agent binary inside a stock Debian cloud kernel
//! booted under qemu (the host kernel has no `sch_netem`). The guest's
//! `/init` (faultline-kernel-lab, kernel-lab/src/guest.rs) runs the scenarios and prints
//! `FLTLAB` lines on the serial console; this test judges them:
//! every check ok, latency within ±2 % or ±1 ms (whichever is larger) of
//! what was asked on the destinations it was asked for, and every other
//! destination at its baseline.
//!
//! qemu runs with `-icount shift=0,sleep=off`: the guest clock counts
//! instructions and skips idle time, so RTTs measure the guest kernel, not
//! how busy the host is (see docs/agent.md, "Kernel lab").

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Instant};

/// What the lab is asked to inject (passed in as FLTLAB_DELAY_MS).
const DELAY_MS: u32 = 50;
/// Pings per destination and phase (FLTLAB_SAMPLES).
const SAMPLES: usize = 20;

// The guest's addresses (kernel-lab/src/guest.rs draws the network).
const DELAYED: &str = "10.201.1.2";
const SAME_LINK: &str = "10.201.1.3";
const OTHER_LINK: &str = "10.201.2.2";
const DELAYED6: &str = "fd00:201:1::2";
const SAME_LINK6: &str = "fd00:201:1::3";

/// Per RTT phase, each destination with the share of the delay it must
/// carry over its baseline (0: none, it stays at its baseline).
const PHASES: &[(&str, &[(&str, f64)])] = &[
    (
        "to",
        &[
            (DELAYED, 1.0),
            (SAME_LINK, 0.0),
            (OTHER_LINK, 0.0),
            (DELAYED6, 0.0),
            (SAME_LINK6, 0.0),
        ],
    ),
    (
        "restored",
        &[
            (DELAYED, 0.0),
            (SAME_LINK, 0.0),
            (OTHER_LINK, 0.0),
            (DELAYED6, 0.0),
            (SAME_LINK6, 0.0),
        ],
    ),
    (
        "all",
        &[
            (DELAYED, 1.0),
            (SAME_LINK, 1.0),
            (OTHER_LINK, 1.0),
            (DELAYED6, 1.0),
            (SAME_LINK6, 1.0),
        ],
    ),
    (
        "dual",
        &[
            (DELAYED, 1.0),
            (DELAYED6, 1.0),
            (SAME_LINK, 0.0),
            (OTHER_LINK, 0.0),
            (SAME_LINK6, 0.0),
        ],
    ),
    // Two faults: the delay to DELAYED, half of it to the SAME_LINK pair.
    (
        "pair",
        &[
            (DELAYED, 1.0),
            (SAME_LINK, 0.5),
            (SAME_LINK6, 0.5),
            (OTHER_LINK, 0.0),
            (DELAYED6, 0.0),
        ],
    ),
    (
        "pair-one",
        &[
            (DELAYED, 0.0),
            (SAME_LINK, 0.5),
            (SAME_LINK6, 0.5),
            (OTHER_LINK, 0.0),
            (DELAYED6, 0.0),
        ],
    ),
    ("recovered", &[(DELAYED, 0.0), (DELAYED6, 0.0)]),
];

/// Checks the guest must report (each ok); a missing one fails the test.
const CHECKS: &[&str] = &[
    "net-setup",
    "agent-applied-to",
    "netem-present-to",
    "agent-removed-to",
    "latency-effect-to",
    "qdisc-restored-to",
    "agent-applied-all",
    "netem-present-all",
    "agent-refreshed-all",
    "netem-on-new-interface",
    "agent-removed-all",
    "qdisc-restored-all",
    "agent-applied-dual",
    "agent-removed-dual",
    "qdisc-restored-dual",
    "agent-applied-pair",
    "agent-removed-pair-a",
    "agent-removed-pair-b",
    "qdisc-restored-pair",
    "foreign-refused",
    "foreign-untouched",
    "partition-baseline",
    "agent-applied-partition",
    "partition-table",
    "partition-rule-in",
    "partition-rule-out",
    "partition-cuts",
    "partition-scoped",
    "agent-removed-partition",
    "partition-effect",
    "partition-table-gone",
    "partition-healed",
    "network-applied",
    "network-loss-measured",
    "network-loss-scoped",
    "network-replaced",
    "network-duplicate-counted",
    "network-corrupt-counted",
    "network-rate-applied",
    "network-rate-measured",
    "network-rate-scoped",
    "network-removed",
    "network-expiring-applied",
    "network-expired",
    "stress-cgroups",
    "stress-cpu-applied",
    "stress-cpu-measured",
    "stress-memory-measured",
    "stress-memory-removed",
    "stress-oom-killed",
    "stress-oom-not-restarted",
    "stress-crash-stopped",
    "stress-crash-restarted",
    "stress-removed",
    "stress-expiring-applied",
    "stress-expired",
    "crash-applied-latency",
    "crash-applied-partition",
    "crash-applied-network",
    "crash-left-netem",
    "crash-left-table",
    "crash-restart-swept",
    "crash-no-netem",
    "crash-qdisc-restored",
    "crash-no-table",
    "crash-peer-reachable",
    "agent-sigterm",
    "bulkhead-run-measured",
    "bulkhead-throttled-measured",
    "bulkhead-no-cgroup-left",
];

#[test]
fn netem_network_partition_and_crash_recovery_on_a_stock_kernel() {
    let Some(console) = run_lab() else {
        return;
    };
    let lab = parse(&console).unwrap_or_else(|e| panic!("{e}\nconsole:\n{console}"));
    let (report, problems) = judge(&lab, f64::from(DELAY_MS));
    // Shown with --no-capture (and by nextest on failure): the measured figures.
    eprintln!("{report}");
    assert!(
        problems.is_empty(),
        "kernel lab failed:\n  {}\n\n{report}\nconsole:\n{console}",
        problems.join("\n  ")
    );
}

/// Boots the lab; `None` when it cannot run here (skipped, unless
/// FAULTLINE_REQUIRE_PEERS is set, as scripts/test.sh does).
fn run_lab() -> Option<String> {
    let skip = |why: String| -> Option<String> {
        faultline_testkit::skip_without_peer(&format!("kernel lab cannot run: {why}"));
        None
    };
    if !rustix::process::geteuid().is_root() {
        return skip("needs root".into());
    }
    let script = Path::new(env!("CARGO_BIN_EXE_faultline-kernel-lab-boot"));
    let agent = faultline_kernel_lab::agent_binary(faultline_kernel_lab::Profile::Dev)
        .unwrap_or_else(|e| panic!("the agent binary: {e}"));
    let cli = faultline_kernel_lab::cli_binary(faultline_kernel_lab::Profile::Dev)
        .unwrap_or_else(|e| panic!("the faultline binary: {e}"));
    let started = Instant::now();
    let out = match Command::new(script)
        .arg(agent)
        .arg(env!("CARGO_BIN_EXE_faultline-kernel-lab"))
        .arg(cli)
        .env("FLTLAB_DELAY_MS", DELAY_MS.to_string())
        .env("FLTLAB_SAMPLES", SAMPLES.to_string())
        .output()
    {
        Ok(out) => out,
        Err(e) => return skip(format!("cannot run {}: {e}", script.display())),
    };
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "kernel lab: {} in {:.1} s",
        out.status,
        started.elapsed().as_secs_f64()
    );
    match out.status.code() {
        Some(0) => Some(console),
        // The boot program's "cannot run here" (not root, apt unreachable, …).
        Some(3) => skip(stderr.trim().to_owned()),
        _ => panic!(
            "kernel lab broke ({}):\n{stderr}\nconsole:\n{console}",
            out.status
        ),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// What the guest reported.
#[derive(Debug, Default, PartialEq)]
struct Lab {
    config: BTreeMap<String, String>,
    /// (phase, destination) → RTT samples in ms, in order.
    rtts: BTreeMap<(String, String), Vec<f64>>,
    checks: Vec<Check>,
    done: bool,
}

/// `key=value` words.
fn fields(words: &str) -> BTreeMap<&str, &str> {
    words
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// Reads the `FLTLAB` lines of a console (anything else is ignored; a
/// malformed `FLTLAB` line is an error).
fn parse(console: &str) -> Result<Lab, String> {
    let mut lab = Lab::default();
    for raw in console.lines() {
        // The console may put terminal escapes or kernel messages first.
        let Some(at) = raw.find("FLTLAB ") else {
            continue;
        };
        let line = raw[at + "FLTLAB ".len()..].trim_end();
        let bad = || format!("malformed lab line: {line:?}");
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "config" => {
                for (k, v) in fields(rest) {
                    lab.config.insert(k.to_owned(), v.to_owned());
                }
            }
            "rtt" => {
                let f = fields(rest);
                let (Some(phase), Some(dst), Some(ms)) =
                    (f.get("phase"), f.get("dst"), f.get("ms"))
                else {
                    return Err(bad());
                };
                let ms: f64 = ms.parse().map_err(|_| bad())?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(bad());
                }
                lab.rtts
                    .entry(((*phase).to_owned(), (*dst).to_owned()))
                    .or_default()
                    .push(ms);
            }
            "check" => {
                // name=NAME ok|fail detail=free text to the end of the line
                let mut words = rest.splitn(3, ' ');
                let name = words.next().and_then(|w| w.strip_prefix("name="));
                let ok = match words.next() {
                    Some("ok") => true,
                    Some("fail") => false,
                    _ => return Err(bad()),
                };
                let detail = words
                    .next()
                    .and_then(|w| w.strip_prefix("detail="))
                    .unwrap_or("");
                lab.checks.push(Check {
                    name: name.ok_or_else(bad)?.to_owned(),
                    ok,
                    detail: detail.to_owned(),
                });
            }
            "done" => lab.done = true,
            _ => return Err(bad()),
        }
    }
    Ok(lab)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    n: usize,
    min: f64,
    median: f64,
}

fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    };
    Some(Stats {
        n: s.len(),
        min: s[0],
        median,
    })
}

/// How far a measured delay may be from the asked one: ±2 % or ±1 ms,
/// whichever is larger.
fn tolerance(delay_ms: f64) -> f64 {
    (delay_ms * 0.02).max(1.0)
}

/// A delayed destination: its median and its minimum each exceed the
/// baseline's by the delay, within the tolerance.
fn judge_delayed(base: Stats, got: Stats, delay_ms: f64) -> Result<(), String> {
    let tol = tolerance(delay_ms);
    let median = got.median - base.median;
    let min = got.min - base.min;
    if (median - delay_ms).abs() > tol || (min - delay_ms).abs() > tol {
        return Err(format!(
            "added {median:.3} ms (median) / {min:.3} ms (minimum), want {delay_ms} ± {tol} ms"
        ));
    }
    Ok(())
}

/// An undelayed destination: its median stays within the tolerance of its
/// baseline.
fn judge_undelayed(base: Stats, got: Stats, delay_ms: f64) -> Result<(), String> {
    let tol = tolerance(delay_ms);
    let median = got.median - base.median;
    if median.abs() > tol {
        return Err(format!(
            "median moved by {median:.3} ms from its baseline, want within ±{tol} ms"
        ));
    }
    Ok(())
}

/// Judges a lab run: a report of the figures, and the problems found.
fn judge(lab: &Lab, delay_ms: f64) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut report = String::from("phase      destination     n   min ms   median ms  verdict\n");
    if !lab.done {
        problems.push("the guest never printed FLTLAB done".to_owned());
    }
    match lab.config.get("delay_ms").map(|d| d.parse::<f64>()) {
        Some(Ok(d)) if d == delay_ms => {}
        other => problems.push(format!(
            "the guest injected delay_ms={other:?}, the test asked for {delay_ms}"
        )),
    }
    for c in lab.checks.iter().filter(|c| !c.ok) {
        problems.push(format!("check {} failed: {}", c.name, c.detail));
    }
    for name in CHECKS {
        if !lab.checks.iter().any(|c| c.name == *name) {
            problems.push(format!("check {name} was never reported"));
        }
    }
    let wanted = lab
        .config
        .get("samples")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(SAMPLES);
    let enough = (wanted * 3).div_ceil(4).max(1);
    let stats_of = |phase: &str, dst: &str, problems: &mut Vec<String>| {
        let key = (phase.to_owned(), dst.to_owned());
        let s = lab.rtts.get(&key).and_then(|v| stats(v));
        match s {
            Some(s) if s.n >= enough => Some(s),
            _ => {
                problems.push(format!(
                    "{phase} {dst}: {} RTT samples, want at least {enough}",
                    s.map_or(0, |s| s.n)
                ));
                None
            }
        }
    };
    for (phase, dsts) in PHASES {
        for &(dst, share) in *dsts {
            let (Some(base), Some(got)) = (
                stats_of("baseline", dst, &mut problems),
                stats_of(phase, dst, &mut problems),
            ) else {
                continue;
            };
            let is_delayed = share > 0.0;
            // The lab asks for whole milliseconds: half of 50 is 25.
            let want = (delay_ms * share).floor().max(1.0);
            let verdict = if is_delayed {
                judge_delayed(base, got, want)
            } else {
                judge_undelayed(base, got, delay_ms)
            };
            let _ = writeln!(
                report,
                "{phase:<10} {dst:<15} {:>2} {:>8.3} {:>11.3}  {} (baseline {:.3} / {:.3})",
                got.n,
                got.min,
                got.median,
                match (&verdict, is_delayed) {
                    (Ok(()), true) => format!("+{want} ms ok"),
                    (Ok(()), false) => "undelayed ok".to_owned(),
                    (Err(_), _) => "FAIL".to_owned(),
                },
                base.min,
                base.median,
            );
            if let Err(e) = verdict {
                problems.push(format!(
                    "{phase} {dst} ({}): {e}",
                    if is_delayed { "delayed" } else { "undelayed" }
                ));
            }
        }
    }
    // The other figures the guest measured, as it wrote them.
    report.push_str("\nmeasured:\n");
    for c in lab
        .checks
        .iter()
        .filter(|c| c.name.ends_with("-measured") || c.name.ends_with("-counted"))
    {
        let _ = writeln!(
            report,
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    (report, problems)
}

#[cfg(test)]
mod judging {
    use super::*;

    fn s(samples: &[f64]) -> Stats {
        stats(samples).expect("samples")
    }

    #[test]
    fn parses_lines_among_console_noise() {
        let console = "\x1bc\x1b[2J# t=2.9 init\r\n\
            FLTLAB config delay_ms=50 samples=20\r\n\
            [    3.1] some kernel message\n\
            FLTLAB rtt phase=baseline dst=10.201.1.2 ms=0.041\n\
            FLTLAB rtt phase=baseline dst=10.201.1.2 ms=0.043\n\
            FLTLAB rtt phase=to dst=fd00:201:1::2 ms=50.070\n\
            FLTLAB check name=net-setup ok detail=three namespaces joined\n\
            FLTLAB check name=partition-cuts fail detail=10.201.2.2 unreachable while partitioned\n\
            \x1b[2JFLTLAB done\r\n";
        let lab = parse(console).expect("parse");
        assert_eq!(lab.config["delay_ms"], "50");
        assert_eq!(
            lab.rtts[&("baseline".into(), DELAYED.into())],
            [0.041, 0.043]
        );
        assert_eq!(lab.rtts[&("to".into(), DELAYED6.into())], [50.07]);
        assert_eq!(
            lab.checks,
            [
                Check {
                    name: "net-setup".into(),
                    ok: true,
                    detail: "three namespaces joined".into()
                },
                Check {
                    name: "partition-cuts".into(),
                    ok: false,
                    detail: "10.201.2.2 unreachable while partitioned".into()
                }
            ]
        );
        assert!(lab.done);
        assert!(!parse("").expect("empty").done);
        for bad in [
            "FLTLAB rtt phase=to dst=x",
            "FLTLAB rtt phase=to dst=x ms=fast",
            "FLTLAB rtt phase=to dst=x ms=-1",
            "FLTLAB check name=x maybe detail=y",
            "FLTLAB check ok",
            "FLTLAB whatever",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stats_take_min_and_median() {
        assert_eq!(
            s(&[3.0, 1.0, 2.0]),
            Stats {
                n: 3,
                min: 1.0,
                median: 2.0
            }
        );
        assert_eq!(s(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn delay_within_two_percent_or_one_ms() {
        assert_eq!(tolerance(50.0), 1.0);
        assert_eq!(tolerance(300.0), 6.0);
        let base = s(&[0.04, 0.05, 0.04]);
        assert!(judge_delayed(base, s(&[50.05, 50.07, 50.07]), 50.0).is_ok());
        assert!(judge_delayed(base, s(&[50.9, 51.0, 51.0]), 50.0).is_ok());
        // Too much, too little, or only some packets delayed.
        assert!(judge_delayed(base, s(&[51.2, 51.3, 51.3]), 50.0).is_err());
        assert!(judge_delayed(base, s(&[48.5, 48.9, 49.0]), 50.0).is_err());
        assert!(judge_delayed(base, s(&[0.05, 50.07, 50.07]), 50.0).is_err());
        assert!(judge_delayed(base, s(&[0.05, 0.05, 0.04]), 50.0).is_err());
        assert!(judge_delayed(base, s(&[305.0, 305.0, 305.0]), 300.0).is_ok());
        assert!(judge_undelayed(base, s(&[0.04, 0.9, 0.05]), 50.0).is_ok());
        assert!(judge_undelayed(base, s(&[0.04, 50.07, 50.07]), 50.0).is_err());
        assert!(judge_undelayed(base, s(&[1.2, 1.3, 1.3]), 50.0).is_err());
    }

    /// A console as a good run prints it, with `delayed_by(phase, dst)` ms added.
    fn console(delayed_by: impl Fn(&str, &str) -> f64, done: bool) -> String {
        let mut c = String::from("FLTLAB config delay_ms=50 samples=20\n");
        let dsts = [DELAYED, SAME_LINK, OTHER_LINK, DELAYED6, SAME_LINK6];
        let phases = PHASES.iter().map(|(p, _)| *p);
        for phase in std::iter::once("baseline").chain(phases) {
            for dst in dsts {
                for i in 0..20 {
                    let ms = 0.04 + f64::from(i % 3) * 0.001 + delayed_by(phase, dst);
                    let _ = writeln!(c, "FLTLAB rtt phase={phase} dst={dst} ms={ms:.3}");
                }
            }
        }
        for name in CHECKS {
            let _ = writeln!(c, "FLTLAB check name={name} ok detail=d");
        }
        if done {
            c.push_str("FLTLAB done\n");
        }
        c
    }

    fn right(phase: &str, dst: &str) -> f64 {
        PHASES
            .iter()
            .find(|(p, _)| *p == phase)
            .and_then(|(_, dsts)| dsts.iter().find(|(d, _)| *d == dst))
            .map_or(0.0, |(_, share)| 50.0 * share + 0.03)
    }

    #[test]
    fn judges_a_whole_run() {
        let good = parse(&console(right, true)).expect("parse");
        let (report, problems) = judge(&good, 50.0);
        assert!(problems.is_empty(), "{problems:?}\n{report}");
        assert!(report.contains("to         10.201.1.2      20"), "{report}");

        let (_, p) = judge(&good, 100.0);
        assert!(
            p.iter().any(|p| p.contains("the test asked for 100")),
            "{p:?}"
        );

        let (_, p) = judge(&parse(&console(right, false)).expect("parse"), 50.0);
        assert_eq!(p, ["the guest never printed FLTLAB done"]);

        // The `to` fault leaking onto a destination on the same link.
        let leak = |phase: &str, dst: &str| {
            if phase == "to" && dst == SAME_LINK {
                50.03
            } else {
                right(phase, dst)
            }
        };
        let (_, p) = judge(&parse(&console(leak, true)).expect("parse"), 50.0);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("to 10.201.1.3 (undelayed)"), "{p:?}");

        // IPv6 not delayed by the dual-stack fault; removal not restoring;
        // the second fault of the pair given the first one's delay.
        let broken = |phase: &str, dst: &str| match (phase, dst) {
            ("dual", DELAYED6) => 0.0,
            ("restored", DELAYED) => 50.03,
            ("pair", SAME_LINK) => 50.03,
            _ => right(phase, dst),
        };
        let (_, p) = judge(&parse(&console(broken, true)).expect("parse"), 50.0);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[2].starts_with("pair 10.201.1.3 (delayed): added 50.0"),
            "{p:?}"
        );

        let mut c = console(right, true).replace(
            "name=partition-cuts ok detail=d",
            "name=partition-cuts fail detail=d",
        );
        c = c.replace("FLTLAB check name=crash-no-table ok detail=d\n", "");
        let (_, p) = judge(&parse(&c).expect("parse"), 50.0);
        assert_eq!(
            p,
            [
                "check partition-cuts failed: d",
                "check crash-no-table was never reported"
            ]
        );

        let few: String = console(right, true)
            .lines()
            .filter(|l| !l.contains("phase=all dst=10.201.2.2") || l.ends_with('0'))
            .map(|l| format!("{l}\n"))
            .collect();
        let (_, p) = judge(&parse(&few).expect("parse"), 50.0);
        assert!(
            p.iter()
                .any(|p| p.starts_with("all 10.201.2.2: ") && p.contains("want at least 15")),
            "{p:?}"
        );
    }
}
