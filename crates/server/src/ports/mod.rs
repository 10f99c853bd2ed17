//! TCP tunnels' public side: the port each one is given, and each port's
//! visitor connections carried to the tunnel's client as raw streams
//! ([`relay`]); TLS passthrough connections are carried the same way, and
//! [`carrier`] decides where a raw connection goes (this node's tunnel, or
//! in a cluster another node's, over the hop).
//!
//! Which ports may be given is the operator's choice ([`TcpPorts`]): ranges
//! (`--tcp-ports A-B`, repeatable), or, on a server only this machine can
//! reach (loopback, domain `localhost`, where auth is off too), any port
//! the system assigns. Elsewhere no TCP port is opened unless a range is
//! given, and a TCP tunnel is refused with `tcp_disabled`.
//!
//! A port is taken from the moment its listener is bound until the
//! tunnel's relay ends ([`Lease`]); a port in use by anything else on the
//! machine is skipped (its bind fails). Ports are bound on the address the
//! server's own listener has.
//!
//! When a TCP tunnel ends, its port stays reserved for the tunnel's name
//! for the reconnect grace, as the name is held for its client: a
//! reconnecting client asks for its name and its port again
//! (`remote_port`) and gets both back; anyone else asking for that port
//! meanwhile is refused, and no port is given from the holds.
//!
//! All of this is a single server's. A cluster's ports are given
//! cluster-wide and served by every node (`crate::cluster::ports`).

pub(crate) mod carrier;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};

/// Which public ports TCP tunnels may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TcpPorts {
    /// None: TCP tunnels are refused (`tcp_disabled`).
    #[default]
    Off,
    /// Any port the system assigns, or any a tunnel asks for: for a server
    /// only this machine can reach.
    Any,
    /// Ports from these ranges only.
    Ranges(Vec<RangeInclusive<u16>>),
}

impl TcpPorts {
    /// The setting when none is chosen: [`TcpPorts::Any`] where auth is
    /// off by default (loopback, domain `localhost`), else
    /// [`TcpPorts::Off`].
    pub fn default_for(listen: SocketAddr, domain: &str) -> TcpPorts {
        match crate::config::AuthMode::default_for(listen, domain) {
            crate::config::AuthMode::Off => TcpPorts::Any,
            _ => TcpPorts::Off,
        }
    }

    /// Reads `A-B` (or one port `A`), as `--tcp-ports` takes it.
    pub fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
        };
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (port(low)?, port(high)?),
            None => (port(text)?, port(text)?),
        };
        if low > high {
            return Err(format!("the range {text:?} runs backwards"));
        }
        Ok(low..=high)
    }
}

/// Why no port was given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PortError {
    #[error(
        "this server opens no TCP ports: its operator can allow a range with --tcp-ports (for example --tcp-ports 20000-20999)"
    )]
    Disabled,
    #[error("port {0} is not in this server's TCP port ranges ({1})")]
    OutOfRange(u16, String),
    #[error("port {0} is in use")]
    InUse(u16),
    #[error("port {0} is held for its tunnel's client to reconnect")]
    Held(u16),
    #[error("port {0} is reserved for another API key")]
    Reserved(u16),
    #[error("port {0} cannot be opened: {1}")]
    Bind(u16, io::Error),
    #[error("every port of this server's TCP port ranges ({0}) is in use")]
    Exhausted(String),
    #[error(
        "this cluster opens no TCP ports: its operator can give every node the same range with --tcp-ports (for example --tcp-ports 20000-20999)"
    )]
    NotInCluster,
    #[error(
        "this server cannot give ports now: its cluster's shared store is unreachable; try again shortly"
    )]
    Unavailable,
}

/// The ports given to TCP tunnels, and the address they are bound on.
#[derive(Debug)]
pub(crate) struct Ports {
    setting: TcpPorts,
    ip: IpAddr,
    taken: Mutex<Taken>,
}

/// The ports tunnels have, and those held for names.
#[derive(Debug, Default)]
struct Taken {
    live: HashSet<u16>,
    held: HashMap<u16, Hold>,
}

/// A port kept for a name until a deadline.
#[derive(Debug, Clone)]
struct Hold {
    name: String,
    until: Instant,
}

impl Taken {
    /// Whether `port` is free for `name` (`None`: for no name): neither a
    /// tunnel's nor held for another name. Holds past their end go.
    fn free_for(&mut self, port: u16, name: Option<&str>) -> Result<(), PortError> {
        if self.live.contains(&port) {
            return Err(PortError::InUse(port));
        }
        match self.held.get(&port) {
            Some(hold) if hold.until <= Instant::now() => {
                self.held.remove(&port);
                Ok(())
            }
            Some(hold) if Some(hold.name.as_str()) == name => Ok(()),
            Some(_) => Err(PortError::Held(port)),
            None => Ok(()),
        }
    }
}

