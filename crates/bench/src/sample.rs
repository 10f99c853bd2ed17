//! What the processes spend during one wrk run: CPU time (the delta of
//! `utime + stime` over the run) and resident memory (sampled every 100 ms,
//! the largest value kept).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::procs;
use crate::wrk::{self, Load, WrkResult};

/// A value per process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles<T> {
    /// The tunnel's server (`cryptun server`, or `bore server`).
    pub server: T,
    /// The tunnel's client (`cryptun http`, or `bore local`).
    pub client: T,
    /// The origin.
    pub origin: T,
}

/// One wrk run with what the processes spent meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// wrk's summary.
    pub wrk: WrkResult,
    /// CPU ticks spent during the run.
    pub cpu_ticks: Roles<u64>,
    /// Largest RSS seen during the run, KiB.
    pub peak_rss_kib: Roles<u64>,
}

/// Resident memory of each process, KiB.
pub fn rss_of(pids: Roles<u32>) -> Result<Roles<u64>> {
    Ok(Roles {
        server: procs::rss_kib(pids.server)?,
        client: procs::rss_kib(pids.client)?,
        origin: procs::rss_kib(pids.origin)?,
    })
}

/// CPU ticks each process has used so far.
fn cpu_of(pids: Roles<u32>) -> Result<Roles<u64>> {
    Ok(Roles {
        server: procs::cpu_ticks(pids.server)?,
        client: procs::cpu_ticks(pids.client)?,
        origin: procs::cpu_ticks(pids.origin)?,
    })
}

/// Runs wrk once, with CPU deltas and RSS sampled every 100 ms.
pub fn measure(load: &Load, script: &Path, pids: Roles<u32>) -> Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = Roles::<u64>::default();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(now) = rss_of(pids) {
                    peak.server = peak.server.max(now.server);
                    peak.client = peak.client.max(now.client);
                    peak.origin = peak.origin.max(now.origin);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let before = cpu_of(pids)?;
    let result = wrk::run(load, script);
    let after = cpu_of(pids)?;
    stop.store(true, Ordering::Relaxed);
    let peak_rss_kib = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    Ok(Measured {
        wrk: result?,
        cpu_ticks: Roles {
            // Saturating: a process tree whose child exited reads less.
            server: after.server.saturating_sub(before.server),
            client: after.client.saturating_sub(before.client),
            origin: after.origin.saturating_sub(before.origin),
        },
        peak_rss_kib,
    })
}
