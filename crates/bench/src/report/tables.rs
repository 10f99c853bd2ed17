//! What each table of the report says: its rows, built from the
//! measurements of one run, and how its numbers are written (thousands
//! separators, ratios, milliseconds, MiB). `report.rs` lays them out.

use super::Table;
use super::cpu::PerRequest;
use crate::run::LoadReport;
use crate::sample::{Measured, Roles};
use crate::scenarios::{Scenario, TunnelLoad};
use crate::tunnels::TunnelResult;
use crate::visitors::IdleVisitors;
use crate::wrk::WrkResult;

/// The throughput and latency table of the plain load phase.
pub(super) fn load_table(load: &LoadReport) -> Table {
    paths_table(
        "Throughput and latency: direct to the origin vs through the tunnel",
        &load.scenarios,
        &load.direct,
        &load.tunnels,
    )
}

/// Throughput and latency of `tunnels`, each beside `direct`, scenario by
/// scenario.
pub(super) fn paths_table(
    title: &str,
    scenarios: &[Scenario],
    direct: &[Measured],
    tunnels: &[TunnelLoad],
) -> Table {
    let mut rows = Vec::new();
    for (i, (scenario, direct)) in scenarios.iter().zip(direct).enumerate() {
        let d = direct.wrk;
        let through: Vec<WrkResult> = tunnels
            .iter()
            .map(|t| t.runs.get(i).map(|m| m.wrk).unwrap_or_default())
            .collect();
        // A row: the direct value, then each tunnel's value and how it
        // compares with direct.
        let row = |what: &str, direct: String, cells: &dyn Fn(&WrkResult) -> [String; 2]| {
            let mut row = vec![format!("{}: {what}", scenario.label), direct];
            row.extend(through.iter().flat_map(cells));
            row
        };
        if scenario.large {
            let mib_s = |w: &WrkResult| format!("{:.0} MiB/s", w.mib_per_sec());
            rows.push(row("throughput", mib_s(&d), &|t| {
                [mib_s(t), ratio(t.mib_per_sec(), d.mib_per_sec())]
            }));
        }
        rows.push(row("requests/s", thousands(d.rps()), &|t| {
            [thousands(t.rps()), ratio(t.rps(), d.rps())]
        }));
        type Pick = fn(&WrkResult) -> u64;
        let percentiles: [(&str, Pick); 2] = [("p50", |w| w.p50_us), ("p99", |w| w.p99_us)];
        for (name, pick) in percentiles {
            let dv = pick(&d) as f64;
            rows.push(row(&format!("latency {name}"), ms(dv), &|t| {
                let tv = pick(t) as f64;
                [ms(tv), signed_ms(tv - dv)]
            }));
        }
    }
    let errors = |runs: &[Measured]| runs.iter().map(|m| m.wrk.errors()).sum::<u64>();
    let mut errors_row = vec![
        "errors and non-2xx (all runs)".into(),
        errors(direct).to_string(),
    ];
    for t in tunnels {
        errors_row.extend([errors(&t.runs).to_string(), String::new()]);
    }
    rows.push(errors_row);
    let mut header = vec![String::new(), "direct".into()];
    for t in tunnels {
        header.extend([t.name.to_owned(), format!("{} vs direct", t.name)]);
    }
    Table {
        title: title.into(),
        header,
        rows,
    }
}

/// The resources of `tunnel`'s processes (and the origin's) during its runs.
pub(super) fn resource_table(load: &LoadReport, tunnel: &TunnelLoad) -> Table {
    let mem_row = |label: &str, kib: Roles<u64>| {
        let client = match tunnel.has_client {
            true => mib(kib.client),
            false => "-".into(),
        };
        vec![label.to_owned(), mib(kib.server), client, mib(kib.origin)]
    };
    let mut rows = vec![mem_row(
        "RSS idle (tunnel up, before load)",
        tunnel.idle_rss_kib,
    )];
    for (scenario, run) in load.scenarios.iter().zip(&tunnel.runs) {
        rows.push(mem_row(
            &format!("RSS peak, {}", scenario.label),
            run.peak_rss_kib,
        ));
    }
    rows.push(mem_row("RSS idle after load (+2 s)", tunnel.after_rss_kib));
    let runs = load.scenarios.iter().zip(&tunnel.runs).zip(&load.direct);
    for ((scenario, t), direct) in runs {
        let per = PerRequest::of(t, tunnel.has_client, load.ticks_per_sec);
        let direct = PerRequest::of(direct, false, load.ticks_per_sec);
        rows.push(vec![
            format!("CPU per request, {}", scenario.label),
            cpu(per.server),
            per.client.map_or_else(|| "-".into(), cpu),
            format!("{} (direct {})", cpu(per.origin), cpu(direct.origin)),
        ]);
    }
    Table {
        title: format!("Resources of each process during the {} runs", tunnel.name),
        header: vec!["".into(), "server".into(), "client".into(), "origin".into()],
        rows,
    }
}

