//! What each table of the report says: its rows, built from the
//! measurements of one run, and how its numbers are written (thousands
//! separators, ratios, milliseconds, MiB). `report.rs` lays them out.

use super::Table;
use crate::run::LoadReport;
use crate::sample::{Measured, Roles};
use crate::tunnels::TunnelResult;
use crate::visitors::IdleVisitors;

pub(super) fn load_table(load: &LoadReport) -> Table {
    let mut rows = Vec::new();
    for r in &load.scenarios {
        let (d, t) = (&r.direct.wrk, &r.tunnel.wrk);
        let label = &r.scenario.label;
        if r.scenario.large {
            rows.push(vec![
                format!("{label}: throughput"),
                format!("{:.0} MiB/s", d.mib_per_sec()),
                format!("{:.0} MiB/s", t.mib_per_sec()),
                ratio(t.mib_per_sec(), d.mib_per_sec()),
            ]);
        }
        rows.push(vec![
            format!("{label}: requests/s"),
            thousands(d.rps()),
            thousands(t.rps()),
            ratio(t.rps(), d.rps()),
        ]);
        for (name, dv, tv) in [("p50", d.p50_us, t.p50_us), ("p99", d.p99_us, t.p99_us)] {
            rows.push(vec![
                format!("{label}: latency {name}"),
                ms(dv as f64),
                ms(tv as f64),
                signed_ms(tv as f64 - dv as f64),
            ]);
        }
    }
    let direct_err: u64 = load.scenarios.iter().map(|r| r.direct.wrk.errors()).sum();
    let tunnel_err: u64 = load.scenarios.iter().map(|r| r.tunnel.wrk.errors()).sum();
    rows.push(vec![
        "errors and non-2xx (all runs)".into(),
        direct_err.to_string(),
        tunnel_err.to_string(),
        String::new(),
    ]);
    Table {
        title: "Throughput and latency: direct to the origin vs through the tunnel".into(),
        header: vec![
            "".into(),
            "direct".into(),
            "tunnel".into(),
            "tunnel vs direct".into(),
        ],
        rows,
    }
}

pub(super) fn resource_table(load: &LoadReport) -> Table {
    let mut rows = vec![mem_row(
        "RSS idle (tunnel up, before load)",
        load.idle_rss_kib,
    )];
    for r in &load.scenarios {
        rows.push(mem_row(
            &format!("RSS peak, {}", r.scenario.label),
            r.tunnel.peak_rss_kib,
        ));
    }
    rows.push(mem_row("RSS idle after load (+2 s)", load.after_rss_kib));
    let tick_us = 1e6 / load.ticks_per_sec.max(1) as f64;
    for r in &load.scenarios {
        let per = |ticks: u64, m: &Measured| ticks as f64 * tick_us / m.wrk.requests.max(1) as f64;
        let t = &r.tunnel;
        rows.push(vec![
            format!("CPU per request, {}", r.scenario.label),
            cpu(per(t.cpu_ticks.server, t)),
            cpu(per(t.cpu_ticks.client, t)),
            format!(
                "{} (direct {})",
                cpu(per(t.cpu_ticks.origin, t)),
                cpu(per(r.direct.cpu_ticks.origin, &r.direct))
            ),
        ]);
    }
    Table {
        title: "Resources of each process during the tunnel runs".into(),
        header: vec!["".into(), "server".into(), "client".into(), "origin".into()],
        rows,
    }
}

pub(super) fn visitor_table(idle: &IdleVisitors) -> Table {
    let (server, client, both) = idle.per_connection();
    let kib = |bytes: f64| format!("{:.1} KiB", bytes / 1024.0);
    Table {
        title: "Held-open idle visitor connections (one request each, then idle)".into(),
        header: vec![
            "connections".into(),
            "still open".into(),
            "server RSS before / with".into(),
            "client RSS before / with".into(),
            "per connection: server".into(),
            "client".into(),
            "both".into(),
        ],
        rows: vec![vec![
            thousands(idle.count as f64),
            thousands(idle.open as f64),
            format!(
                "{} / {}",
                mib(idle.before_kib.server),
                mib(idle.with_kib.server)
            ),
            format!(
                "{} / {}",
                mib(idle.before_kib.client),
                mib(idle.with_kib.client)
            ),
            kib(server),
            kib(client),
            kib(both),
        ]],
    }
}

fn mem_row(label: &str, kib: Roles<u64>) -> Vec<String> {
    vec![
        label.to_owned(),
        mib(kib.server),
        mib(kib.client),
        mib(kib.origin),
    ]
}

pub(super) fn tunnel_table(results: &[TunnelResult]) -> Table {
    let rows = results
        .iter()
        .map(|r| {
            let mut row = vec![thousands(r.requested as f64)];
            match &r.skipped {
                Some(why) => {
                    row.push(format!("skipped: {why}"));
                    row.extend(std::iter::repeat_n(String::new(), 6));
                }
                None => {
                    let mut connected = format!(
                        "{} (listed {})",
                        thousands(r.connected as f64),
                        thousands(r.listed as f64)
                    );
                    if let Some(drops) = r.listen_drops.filter(|&d| d > 0) {
                        connected.push_str(&format!(", {drops} SYNs dropped"));
                    }
                    if r.failed > 0 {
                        connected.push_str(&format!(
                            ", {} failed: {}",
                            r.failed,
                            r.first_error.as_deref().unwrap_or("?")
                        ));
                    }
                    row.extend([
                        connected,
                        format!("{:.2} s", r.elapsed_ms / 1000.0),
                        mib(r.rss_before_kib),
                        mib(r.rss_with_kib),
                        format!("{:.1} KiB", r.per_tunnel_kib()),
                        mib(r.rss_after_kib),
                        format!(
                            "{:.1} KiB",
                            r.swarm_rss_kib as f64 / r.connected.max(1) as f64
                        ),
                    ]);
                }
            }
            row
        })
        .collect();
    Table {
        title: "Idle tunnels: server memory per connected tunnel (fresh server per row)".into(),
        header: [
            "tunnels",
            "connected",
            "time to connect",
            "server RSS before",
            "with tunnels",
            "per tunnel",
            "after they left",
            "swarm RSS / tunnel",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

fn ratio(tunnel: f64, direct: f64) -> String {
    if direct > 0.0 {
        format!("{:.2}×", tunnel / direct)
    } else {
        "-".into()
    }
}

fn ms(us: f64) -> String {
    let v = us / 1000.0;
    if v.abs() < 10.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn signed_ms(us: f64) -> String {
    if us < 0.0 {
        format!("-{}", ms(-us))
    } else {
        format!("+{}", ms(us))
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn cpu(us: f64) -> String {
    format!("{us:.1} µs")
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
    fn numbers_read_well() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(signed_ms(205.0), "+0.205 ms");
        assert_eq!(signed_ms(-80.0), "-0.080 ms");
        assert_eq!(ms(15_300.0), "15.3 ms");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
    }
}