/// A port given to a tunnel. What it becomes when dropped is its
/// [`AfterLease`].
#[derive(Debug)]
pub(crate) struct Lease {
    port: u16,
    ports: Arc<Ports>,
    after: AfterLease,
}

/// What a port becomes when its lease ends.
#[derive(Debug)]
enum AfterLease {
    /// Free for anyone.
    Free,
    /// Held for a name again, as it was before this lease took it (the
    /// tunnel that asked for it was not registered).
    Restore(Hold),
    /// Held for the tunnel's name for the reconnect grace.
    HoldFor(String, Duration),
}

impl Lease {
    /// The port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Once the lease ends, the port is held for `name` for `grace`.
    pub(crate) fn hold_after(&mut self, name: &str, grace: Duration) {
        self.after = if grace.is_zero() {
            AfterLease::Free
        } else {
            AfterLease::HoldFor(name.to_owned(), grace)
        };
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut taken = self.ports.taken();
        taken.live.remove(&self.port);
        let hold = match std::mem::replace(&mut self.after, AfterLease::Free) {
            AfterLease::Free => return,
            AfterLease::Restore(hold) => hold,
            AfterLease::HoldFor(name, grace) => Hold {
                name,
                until: Instant::now() + grace,
            },
        };
        taken.held.insert(self.port, hold);
    }
}

impl Ports {
    /// Ports as `setting` allows, bound on `ip`.
    pub(crate) fn new(setting: TcpPorts, ip: IpAddr) -> Arc<Self> {
        Arc::new(Ports {
            setting,
            ip,
            taken: Mutex::default(),
        })
    }

    /// A listening port for a new TCP tunnel that asks for the name
    /// `name`: `asked`, or the first free one of the ranges from a random
    /// place (or one the system assigns). A port held for `name` is given
    /// back to it when asked for; no other port is given from the holds.
    ///
    /// A port of `reserved` (reserved for a key) is never given unasked;
    /// whether the asker may have one it asks for is the caller's check.
    pub(crate) fn open(
        self: &Arc<Self>,
        (asked, name): (Option<u16>, Option<&str>),
        reserved: &[u16],
    ) -> Result<(TcpListener, Lease), PortError> {
        let ranges = match &self.setting {
            TcpPorts::Off => return Err(PortError::Disabled),
            TcpPorts::Any => None,
            TcpPorts::Ranges(ranges) => Some(ranges),
        };
        if let Some(port) = asked {
            if let Some(ranges) = ranges {
                if !ranges.iter().any(|r| r.contains(&port)) {
                    return Err(PortError::OutOfRange(port, describe(ranges)));
                }
            }
            return self.take(port, name);
        }
        let Some(ranges) = ranges else {
            // The system's choice may be a port held for a name: another.
            for _ in 0..8 {
                match self.take(0, None) {
                    Err(PortError::Held(_) | PortError::InUse(_)) => continue,
                    Ok((_, lease)) if reserved.contains(&lease.port()) => continue,
                    taken => return taken,
                }
            }
            return Err(PortError::Exhausted("any port the system assigns".into()));
        };
        let all: Vec<u16> = ranges
            .iter()
            .flat_map(|r| r.clone())
            .filter(|port| !reserved.contains(port))
            .collect();
        let start = rand::random_range(0..all.len().max(1));
        for &port in all.iter().cycle().skip(start).take(all.len()) {
            if let Ok(taken) = self.take(port, None) {
                return Ok(taken);
            }
        }
        Err(PortError::Exhausted(describe(ranges)))
    }

    /// Binds `port` (0: one the system assigns) if it is free for `name`.
    fn take(
        self: &Arc<Self>,
        port: u16,
        name: Option<&str>,
    ) -> Result<(TcpListener, Lease), PortError> {
        if port != 0 {
            self.taken().free_for(port, name)?;
        }
        let listener = bind(SocketAddr::new(self.ip, port)).map_err(|err| match err.kind() {
            io::ErrorKind::AddrInUse => PortError::InUse(port),
            _ => PortError::Bind(port, err),
        })?;
        let port = listener
            .local_addr()
            .map_err(|err| PortError::Bind(port, err))?
            .port();
        let mut taken = self.taken();
        // Again: the system's choice, or a tunnel that bound it meanwhile.
        taken.free_for(port, name)?;
        let after = match taken.held.remove(&port) {
            Some(hold) => AfterLease::Restore(hold),
            None => AfterLease::Free,
        };
        taken.live.insert(port);
        drop(taken);
        let lease = Lease {
            port,
            ports: Arc::clone(self),
            after,
        };
        Ok((listener, lease))
    }

