//! The CPU-per-request table: µs of CPU each process spent per completed
//! request, on every path of the run (direct, Cryptun, and each yardstick;
//! plain and HTTPS), side by side.
//!
//! On a 2-core machine shared by wrk, the origin and two relay processes,
//! requests/s moves with whatever else runs; the CPU a request costs each
//! process moves far less, and it is what an operator pays for. For 1 MiB
//! scenarios a request is a MiB, so the figures read as CPU per MiB. Each
//! tunnel process's figure carries the part of it spent in the kernel.

use super::Table;
use super::tables::{cpu, ratio, us_per};
use crate::run::LoadReport;
use crate::sample::Measured;
use crate::scenarios::{Scenario, TunnelLoad};

/// The CPU of one path in one scenario, µs per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PerRequest {
    /// The server side (the relay's server, or nginx as a proxy).
    pub server: f64,
    /// The client side, if the path has one.
    pub client: Option<f64>,
    /// The origin.
    pub origin: f64,
    /// The part of `server` spent in the kernel.
    pub server_kernel: f64,
    /// The part of `client` spent in the kernel.
    pub client_kernel: Option<f64>,
}

impl PerRequest {
    /// What `run`'s processes spent per request it completed.
    pub fn of(run: &Measured, has_client: bool, ticks_per_sec: u64) -> Self {
        let per = |ticks: u64| us_per(ticks, ticks_per_sec, run.wrk.requests);
        PerRequest {
            server: per(run.cpu_ticks.server),
            client: has_client.then(|| per(run.cpu_ticks.client)),
            origin: per(run.cpu_ticks.origin),
            server_kernel: per(run.kernel_ticks.server),
            client_kernel: has_client.then(|| per(run.kernel_ticks.client)),
        }
    }

    fn total(&self) -> f64 {
        self.server + self.client.unwrap_or(0.0) + self.origin
    }
}

/// `all` µs of CPU with the kernel's part of it: a relay's CPU is mostly
/// the kernel's (loopback TCP, wake-ups), so the user-space part is what
/// a relay's own code adds.
fn with_kernel(all: f64, kernel: f64) -> String {
    format!("{} ({kernel:.1} kernel)", cpu(all))
}

/// Every path of the run, scenario by scenario.
pub(super) fn cpu_table(load: &LoadReport) -> Table {
    let mut rows = Vec::new();
    let ticks = load.ticks_per_sec;
    let mut section =
        |prefix: &str, scenarios: &[Scenario], direct: &[Measured], paths: &[TunnelLoad]| {
            for (i, (scenario, direct)) in scenarios.iter().zip(direct).enumerate() {
                let label = format!("{prefix}{}", scenario.label);
                let d = PerRequest::of(direct, false, ticks);
                rows.push(vec![
                    format!("{label}: direct"),
                    "-".into(),
                    "-".into(),
                    cpu(d.origin),
                    cpu(d.origin),
                    "1.00×".into(),
                ]);
                for path in paths {
                    let Some(run) = path.runs.get(i) else {
                        continue;
                    };
                    let p = PerRequest::of(run, path.has_client, ticks);
                    let client = p.client.zip(p.client_kernel);
                    rows.push(vec![
                        format!("{label}: {}", path.name),
                        with_kernel(p.server, p.server_kernel),
                        client.map_or_else(|| "-".into(), |(all, k)| with_kernel(all, k)),
                        cpu(p.origin),
                        cpu(p.total()),
                        ratio(run.wrk.rps(), direct.wrk.rps()),
                    ]);
                }
            }
        };
    section("", &load.scenarios, &load.direct, &load.tunnels);
    if let Some(https) = &load.https {
        section("HTTPS ", &https.scenarios, &https.direct, &https.paths);
    }
    Table {
        title:
            "CPU per request on every path (µs of CPU per completed request, the kernel's part in brackets; for 1 MiB, per MiB)"
                .into(),
        header: [
            "",
            "server",
            "client",
            "origin",
            "all three",
            "requests/s vs direct",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Roles;
    use crate::wrk::WrkResult;

    #[test]
    fn per_request_is_ticks_over_requests() {
        let run = Measured {
            wrk: WrkResult {
                requests: 1_000,
                ..WrkResult::default()
            },
            cpu_ticks: Roles {
                server: 3,
                client: 2,
                origin: 1,
            },
            kernel_ticks: Roles {
                server: 2,
                client: 1,
                origin: 0,
            },
            ..Measured::default()
        };
        // 100 ticks a second: a tick is 10 ms, 3 ticks over 1,000 requests 30 µs.
        let p = PerRequest::of(&run, true, 100);
        assert_eq!(p.server, 30.0);
        assert_eq!(p.client, Some(20.0));
        assert_eq!(p.total(), 60.0);
        assert_eq!((p.server_kernel, p.client_kernel), (20.0, Some(10.0)));
        assert_eq!(
            with_kernel(p.server, p.server_kernel),
            "30.0 µs (20.0 kernel)"
        );
        assert_eq!(PerRequest::of(&run, false, 100).client, None);
    }
}
