//! The results as tables: aligned plain text for the terminal and the same
//! tables in markdown for docs/BENCHMARKS.md. Which tables there are and
//! what their rows say is in `report/tables.rs`; this file lays them out.

mod cluster;
mod cpu;
mod tables;
mod targets;

use crate::cluster::ClusterReport;
use crate::run::LoadReport;
use crate::tunnels::TunnelResult;

use tables::{load_table, paths_table, resource_table, tunnel_table, visitor_table};

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
    /// The cluster scenario, with `--cluster`.
    pub cluster: Option<ClusterReport>,
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
        let origin = self
            .load
            .as_ref()
            .map(|load| load.origin)
            .or_else(|| self.cluster.as_ref().map(|c| c.hop.origin))
            .map(|origin| format!("origin: {origin}; "))
            .unwrap_or_default();
        format!(
            "{commit}{} CPUs ({}), Linux {}, {}; {origin}{} s per wrk run; origin, server, client and wrk share the CPUs.",
            m.cpus, m.model, m.kernel, m.wrk, self.duration_s
        )
    }

    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        if let Some(load) = &self.load {
            tables.push(load_table(load));
            if let Some(https) = &load.https {
                let title = format!(
                    "HTTPS: plain direct vs visitors over TLS ({})",
                    https
                        .negotiated
                        .first()
                        .map_or("?", |(_, negotiated)| negotiated.as_str())
                );
                tables.push(paths_table(
                    &title,
                    &https.scenarios,
                    &https.direct,
                    &https.paths,
                ));
            }
            tables.push(cpu::cpu_table(load));
            tables.extend(targets::targets_table(load));
            for tunnel in &load.tunnels {
                tables.push(resource_table(load, tunnel));
            }
            if !load.idle_visitors.is_empty() {
                tables.push(visitor_table(&load.idle_visitors));
            }
        }
        if !self.tunnels.is_empty() {
            tables.push(tunnel_table(&self.tunnels));
        }
        if let Some(report) = &self.cluster {
            tables.extend(cluster::tables(report));
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