pub(super) fn visitor_table(all: &[IdleVisitors]) -> Table {
    let kib = |bytes: f64| format!("{:.1} KiB", bytes / 1024.0);
    let row = |idle: &IdleVisitors| {
        let (server, client, both) = idle.per_connection();
        vec![
            idle.speaks.name().into(),
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
        ]
    };
    Table {
        title: "Held-open idle visitor connections (one request each, then idle)".into(),
        header: vec![
            "speaking".into(),
            "connections".into(),
            "still open".into(),
            "server RSS before / with".into(),
            "client RSS before / with".into(),
            "per connection: server".into(),
            "client".into(),
            "both".into(),
        ],
        rows: all.iter().map(row).collect(),
    }
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

pub(super) fn ratio(tunnel: f64, direct: f64) -> String {
    if direct > 0.0 {
        format!("{:.2}×", tunnel / direct)
    } else {
        "-".into()
    }
}

pub(super) fn ms(us: f64) -> String {
    let v = us / 1000.0;
    if v.abs() < 10.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.1} ms")
    }
}

pub(super) fn signed_ms(us: f64) -> String {
    if us < 0.0 {
        format!("-{}", ms(-us))
    } else {
        format!("+{}", ms(us))
    }
}

pub(super) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Microseconds of CPU per unit: `ticks` of CPU time (at `ticks_per_sec`)
/// over `n` units (requests, script calls).
pub(super) fn us_per(ticks: u64, ticks_per_sec: u64, n: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_sec.max(1) as f64 / n.max(1) as f64
}

pub(super) fn cpu(us: f64) -> String {
    format!("{us:.1} µs")
}

pub(super) fn thousands(v: f64) -> String {
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

    fn run(requests: u64, p50_us: u64) -> Measured {
        let wrk = WrkResult {
            requests,
            duration_us: 1_000_000,
            p50_us,
            ..WrkResult::default()
        };
        Measured {
            wrk,
            ..Measured::default()
        }
    }

    #[test]
    fn each_tunnel_has_its_columns_and_resources() {
        let scenario = crate::scenarios::Scenario {
            label: "100 B, 1 conn".into(),
            path: "/small",
            connections: 1,
            threads: 1,
            large: false,
        };
        let tunnel = |name, requests, p50_us| TunnelLoad {
            name,
            runs: vec![run(requests, p50_us)],
            has_client: true,
            ..TunnelLoad::default()
        };
        let load = LoadReport {
            scenarios: vec![scenario],
            direct: vec![run(1_000, 100)],
            tunnels: vec![tunnel("cryptun", 200, 400), tunnel("bore", 500, 250)],
            ..LoadReport::default()
        };
        let table = load_table(&load);
        assert_eq!(
            table.header,
            [
                "",
                "direct",
                "cryptun",
                "cryptun vs direct",
                "bore",
                "bore vs direct"
            ]
        );
        assert_eq!(
            table.rows[0],
            [
                "100 B, 1 conn: requests/s",
                "1,000",
                "200",
                "0.20×",
                "500",
                "0.50×"
            ]
        );
        assert_eq!(table.rows[1][5], "+0.150 ms");
        assert_eq!(table.rows.last().unwrap()[4], "0");
        let bore = resource_table(&load, &load.tunnels[1]);
        assert_eq!(bore.title, "Resources of each process during the bore runs");
    }
}
