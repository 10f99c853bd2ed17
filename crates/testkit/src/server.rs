//! The real server on an ephemeral port (and, with TLS, a second one for
//! HTTPS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptun_proto::mux::Heartbeat;
use cryptun_server::{AuthMode, Certs, Config, Listeners, TlsListener};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::TestTls;
use cryptun_server::cluster::{ClusterConfig, ClusterSecret};

/// The secret the test clusters' nodes share.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The HTTPS side, for servers started with [`start_tls`](Self::start_tls).
    pub tls: Option<TestTls>,
}

impl TestServer {
    /// Settings for tests: default limits, short timeouts so failures show fast.
    pub fn test_config() -> Config {
        Config {
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(2),
            heartbeat: Heartbeat {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(3),
            },
            shutdown_grace: Duration::from_secs(2),
            // On loopback, as `cryptun server` there: any free port.
            tcp_ports: cryptun_server::TcpPorts::Any,
            ..Config::default()
        }
    }

    /// Test settings for node `node` of a cluster on the Redis at `url`,
    /// its hop on a free loopback port, with a short lease (2 s) so that
    /// tests of lost nodes are quick.
    pub fn cluster_config(url: &str, node: &str) -> Config {
        let secret = ClusterSecret::new(CLUSTER_SECRET).unwrap();
        let mut cluster = ClusterConfig::new(
            url.to_owned(),
            node.to_owned(),
            "127.0.0.1:0".parse().unwrap(),
            secret,
        );
        cluster.lease = Duration::from_secs(2);
        Config {
            cluster: Some(cluster),
            reconnect_grace: Duration::from_secs(30),
            ..Self::test_config()
        }
    }

    /// Test settings with auth `mode` and the key database in `dir`.
    pub fn auth_config(dir: &Path, mode: AuthMode) -> Config {
        Config {
            auth: mode,
            data_dir: Some(dir.to_owned()),
            ..Self::test_config()
        }
    }

    pub async fn start() -> Self {
        Self::start_with(Self::test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// Starts a server on `addr`: the address of a server that stopped, to
    /// play a restart.
    pub async fn start_on(addr: SocketAddr, config: Config) -> Self {
        Self::start_listeners(addr, config, None).await
    }

    /// A server with a plain listener at `addr` and an HTTPS one at
    /// `tls.addr`, whose certificates a fresh development authority signs.
    pub async fn start_tls(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (certs, dev) = Certs::dev(&config.domain, dir.path()).unwrap();
        Self::start_tls_with(config, certs, dev.ca, Some(dir)).await
    }

    /// Like [`start_tls`](Self::start_tls), serving `certs`, which `ca`
    /// signed; `data_dir` is kept as long as the server.
    pub async fn start_tls_with(
        config: Config,
        certs: Certs,
        ca: PathBuf,
        data_dir: Option<tempfile::TempDir>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TestTls {
            addr: listener.local_addr().unwrap(),
            certs: certs.clone(),
            ca,
            data_dir,
        };
        let https = TlsListener { listener, certs };
        Self::start_listeners("127.0.0.1:0".parse().unwrap(), config, Some((https, tls))).await
    }

    async fn start_listeners(
        addr: SocketAddr,
        config: Config,
        tls: Option<(TlsListener, TestTls)>,
    ) -> Self {
        let config = config.validated().expect("valid test config");
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (https, tls) = tls.unzip();
        let listeners = Listeners {
            http: Some(listener),
            https,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cryptun_server::serve(
            listeners,
            config.clone(),
            shutdown.clone(),
        ));
        TestServer {
            addr,
            config,
            shutdown,
            task: Some(task),
            tls,
        }
    }

    /// What clients connect to: `http://127.0.0.1:PORT`, or with TLS
    /// `https://localhost:PORT` (a name the certificate covers).
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => format!("https://{}:{}", self.config.domain, tls.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// `ws://127.0.0.1:PORT/ws`, for raw WebSocket clients.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The Host under which `subdomain` is served (on the HTTPS port when
    /// there is one, as its public URL says).
    pub fn host_of(&self, subdomain: &str) -> String {
        let port = self.tls.as_ref().map_or(self.addr, |t| t.addr).port();
        format!("{subdomain}.{}:{port}", self.config.domain)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.begin_stop();
        self.stopped().await;
    }

    /// Begins the shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits, within [`LIMIT`](crate::LIMIT), for the server to finish.
    pub async fn stopped(mut self) {
        if let Some(task) = self.task.take() {
            crate::within("the server stops", task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// The server's own Host, for `/metrics`, `/readyz` and the like.
    pub fn own_host(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A path for a server's data directory that does not exist yet (so a test
/// can tell whether the server made it), inside a fresh directory under the
/// system's temp folder that is removed with its contents when dropped.
pub struct TempDir {
    pub path: PathBuf,
    /// Owns the enclosing directory: dropping it removes `path` too.
    _parent: tempfile::TempDir,
}

impl TempDir {
    pub fn new() -> Self {
        let parent = tempfile::Builder::new()
            .prefix("cryptun-test-")
            .tempdir()
            .expect("a temporary directory");
        TempDir {
            path: parent.path().join("data"),
            _parent: parent,
        }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}
