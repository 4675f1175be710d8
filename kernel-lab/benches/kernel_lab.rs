//! Node agent benchmark in the kernel lab (a stock Debian kernel under qemu,
//! see kernel-lab/src/boot.rs): prints its figures, asserts nothing.
//!
//!   cargo bench -p faultline-kernel-lab --bench kernel_lab      # as root
//!
//! The agent follows a desired file inside the guest; /init adds and removes
//! a latency fault (netem with a `to` filter) FLTLAB_BENCH times (default
//! 200: 200 changes each way) and prints the time just before each desired
//! file is written; the agent logs when each fault was applied or removed,
//! after the kernel acked the change.
//! Both times come from the guest's clock, which under the lab's default
//! `-icount shift=0` counts one nanosecond per guest instruction: the
//! figures are the work the change costs on a 1-instruction-per-ns machine,
//! whatever load the host carries.

use std::process::Command;

use jiff::Timestamp;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() -> Result<(), String> {
    let changes: usize = std::env::var("FLTLAB_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let agent = faultline_kernel_lab::agent_binary(faultline_kernel_lab::Profile::Release)
        .map_err(|e| format!("the agent binary: {e}"))?;
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-kernel-lab-boot"))
        .arg(agent)
        .arg(env!("CARGO_BIN_EXE_faultline-kernel-lab"))
        .env("FLTLAB_BENCH", changes.to_string())
        .env("FLTLAB_TIMEOUT", "900")
        .output();
    let out = match out {
        Ok(o) if o.status.code() == Some(3) => {
            eprintln!(
                "the kernel lab cannot run here: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return Ok(());
        }
        Ok(o) => o,
        Err(e) => return Err(format!("cannot run faultline-kernel-lab-boot: {e}")),
    };
    let console = String::from_utf8_lossy(&out.stdout);
    // Desired-file write times, and the agent's log times, by fault id and op.
    let mut written = std::collections::BTreeMap::new();
    let mut done = std::collections::BTreeMap::new();
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix("FLTLAB bench ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .map(str::to_owned)
            };
            let (Some(i), Some(op), Some(at)) = (field("i"), field("op"), field("at_us")) else {
                continue;
            };
            if let Some(t) = at
                .parse::<i64>()
                .ok()
                .and_then(|us| Timestamp::from_microsecond(us).ok())
            {
                written.insert((format!("b{i}"), op), t);
            }
        } else if let Some(rest) = line.strip_prefix("FLTLAB agentlog ") {
            // tracing's lines: `TIME LEVEL target: ID: MESSAGE fields`.
            let Some((time, msg)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(t) = time.parse::<Timestamp>() else {
                continue;
            };
            for (op, word) in [
                ("apply", ": applied latency"),
                ("remove", ": removed latency"),
            ] {
                if let Some((before, _)) = msg.split_once(word) {
                    let id = before.rsplit(' ').next().unwrap_or(before);
                    done.insert((id.to_owned(), op.to_owned()), t);
                }
            }
        }
    }
    let mut apply = Vec::new();
    let mut remove = Vec::new();
    for (key, at) in &written {
        if let Some(t) = done.get(key) {
            let ms = t.duration_since(*at).as_secs_f64() * 1e3;
            if key.1 == "apply" {
                apply.push(ms);
            } else {
                remove.push(ms);
            }
        }
    }
    if apply.is_empty() || remove.is_empty() {
        return Err(format!(
            "no figures: the lab printed {} bench lines and {} agent log lines (exit {:?})\n{}",
            written.len(),
            done.len(),
            out.status.code(),
            console
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    apply.sort_by(f64::total_cmp);
    remove.sort_by(f64::total_cmp);
    println!(
        "desired change → netem active, latency with `to`, in the kernel lab ({} changes, guest clock at 1 instruction/ns):",
        apply.len() + remove.len()
    );
    for (name, v) in [("to active", &apply), ("to removed", &remove)] {
        println!(
            "  {name:<11} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            pct(v, 0.5),
            pct(v, 0.99),
            v[v.len() - 1]
        );
    }
    Ok(())
}
