//! Test fixtures: a real Cryptun server, client, local origin service and
//! visitors, each on an ephemeral loopback port and each stopped when its
//! handle drops. Used by the end-to-end tests in `tests/` and by the
//! benchmark.
//!
//! # Layout
//!
//! - [`server`]: [`TestServer`], the real server on `127.0.0.1:0`, and
//!   [`TempDir`] for its data directory.
//! - [`client`]: [`TestClient`], the real client connected to it.
//! - [`origin`]: [`Origin`], a local HTTP service with routes for echoing,
//!   large bodies, hashing uploads, delays, hangs and streamed responses.
//! - [`visitor`]: HTTP requests to the server with any Host, and a raw
//!   socket for byte-level tests.
//! - [`devserver`]: local services as development servers are: one that
//!   refuses unknown Hosts, one over HTTPS with a test authority.
//! - [`inspector`]: [`TestInspector`], the client's request inspector on
//!   `127.0.0.1:0`, with its JSON API.
//! - [`browser`]: [`Browser`], headless Chromium driven over the DevTools
//!   Protocol, for tests of pages.
//! - [`raw`]: [`RawWs`], a hand-driven WebSocket client speaking JSON, for
//!   protocol and abuse tests.
//! - [`tls`]: development certificates in temporary folders, and
//!   [`HttpsVisitor`], which speaks HTTPS with any SNI and Host.
//! - [`process`]: [`Proc`], the real binary as a child process: output
//!   lines, signals, bounded waits for its exit.
//! - [`redis`]: [`TestRedis`], a real `redis-server` on a free port, to
//!   pause, kill and restart under a cluster.
//! - [`chaos`]: what the opt-in chaos runs share: a seeded generator,
//!   tagged requests, figures.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod acme;
pub mod browser;
pub mod chaos;
pub mod client;
pub mod devserver;
pub mod h2raw;
pub mod inspector;
pub mod origin;
pub mod process;
pub mod raw;
pub mod redis;
pub mod server;
pub mod tls;
pub mod visitor;
pub mod wsecho;

pub use acme::{TestDns, TestPebble};
pub use browser::Browser;
pub use client::TestClient;
pub use inspector::TestInspector;
pub use origin::Origin;
pub use process::Proc;
pub use raw::RawWs;
pub use redis::TestRedis;
pub use server::{TempDir, TestServer};
pub use tls::HttpsVisitor;
pub use visitor::{Reply, Visitor};

/// The bound on every wait in the end-to-end tests that is not itself
/// under test.
pub const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` if it takes over [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

/// Accepts connections on `listener` until `stop`, each served by `serve`
/// on a task of its own. A failed accept (out of descriptors, say) is tried
/// again after a pause, not at once in a loop that would take a core.
pub(crate) fn accept_until<F, Fut>(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream));
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                },
            }
        }
    });
}

/// A loopback TCP port nothing listens on now, for a test to bind later
/// (a server's TCP ports, a Redis): outside the range the system gives out
/// to outgoing connections (32768-60999 on Linux), so that none of the
/// tests' own connections takes it between the pick and the bind, and a
/// different one at each call within a test process. Ports 20000-22699:
/// 10000 above them (a Redis Cluster's bus) is outside that range too.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 2_700;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Where each process starts, so that processes run one after another
    // do not meet ports the previous one left in TIME_WAIT.
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start.wrapping_add(n) % SPAN);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The deterministic content of `/bytes?n=N`: byte i is `(i * 7 + i / 251) % 256`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}
