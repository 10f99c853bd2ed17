//! Requests in flight per visitor address: one address (IPv6: its /64)
//! has at most `max_requests_per_ip` tunnel requests unanswered at once,
//! so that it cannot hold a tunnel's streams, or the server's memory, with
//! many slow requests; beyond, 429.
//!
//! A request counts from its arrival until its response has been written
//! (or abandoned). The table holds only addresses with a request in
//! flight, so it is bounded by the requests themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cryptun_proto::net::group;

/// The requests in flight, by address.
pub struct InFlight {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One request's place in [`InFlight`]; dropping it gives the place back.
pub struct Place {
    table: Arc<InFlight>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.table.counts();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl InFlight {
    /// At most `max` requests in flight per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(InFlight {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more request from `ip`, unless it has `max` already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let ip = group(ip);
        let mut counts = self.counts();
        let n = counts.entry(ip).or_default();
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(Place {
            table: Arc::clone(self),
            ip,
        })
    }

    /// The most one address may have.
    pub fn max(&self) -> usize {
        self.max
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_has_its_share_and_gets_it_back() {
        let table = InFlight::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = table.admit(ip("2001:db8::1")).unwrap();
        let b = table.admit(ip("2001:db8::2")).unwrap();
        // The same /64: over.
        assert!(table.admit(ip("2001:db8::3")).is_none());
        // Anyone else: not.
        let c = table.admit(ip("192.0.2.1")).unwrap();
        drop(a);
        let d = table.admit(ip("2001:db8::3")).unwrap();
        drop((b, c, d));
        assert!(table.counts().is_empty());
    }
}
