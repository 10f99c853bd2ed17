//! The results as tables: aligned plain text for the terminal and the same
//! tables in markdown for docs/BENCHMARKS.md.

use crate::run::LoadReport;
use crate::sample::{Measured, Roles};
use crate::tunnels::TunnelResult;
use crate::visitors::IdleVisitors;

/// Everything one run measured.
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// Seconds per wrk run.
    pub duration_s: u64,
    /// The load phase, unless skipped.
    pub load: Option<LoadReport>,
    /// The idle-tunnel phase, per count.
    pub tunnels: Vec<TunnelResult>,
}

/// A description of the machine.
pub struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    wrk: String,
    commit: Option<String>,
}

impl Machine {
    /// Reads `/proc` and asks wrk for its version.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let wrk = std::process::Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines()
                    .next()
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_else(|| "wrk".into());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Machine {
            commit,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            kernel,
            wrk,
        }
    }
}

struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Report {
    fn intro(&self) -> String {
        let m = &self.machine;
        let commit = m
            .commit
            .as_deref()
            .map(|c| format!("commit {c}; "))
            .unwrap_or_default();
        format!(
            "{commit}{} CPUs ({}), Linux {}, {}; {} s per wrk run; origin, server, client and wrk share the CPUs.",
            m.cpus, m.model, m.kernel, m.wrk, self.duration_s
        )
    }

    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        if let Some(load) = &self.load {
            tables.push(load_table(load));
            tables.push(resource_table(load));
            if let Some(idle) = &load.idle_visitors {
                tables.push(visitor_table(idle));
            }
        }
        if !self.tunnels.is_empty() {
            tables.push(tunnel_table(&self.tunnels));
        }
        tables
    }

    /// Aligned plain-text tables.
    pub fn text(&self) -> String {
        let mut out = format!("\nCryptun benchmark: {}\n", self.intro());
        for table in self.tables() {
            out.push_str(&format!("\n{}\n", table.title));
            let all: Vec<&Vec<String>> =
                std::iter::once(&table.header).chain(&table.rows).collect();
            let widths: Vec<usize> = (0..table.header.len())
                .map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for (n, row) in all.iter().enumerate() {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (cell, &w))| {
                        if i == 0 {
                            format!("{cell:<w$}")
                        } else {
                            format!("{cell:>w$}")
                        }
                    })
                    .collect();
                out.push_str(&format!("  {}\n", cells.join("   ").trim_end()));
                if n == 0 {
                    let total = widths.iter().sum::<usize>() + 3 * (widths.len() - 1);
                    out.push_str(&format!("  {}\n", "-".repeat(total)));
                }
            }
        }
        out
    }

    /// The same tables in markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("{}\n", self.intro());
        for table in self.tables() {
            out.push_str(&format!("\n**{}**\n\n", table.title));
            out.push_str(&format!("| {} |\n", table.header.join(" | ")));
            let align: Vec<&str> = (0..table.header.len())
                .map(|i| if i == 0 { "---" } else { "---:" })
                .collect();
            out.push_str(&format!("|{}|\n", align.join("|")));
            for row in &table.rows {
                out.push_str(&format!("| {} |\n", row.join(" | ")));
            }
        }
        out
    }
}

fn load_table(load: &LoadReport) -> Table {
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

fn resource_table(load: &LoadReport) -> Table {
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

fn visitor_table(idle: &IdleVisitors) -> Table {
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

fn tunnel_table(results: &[TunnelResult]) -> Table {
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
