//! The real client, connected to a test server.

use std::sync::{Arc, Mutex};

use cryptun_client::{ClientConfig, ClientError, Event, Events, Target, TunnelCreated};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestServer;

/// A running client with a live tunnel; disconnects when dropped.
pub struct TestClient {
    pub tunnel: TunnelCreated,
    /// Every event the client reported, in order.
    pub events: Arc<Mutex<Vec<Event>>>,
    /// The Host header that reaches this tunnel.
    pub host: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

impl TestClient {
    /// Connects to `server`, forwarding to `target` (a port, host:port or URL).
    pub async fn start(server: &TestServer, target: &str) -> Self {
        Self::start_with(server, target, |_| {}).await.unwrap()
    }

    /// Like [`start`](Self::start), adjusting the configuration first;
    /// returns the connection error, if any. A client of a TLS server
    /// trusts its CA unless `adjust` says otherwise.
    pub async fn start_with(
        server: &TestServer,
        target: &str,
        adjust: impl FnOnce(&mut ClientConfig),
    ) -> Result<Self, ClientError> {
        let mut config = ClientConfig::new(&server.url(), Target::parse(target).unwrap()).unwrap();
        config.ca = server.tls.as_ref().map(|tls| tls.ca.clone());
        adjust(&mut config);
        let session = cryptun_client::connect(&config).await?;
        let tunnel = session.tunnel().clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(session.run(
            shutdown.clone(),
            Events::to(move |e| sink.lock().unwrap().push(e)),
        ));
        Ok(TestClient {
            host: server.host_of(&tunnel.subdomain),
            tunnel,
            events,
            shutdown,
            task: Some(task),
        })
    }

    /// Kills the client abruptly: its task is aborted and its socket dropped
    /// without a close frame, as when the process dies.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Disconnects cleanly and returns how the session ended.
    pub async fn stop(mut self) -> Result<(), ClientError> {
        self.shutdown.cancel();
        self.task.take().unwrap().await.unwrap()
    }

    /// Waits for the session to end on its own and returns why.
    pub async fn finished(mut self) -> Result<(), ClientError> {
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