    fn taken(&self) -> MutexGuard<'_, Taken> {
        // Each update is one insert or remove: never half done.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accepts on `listener` until `stop` fires, handing each connection (with
/// `TCP_NODELAY` set) to `take`; a failed accept (out of descriptors, say)
/// waits 50 ms rather than spin.
pub(crate) async fn accept_until(
    listener: &TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    mut take: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, visitor)) => {
                let _ = stream.set_nodelay(true);
                take(stream, visitor);
            }
            Err(err) => {
                tracing::debug!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A listener on `addr`, with `SO_REUSEADDR` so that a port a tunnel just
/// left (its connections in `TIME_WAIT`) can be given again.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// `20000-20099, 30000`.
pub(crate) fn describe(ranges: &[RangeInclusive<u16>]) -> String {
    let each: Vec<String> = ranges
        .iter()
        .map(|r| match r.start() == r.end() {
            true => r.start().to_string(),
            false => format!("{}-{}", r.start(), r.end()),
        })
        .collect();
    each.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn ranges_read_as_the_flag_takes_them() {
        assert_eq!(TcpPorts::parse_range("20000-20010"), Ok(20000..=20010));
        assert_eq!(TcpPorts::parse_range("2222"), Ok(2222..=2222));
        for bad in ["", "0-10", "10-5", "a-b", "1-70000", "-"] {
            assert!(TcpPorts::parse_range(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_range_is_given_out_until_it_is_exhausted_and_a_lease_gives_back() {
        // Two ports the system says are free now.
        let free: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let ranges = free.iter().map(|&p| p..=p).collect();
        let ports = Ports::new(TcpPorts::Ranges(ranges), LOOPBACK);
        let (_a, first) = ports.open((None, None), &[]).unwrap();
        let (_b, second) = ports.open((None, None), &[]).unwrap();
        assert_ne!(first.port(), second.port());
        assert!(matches!(
            ports.open((None, None), &[]),
            Err(PortError::Exhausted(_))
        ));
        assert!(matches!(
            ports.open((Some(first.port()), None), &[]),
            Err(PortError::InUse(_))
        ));
        let outside = free.iter().max().unwrap().wrapping_add(1).max(1);
        assert!(matches!(
            ports.open((Some(outside), None), &[]),
            Err(PortError::OutOfRange(..))
        ));
        // A reserved port is never given unasked: with the other taken,
        // the range has none to give.
        let port = first.port();
        drop((_a, first));
        assert!(matches!(
            ports.open((None, None), &[port]),
            Err(PortError::Exhausted(_))
        ));
        let (_again, lease) = ports.open((Some(port), None), &[]).unwrap();
        assert_eq!(lease.port(), port);
    }

    #[tokio::test]
    async fn a_port_is_held_for_its_name_and_only_given_back_to_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ports = Ports::new(TcpPorts::Ranges(vec![port..=port]), LOOPBACK);
        let (listener, mut lease) = ports.open((None, Some("mine")), &[]).unwrap();
        lease.hold_after("mine", Duration::from_secs(60));
        drop((listener, lease));
        // Nobody else gets it, asking or not.
        assert!(matches!(
            ports.open((None, None), &[]),
            Err(PortError::Exhausted(_))
        ));
        assert!(matches!(
            ports.open((Some(port), Some("yours")), &[]),
            Err(PortError::Held(_))
        ));
        // Its name does; and if that tunnel is not registered after all
        // (its lease ends as it was made), the hold is as it was.
        let (listener, lease) = ports.open((Some(port), Some("mine")), &[]).unwrap();
        drop((listener, lease));
        assert!(matches!(
            ports.open((Some(port), Some("yours")), &[]),
            Err(PortError::Held(_))
        ));
        // A hold past its end is gone.
        let (listener, mut lease) = ports.open((Some(port), Some("mine")), &[]).unwrap();
        lease.hold_after("mine", Duration::ZERO);
        drop((listener, lease));
        let (_listener, lease) = ports.open((Some(port), Some("yours")), &[]).unwrap();
        assert_eq!(lease.port(), port);
    }

    #[test]
    fn off_gives_nothing_and_loopback_localhost_gives_any() {
        let ports = Ports::new(TcpPorts::Off, LOOPBACK);
        assert!(matches!(
            ports.open((None, None), &[]),
            Err(PortError::Disabled)
        ));
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(TcpPorts::default_for(local, "localhost"), TcpPorts::Any);
        assert_eq!(
            TcpPorts::default_for(local, "tunnel.example.com"),
            TcpPorts::Off
        );
        let public: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(TcpPorts::default_for(public, "localhost"), TcpPorts::Off);
    }
}
