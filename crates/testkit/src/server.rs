//! The real server on an ephemeral port.

use std::net::SocketAddr;
use std::time::Duration;

use cryptun_proto::mux::Heartbeat;
use cryptun_server::Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
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
            ..Config::default()
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
        let config = config.validated().expect("valid test config");
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cryptun_server::run(
            listener,
            config.clone(),
            shutdown.clone(),
        ));
        TestServer {
            addr,
            config,
            shutdown,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`, for raw WebSocket clients.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The Host under which `subdomain` is served.
    pub fn host_of(&self, subdomain: &str) -> String {
        format!("{subdomain}.{}:{}", self.config.domain, self.addr.port())
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
