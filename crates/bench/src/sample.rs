//! What the processes spend during one wrk run: CPU time (the delta of
//! `utime + stime` over the run, and of `stime`, the kernel's part) and
//! resident memory (sampled every 100 ms,
//! the largest value kept).
//!
//! [`measure_all`] does it for any list of processes (the cluster scenario
//! has two servers and Redis); [`measure`] is the same for the three roles
//! of one tunnel. A path without a client process (nginx as a one-hop
//! proxy) passes [`NO_PROCESS`] for it, which reads zero.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::procs;
use crate::wrk::{self, Load, WrkResult};

/// The pid of a role no process plays: it spends nothing and holds
/// nothing. (Pid 0 is the kernel's idle task, never a child of ours.)
pub const NO_PROCESS: u32 = 0;

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
    /// The part of `cpu_ticks` spent in the kernel.
    pub kernel_ticks: Roles<u64>,
    /// Largest RSS seen during the run, KiB.
    pub peak_rss_kib: Roles<u64>,
}

/// Resident memory of each process, KiB.
pub fn rss_of(pids: Roles<u32>) -> Result<Roles<u64>> {
    Ok(Roles {
        server: rss_kib(pids.server)?,
        client: rss_kib(pids.client)?,
        origin: rss_kib(pids.origin)?,
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    match pid {
        NO_PROCESS => Ok(0),
        pid => procs::rss_kib(pid),
    }
}

/// CPU ticks of `pid` so far: in all, and in the kernel.
fn cpu_ticks(pid: u32) -> Result<[u64; 2]> {
    match pid {
        NO_PROCESS => Ok([0, 0]),
        pid => Ok([procs::cpu_ticks(pid)?, procs::kernel_ticks(pid)?]),
    }
}

/// One wrk run with what each of a list of processes spent meanwhile,
/// in the order of the list.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// wrk's summary.
    pub wrk: WrkResult,
    /// CPU ticks spent during the run.
    pub cpu_ticks: Vec<u64>,
    /// The part of `cpu_ticks` spent in the kernel.
    pub kernel_ticks: Vec<u64>,
    /// Largest RSS seen during the run, KiB.
    pub peak_rss_kib: Vec<u64>,
}

impl<T: Copy> Roles<T> {
    fn to_array(self) -> [T; 3] {
        [self.server, self.client, self.origin]
    }

    fn from_slice(values: &[T]) -> Option<Self> {
        match *values {
            [server, client, origin] => Some(Roles {
                server,
                client,
                origin,
            }),
            _ => None,
        }
    }
}

/// Runs wrk once, with CPU deltas and RSS sampled every 100 ms, for the
/// three roles of one tunnel.
pub fn measure(load: &Load, script: &Path, pids: Roles<u32>) -> Result<Measured> {
    let sampled = measure_all(load, script, &pids.to_array())?;
    let roles = |values: &[u64]| Roles::from_slice(values).context("one value per role");
    Ok(Measured {
        wrk: sampled.wrk,
        cpu_ticks: roles(&sampled.cpu_ticks)?,
        kernel_ticks: roles(&sampled.kernel_ticks)?,
        peak_rss_kib: roles(&sampled.peak_rss_kib)?,
    })
}

/// Runs wrk once, with the CPU deltas of every process of `pids` and their
/// RSS sampled every 100 ms.
pub fn measure_all(load: &Load, script: &Path, pids: &[u32]) -> Result<Sampled> {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let pids = pids.to_vec();
        std::thread::spawn(move || {
            let mut peak = vec![0u64; pids.len()];
            while !stop.load(Ordering::Relaxed) {
                for (peak, &pid) in peak.iter_mut().zip(&pids) {
                    if let Ok(now) = rss_kib(pid) {
                        *peak = (*peak).max(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let cpu = || -> Result<Vec<[u64; 2]>> { pids.iter().map(|&pid| cpu_ticks(pid)).collect() };
    // The sampler stops whatever happens to the load (a process gone
    // reads as an error here): no early return before it is told to.
    let measured = cpu().and_then(|before| {
        let result = wrk::run(load, script);
        Ok((before, cpu()?, result))
    });
    stop.store(true, Ordering::Relaxed);
    let peak_rss_kib = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let (before, after, result) = measured?;
    // Saturating: a process tree whose child exited reads less.
    let spent = |part: usize| -> Vec<u64> {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a[part].saturating_sub(b[part]))
            .collect()
    };
    Ok(Sampled {
        wrk: result?,
        cpu_ticks: spent(0),
        kernel_ticks: spent(1),
        peak_rss_kib,
    })
}
