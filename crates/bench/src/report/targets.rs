//! Issue 16's targets, judged against the yardsticks of the same run:
//! Cryptun's figure, the yardstick's, the target and whether it is met.
//! A row whose yardstick did not run (no `--bore`, no `--https`, ...) is
//! left out.

use super::Table;
use super::cpu::PerRequest;
use super::tables::{cpu, signed_ms};
use crate::run::LoadReport;
use crate::sample::Measured;
use crate::scenarios::{Scenario, TunnelLoad};

/// CPU per MiB per side the issue allows, µs.
const CPU_PER_MIB_US: f64 = 450.0;

/// How much more added p50 than bore's the issue allows, µs.
const P50_SLACK_US: f64 = 20.0;

/// The share of nginx's HTTPS ratio small responses must reach.
const HTTPS_SMALL_SHARE: f64 = 0.8;

/// The table, if Cryptun's tunnel ran beside at least one yardstick.
pub(super) fn targets_table(load: &LoadReport) -> Option<Table> {
    let path = |name: &str| load.tunnels.iter().find(|t| t.name == name);
    let cryptun = path("cryptun")?;
    let relays: Vec<&TunnelLoad> = ["bore", "rathole"].into_iter().filter_map(path).collect();
    let ticks = load.ticks_per_sec;
    let find = |large: bool, many: bool| {
        load.scenarios
            .iter()
            .position(|s| s.large == large && (s.connections > 1) == many)
    };
    let rate = |runs: &[Measured], direct: &[Measured], i: usize| {
        let (t, d) = (runs.get(i)?.wrk, direct.get(i)?.wrk);
        (d.rps() > 0.0).then(|| t.rps() / d.rps())
    };
    let mut rows = Vec::new();
    let mut push = |measure: String, ours: String, yardstick: String, target: &str, met: bool| {
        let met = if met { "yes" } else { "no" };
        rows.push(vec![measure, ours, yardstick, target.into(), met.into()]);
    };
    // Ratios to direct, against the better relay.
    for (large, what) in [(false, "100 B"), (true, "1 MiB")] {
        let Some(i) = find(large, true) else { continue };
        let label = &load.scenarios[i].label;
        let Some(ours) = rate(&cryptun.runs, &load.direct, i) else {
            continue;
        };
        let best = relays
            .iter()
            .filter_map(|r| Some((rate(&r.runs, &load.direct, i)?, r.name)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((best, name)) = best {
            push(
                format!("{label}, ratio to direct"),
                format!("{ours:.2}×"),
                format!("{best:.2}× ({name})"),
                &format!("≥ the better relay ({what})"),
                ours >= best,
            );
        }
    }
    let bore = path("bore");
    // CPU per small request, each side against bore's same side.
    if let (Some(i), Some(bore)) = (find(false, true), bore) {
        let of = |t: &TunnelLoad| t.runs.get(i).map(|r| PerRequest::of(r, true, ticks));
        if let (Some(ours), Some(theirs)) = (of(cryptun), of(bore)) {
            let label = &load.scenarios[i].label;
            let sides = [
                ("server", ours.server, theirs.server),
                (
                    "client",
                    ours.client.unwrap_or(0.0),
                    theirs.client.unwrap_or(0.0),
                ),
            ];
            for (side, ours, theirs) in sides {
                push(
                    format!("CPU per request, {label}, {side}"),
                    cpu(ours),
                    format!("{} (bore)", cpu(theirs)),
                    "≤ bore's same side",
                    ours <= theirs,
                );
            }
        }
    }
    // Added latency on one connection.
    if let (Some(i), Some(bore)) = (find(false, false), bore) {
        let added = |t: &TunnelLoad| {
            Some(t.runs.get(i)?.wrk.p50_us as f64 - load.direct.get(i)?.wrk.p50_us as f64)
        };
        if let (Some(ours), Some(theirs)) = (added(cryptun), added(bore)) {
            push(
                format!("added p50, {} (one run)", load.scenarios[i].label),
                signed_ms(ours),
                format!("{} (bore)", signed_ms(theirs)),
                "≤ bore's + 0.02 ms",
                ours <= theirs + P50_SLACK_US,
            );
        }
    }
    // CPU per MiB, each side.
    if let Some(run) = find(true, true).and_then(|i| cryptun.runs.get(i)) {
        let ours = PerRequest::of(run, true, ticks);
        for (side, value) in [
            ("server", ours.server),
            ("client", ours.client.unwrap_or(0.0)),
        ] {
            push(
                format!("CPU per MiB, {side}"),
                cpu(value),
                String::new(),
                "≤ 450 µs",
                value <= CPU_PER_MIB_US,
            );
        }
    }
    if let Some(https) = &load.https {
        https_rows(&https.scenarios, &https.direct, &https.paths, &mut push);
    }
    Some(Table {
        title: "Issue 16's targets against the yardsticks of this run".into(),
        header: ["measure", "cryptun", "yardstick", "target", "met"]
            .map(String::from)
            .to_vec(),
        rows,
    })
}

/// HTTPS: small responses at least 0.8 of nginx's ratio, 1 MiB ahead.
fn https_rows(
    scenarios: &[Scenario],
    direct: &[Measured],
    paths: &[TunnelLoad],
    push: &mut impl FnMut(String, String, String, &str, bool),
) {
    let (Some(ours), Some(nginx)) = (paths.first(), paths.get(1)) else {
        return;
    };
    for (i, scenario) in scenarios.iter().enumerate() {
        let rate = |t: &TunnelLoad| {
            let (t, d) = (t.runs.get(i)?.wrk, direct.get(i)?.wrk);
            (d.rps() > 0.0).then(|| t.rps() / d.rps())
        };
        let (Some(a), Some(b)) = (rate(ours), rate(nginx)) else {
            continue;
        };
        let (target, met) = match scenario.large {
            false => ("≥ 0.8 × nginx's", a >= HTTPS_SMALL_SHARE * b),
            true => ("> nginx's", a > b),
        };
        push(
            format!("HTTPS {}, ratio to plain direct", scenario.label),
            format!("{a:.2}× ({:.2} of nginx's)", a / b.max(1e-9)),
            format!("{b:.2}× (nginx tls)"),
            target,
            met,
        );
    }
}
