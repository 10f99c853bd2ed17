//! The cluster scenario's tables: visitors through the right node and the
//! wrong one, the CPU of every process per request (and the hop's share of
//! it), Redis's commands per tunnel connect and disconnect, and Redis at
//! steady state with many idle tunnels.

use std::collections::BTreeSet;

use super::Table;
use super::tables::{cpu, mib, ms, ratio, signed_ms, thousands, us_per};
use crate::cluster::ClusterReport;
use crate::cluster::hop::{HopRun, PROCESSES, TARGETS};
use crate::cluster::store::{Connects, Steady};
use crate::wrk::WrkResult;

/// Every table of the scenario, in order.
pub(super) fn tables(report: &ClusterReport) -> Vec<Table> {
    vec![
        hop_table(report),
        cpu_table(report),
        connects_table(&report.connects),
        steady_table(report),
    ]
}

fn hop_table(report: &ClusterReport) -> Table {
    let hop = &report.hop;
    let mut rows = Vec::new();
    for (scenario, [direct, right, wrong]) in hop.scenarios.iter().zip(&hop.runs) {
        let (d, r, w) = (direct.sampled.wrk, right.sampled.wrk, wrong.sampled.wrk);
        rows.push(vec![
            format!("{}: requests/s", scenario.label),
            thousands(d.rps()),
            thousands(r.rps()),
            ratio(r.rps(), d.rps()),
            thousands(w.rps()),
            ratio(w.rps(), d.rps()),
            ratio(w.rps(), r.rps()),
        ]);
        type Pick = fn(&WrkResult) -> u64;
        let percentiles: [(&str, Pick); 2] = [("p50", |w| w.p50_us), ("p99", |w| w.p99_us)];
        for (name, pick) in percentiles {
            let (dv, rv, wv) = (pick(&d) as f64, pick(&r) as f64, pick(&w) as f64);
            rows.push(vec![
                format!("{}: latency {name}", scenario.label),
                ms(dv),
                ms(rv),
                signed_ms(rv - dv),
                ms(wv),
                signed_ms(wv - dv),
                signed_ms(wv - rv),
            ]);
        }
    }
    let errors = |i: usize| -> String {
        let all: u64 = hop.runs.iter().map(|r| r[i].sampled.wrk.errors()).sum();
        all.to_string()
    };
    rows.push(vec![
        "errors and non-2xx (all runs)".into(),
        errors(0),
        errors(1),
        String::new(),
        errors(2),
        String::new(),
        String::new(),
    ]);
    Table {
        title: format!(
            "Cluster (Redis {}): through the node that serves the tunnel (B) and through the other one (A, one hop more)",
            report.redis_version
        ),
        header: [
            "",
            "direct",
            "right node (B)",
            "B vs direct",
            "wrong node (A)",
            "A vs direct",
            "A vs B",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn cpu_table(report: &ClusterReport) -> Table {
    let per_request = |run: &HopRun| -> Vec<f64> {
        let requests = run.sampled.wrk.requests;
        run.sampled
            .cpu_ticks
            .iter()
            .map(|&t| us_per(t, report.ticks_per_sec, requests))
            .collect()
    };
    let row = |label: String, values: &[f64], redis: String| {
        let mut row = vec![label];
        row.extend(values.iter().map(|&v| cpu(v)));
        row.push(cpu(values.iter().sum()));
        row.push(redis);
        row
    };
    let mut rows = Vec::new();
    for (scenario, runs) in report.hop.scenarios.iter().zip(&report.hop.runs) {
        for (target, run) in TARGETS.iter().zip(runs) {
            rows.push(row(
                format!("{}: {target}", scenario.label),
                &per_request(run),
                thousands(run.redis_commands as f64),
            ));
        }
        // What the wrong node's path costs over the right node's, per
        // process: the hop's price.
        let (right, wrong) = (per_request(&runs[1]), per_request(&runs[2]));
        let extra: Vec<f64> = wrong.iter().zip(&right).map(|(w, r)| w - r).collect();
        rows.push(row(
            format!("{}: the hop (A − B)", scenario.label),
            &extra,
            String::new(),
        ));
    }
    let mut header = vec![String::new()];
    header.extend(PROCESSES.map(String::from));
    header.extend(["all".into(), "Redis commands in the run".into()]);
    Table {
        title: "Cluster: CPU per request of each process (and Redis's commands) during each run"
            .into(),
        header,
        rows,
    }
}

fn connects_table(c: &Connects) -> Table {
    let per = |n: u64, of: usize| format!("{:.2}", n as f64 / of.max(1) as f64);
    let names: BTreeSet<&String> = [&c.on_connect, &c.on_disconnect]
        .iter()
        .flat_map(|s| s.client.keys().chain(s.script.keys()))
        .collect();
    let get =
        |m: &std::collections::BTreeMap<String, u64>, name: &str| m.get(name).copied().unwrap_or(0);
    let mut rows: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            vec![
                (*name).clone(),
                per(get(&c.on_connect.client, name), c.connected),
                per(get(&c.on_connect.script, name), c.connected),
                per(get(&c.on_disconnect.client, name), c.disconnected),
                per(get(&c.on_disconnect.script, name), c.disconnected),
            ]
        })
        .collect();
    rows.push(vec![
        "all".into(),
        per(c.on_connect.client_total(), c.connected),
        per(c.on_connect.script_total(), c.connected),
        per(c.on_disconnect.client_total(), c.disconnected),
        per(c.on_disconnect.script_total(), c.disconnected),
    ]);
    let idle_s = crate::cluster::store::IDLE_WINDOW.as_secs_f64();
    rows.push(vec![
        "(the node idle, per second)".into(),
        format!("{:.1}", c.idle.client_total() as f64 / idle_s),
        format!("{:.1}", c.idle.script_total() as f64 / idle_s),
        String::new(),
        String::new(),
    ]);
    Table {
        title: format!(
            "Cluster: Redis commands per tunnel connect and disconnect ({} of {} tunnels connected in {:.2} s, {} disconnected; MONITOR)",
            thousands(c.connected as f64),
            thousands(c.requested as f64),
            c.elapsed_ms / 1000.0,
            thousands(c.disconnected as f64),
        ),
        header: [
            "command",
            "per connect: sent by the node",
            "run by its scripts",
            "per disconnect: sent by the node",
            "run by its scripts",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn steady_table(report: &ClusterReport) -> Table {
    let s: &Steady = &report.steady;
    let secs = s.window.as_secs_f64().max(1e-9);
    let tick_s = 1.0 / report.ticks_per_sec.max(1) as f64;
    let n = s.connected.max(1) as f64;
    let scripts: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| s.commands.0.get(*c))
        .map(|st| st.calls)
        .sum();
    let script_usec: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| s.commands.0.get(*c))
        .map(|st| st.usec)
        .sum();
    let per_script_us = |ticks: u64| us_per(ticks, report.ticks_per_sec, scripts);
    let core = |ticks: u64| format!("{:.1}% of a core", ticks as f64 * tick_s / secs * 100.0);
    let renewals = n / (s.lease.as_secs_f64() / 3.0);
    let mut rows = vec![
        vec![
            "tunnels connected (listed by the node)".into(),
            format!(
                "{} ({}) in {:.2} s",
                thousands(s.connected as f64),
                thousands(s.listed as f64),
                s.elapsed_ms / 1000.0
            ),
        ],
        vec![
            "script calls/s (EVALSHA + EVAL: one per renewal)".into(),
            thousands(scripts as f64 / secs),
        ],
        vec![
            format!(
                "expected renewals/s (tunnels / (lease {} s / 3))",
                s.lease.as_secs()
            ),
            thousands(renewals),
        ],
        vec![
            "all commands/s, scripts' own included".into(),
            thousands(s.commands.calls() as f64 / secs),
        ],
    ];
    for (name, stat) in &s.commands.0 {
        rows.push(vec![
            format!("  {name}/s"),
            thousands(stat.calls as f64 / secs),
        ]);
    }
    rows.extend([
        vec![
            "Redis time in scripts per call (commandstats usec)".into(),
            cpu(script_usec as f64 / scripts.max(1) as f64),
        ],
        vec![
            "Redis CPU (utime + stime)".into(),
            format!(
                "{}, {} per script call",
                core(s.redis_cpu_ticks),
                cpu(per_script_us(s.redis_cpu_ticks))
            ),
        ],
        vec![
            "node CPU (renewals and idle sessions)".into(),
            format!(
                "{}, {} per script call",
                core(s.node_cpu_ticks),
                cpu(per_script_us(s.node_cpu_ticks))
            ),
        ],
        vec![
            "Redis used_memory before / with tunnels".into(),
            format!(
                "{} / {}: {:.0} B per tunnel",
                mib(s.used_memory[0] / 1024),
                mib(s.used_memory[1] / 1024),
                s.used_memory[1].saturating_sub(s.used_memory[0]) as f64 / n
            ),
        ],
        vec![
            "Redis keys before / with tunnels".into(),
            format!(
                "{} / {}: {:.2} per tunnel",
                s.keys[0],
                s.keys[1],
                s.keys[1].saturating_sub(s.keys[0]) as f64 / n
            ),
        ],
        vec![
            "node RSS before / with tunnels".into(),
            format!(
                "{} / {}: {:.1} KiB per tunnel",
                mib(s.node_rss_kib[0]),
                mib(s.node_rss_kib[1]),
                s.node_rss_kib[1].saturating_sub(s.node_rss_kib[0]) as f64 / n
            ),
        ],
    ]);
    if let Some(record) = &s.record {
        let fields: Vec<String> = record
            .fields
            .iter()
            .map(|(k, v)| format!("{k} ({} B)", v.len()))
            .collect();
        rows.push(vec![
            format!("MEMORY USAGE of a route record, {}", record.key),
            format!("{} B; fields: {}", record.bytes, fields.join(", ")),
        ]);
    }
    Table {
        title: format!(
            "Cluster: one node with {} idle tunnels, Redis over {:.0} s",
            thousands(s.requested as f64),
            secs
        ),
        header: vec![String::new(), "measured".into()],
        rows,
    }
}
