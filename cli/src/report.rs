//! Reports of a local run: JUnit XML for CI systems (one test case per
//! check) and the JSON journal of everything that happened.

use std::fmt::Write as _;

use faultline_api::Verdict;
use faultline_runtime::Outcome;
use serde_json::json;

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: a test case per hypothesis and abort check; a failed check
/// carries the observed value and the threshold; an aborted run adds an
/// erroring `run` case with the reason.
pub fn junit(experiment: &str, outcome: &Outcome, seconds: f64) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    let mut errors = 0;
    for r in &outcome.report {
        let class = if r.abort { "abort" } else { "hypothesis" };
        let _ = write!(
            cases,
            "    <testcase classname=\"faultline.{}.{class}\" name=\"{}\" time=\"0\">",
            xml(experiment),
            xml(&r.name)
        );
        if !r.passed {
            failures += 1;
            let (observed, expected) =
                r.last.as_ref().map_or((String::new(), String::new()), |e| {
                    (e.observed.clone(), e.expected.clone())
                });
            // Never judged on enough evidence is no pass: a failure too,
            // typed so that CI tells it from a threshold missed.
            let (kind, why) = match (&r.failure, &r.inconclusive) {
                (None, Some(why)) => ("inconclusive", why.as_str()),
                (failure, _) => (class, failure.as_deref().unwrap_or("")),
            };
            let _ = write!(
                cases,
                "\n      <failure type=\"{kind}\" message=\"observed {}, expected {}\">{}</failure>\n    ",
                xml(&observed),
                xml(&expected),
                xml(why)
            );
        } else if r.evaluations == 0 {
            let _ = write!(
                cases,
                "\n      <skipped message=\"never evaluated\"/>\n    "
            );
        }
        cases.push_str("</testcase>\n");
    }
    // A fault that required an effect and had none: a failing case of its
    // own, beside any check that failed too.
    let run_failed = !outcome.effect_failures.is_empty();
    if run_failed {
        failures += 1;
        let _ = writeln!(
            cases,
            "    <testcase classname=\"faultline.{}\" name=\"effects\" time=\"{seconds:.3}\">\n      <failure type=\"effect\" message=\"{}\"/>\n    </testcase>",
            xml(experiment),
            xml(&outcome.effect_failures.join("; "))
        );
    }
    if matches!(outcome.verdict, Verdict::Aborted | Verdict::Broken) {
        errors += 1;
        let kind = if outcome.verdict == Verdict::Broken {
            "broken"
        } else {
            "aborted"
        };
        let _ = writeln!(
            cases,
            "    <testcase classname=\"faultline.{}\" name=\"run\" time=\"{seconds:.3}\">\n      <error type=\"{kind}\" message=\"{}\"/>\n    </testcase>",
            xml(experiment),
            xml(outcome.message.as_deref().unwrap_or(kind))
        );
    }
    let tests = outcome.report.len() + errors + usize::from(run_failed);
    // Each fault's effect, for CI systems that show suite properties.
    let mut properties = String::new();
    if !outcome.effects.is_empty() {
        properties.push_str("    <properties>\n");
        for (fault, effect) in &outcome.effects {
            let value = effect
                .as_ref()
                .map_or("none counted".to_owned(), ToString::to_string);
            let _ = writeln!(
                properties,
                "      <property name=\"effect.{}\" value=\"{}\"/>",
                xml(fault),
                xml(&value)
            );
        }
        properties.push_str("    </properties>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"faultline\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{seconds:.3}\">\n  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{seconds:.3}\">\n{properties}{cases}  </testsuite>\n</testsuites>\n",
        xml(experiment)
    )
}

/// The run's journal: every injection, recovery, signal, restart and check
/// evaluation with its time since the start, and the final figures.
pub fn journal(experiment: &str, outcome: &Outcome) -> String {
    let doc = json!({
        "experiment": experiment,
        "verdict": outcome.verdict.as_str(),
        "phase": outcome.phase.as_str(),
        "message": outcome.message,
        "checks": outcome.report.iter().map(|r| json!({
            "name": r.name,
            "abort": r.abort,
            "passed": r.passed,
            "evaluations": r.evaluations,
            "observed": r.last.as_ref().map(|e| e.observed.clone()),
            "expected": r.last.as_ref().map(|e| e.expected.clone()),
            "failure": r.failure,
            "judged": r.judged,
            "notJudged": r.not_judged,
            "inconclusive": r.inconclusive,
        })).collect::<Vec<_>>(),
        "effects": outcome.effects.iter().map(|(fault, e)| json!({
            "fault": fault,
            "count": e.as_ref().map(|e| e.count),
            "what": e.as_ref().map(|e| e.what.clone()),
        })).collect::<Vec<_>>(),
        "restarts": outcome.restarts,
        "supervisor": outcome.log,
        "journal": outcome.journal.iter().map(|e| json!({
            "atMs": e.at.as_millis() as u64,
            "event": e.event,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
