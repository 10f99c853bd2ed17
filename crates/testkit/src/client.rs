//! The real client, connected to a test server.

use std::sync::{Arc, Mutex};

use cryptun_client::{
    ClientConfig, ClientError, Endpoint, Event, Events, Reconnect, Target, TunnelCreated,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestServer;

/// A running client with a live tunnel; disconnects when dropped.
pub struct TestClient {
    pub tunnel: TunnelCreated,
    /// Every event the client reported, in order.
    pub events: Arc<Mutex<Vec<Event>>>,
    /// Notified after each event.
    event_added: Arc<Notify>,
    /// The Host header that reaches this tunnel.
    pub host: String,
    /// The server it first connected to.
    pub server: Endpoint,
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
        Self::start_inner(server, target, adjust, false).await
    }

    /// Like [`start_with`](Self::start_with), but the client reconnects
    /// when its connection is lost, as `cryptun http` does, with short
    /// backoff steps.
    pub async fn start_reconnecting(
        server: &TestServer,
        target: &str,
        adjust: impl FnOnce(&mut ClientConfig),
    ) -> Result<Self, ClientError> {
        let quick = |config: &mut ClientConfig| {
            config.reconnect = Self::quick();
            adjust(config);
        };
        Self::start_inner(server, target, quick, true).await
    }

    /// Connects with `config` as it is (its servers, whichever test server
    /// they are) and reconnects as `cryptun http` does, with short backoff
    /// steps. The Host of the tunnel is its public URL's.
    pub async fn start_config(mut config: ClientConfig) -> Result<Self, ClientError> {
        config.reconnect = Self::quick();
        let session = cryptun_client::connect(&config).await?;
        let url = &session.tunnel().public_url;
        let host = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let host = host.trim_end_matches('/').to_owned();
        Ok(Self::serve(config, session, host, true))
    }

    /// Backoff steps short enough for tests.
    fn quick() -> Reconnect {
        Reconnect {
            initial: std::time::Duration::from_millis(100),
            max: std::time::Duration::from_millis(500),
            ..Reconnect::default()
        }
    }

    async fn start_inner(
        server: &TestServer,
        target: &str,
        adjust: impl FnOnce(&mut ClientConfig),
        reconnect: bool,
    ) -> Result<Self, ClientError> {
        let mut config = ClientConfig::new(&server.url(), Target::parse(target).unwrap()).unwrap();
        config.ca = server.tls.as_ref().map(|tls| tls.ca.clone());
        adjust(&mut config);
        let session = cryptun_client::connect(&config).await?;
        let host = server.host_of(&session.tunnel().subdomain);
        Ok(Self::serve(config, session, host, reconnect))
    }

    /// Runs `session` (and, with `reconnect`, every one after it).
    fn serve(
        config: ClientConfig,
        session: cryptun_client::Session,
        host: String,
        reconnect: bool,
    ) -> Self {
        let tunnel = session.tunnel().clone();
        let server = session.server().clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let event_added = Arc::new(Notify::new());
        let (sink, added) = (Arc::clone(&events), Arc::clone(&event_added));
        let sink = Events::to(move |e| {
            sink.lock().unwrap().push(e);
            added.notify_waiters();
        });
        let shutdown = CancellationToken::new();
        let task = if reconnect {
            let stop = shutdown.clone();
            tokio::spawn(async move { cryptun_client::serve(&config, session, stop, sink).await })
        } else {
            tokio::spawn(session.run(shutdown.clone(), sink))
        };
        TestClient {
            host,
            server,
            tunnel,
            events,
            event_added,
            shutdown,
            task: Some(task),
        }
    }

    /// Waits, within [`LIMIT`](crate::LIMIT), for an event that `matches`,
    /// among those reported so far and after; returns a copy.
    pub async fn wait_event(&self, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
        crate::within(what, async {
            loop {
                let added = self.event_added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(e) = self.events.lock().unwrap().iter().find(|e| matches(e)) {
                    return e.clone();
                }
                added.await;
            }
        })
        .await
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
