//! The client's request inspector on an ephemeral loopback port, with
//! helpers for its JSON API and a bounded, event-driven wait on its live
//! feed (no polling on a timer).

use std::net::SocketAddr;

use bytes::Bytes;
use cryptun_client::{ClientConfig, Inspector, InspectorLimits};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{Origin, Reply, TestClient, TestServer, Visitor, within};

/// A server, an origin and a client whose exchanges an inspector records,
/// and a visitor of the server.
pub struct InspectedTunnel {
    pub server: TestServer,
    pub origin: Origin,
    pub inspector: TestInspector,
    pub client: TestClient,
    pub visitor: Visitor,
}

impl InspectedTunnel {
    /// Started, the inspector keeping to `limits`.
    pub async fn start(limits: InspectorLimits) -> Self {
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let inspector = TestInspector::start(limits).await;
        let client = TestClient::start_with(&server, &origin.target(), inspector.attach())
            .await
            .unwrap();
        let visitor = Visitor::new(server.addr);
        InspectedTunnel {
            server,
            origin,
            inspector,
            client,
            visitor,
        }
    }
}

/// A server, two origins and one client holding two tunnels over one
/// connection — `web` (the first, on `client.host`) and `api` (on
/// `server.host_of("api")`) — whose exchanges an inspector records.
pub struct TwoTunnels {
    pub server: TestServer,
    pub web_origin: Origin,
    pub api_origin: Origin,
    pub inspector: TestInspector,
    pub client: TestClient,
    pub visitor: Visitor,
}

impl TwoTunnels {
    pub async fn start() -> Self {
        let server = TestServer::start().await;
        let (web_origin, api_origin) = (Origin::start().await, Origin::start().await);
        let inspector = TestInspector::start(InspectorLimits::default()).await;
        let attach = inspector.attach();
        let client = TestClient::start_with(&server, &web_origin.target(), |c| {
            c.tunnel.name = Some("web".into());
            c.more_tunnels.push(api_origin.tunnel("api"));
            attach(c);
        })
        .await
        .unwrap();
        let visitor = Visitor::new(server.addr);
        TwoTunnels {
            server,
            web_origin,
            api_origin,
            inspector,
            client,
            visitor,
        }
    }
}

/// A running inspector; stops when dropped.
pub struct TestInspector {
    pub addr: SocketAddr,
    pub inspector: Inspector,
    visitor: Visitor,
    shutdown: CancellationToken,
}

impl TestInspector {
    pub async fn start(limits: InspectorLimits) -> Self {
        let addr = "127.0.0.1:0".parse().unwrap();
        let listener = cryptun_client::inspector::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inspector = Inspector::new(limits);
        let shutdown = CancellationToken::new();
        tokio::spawn(cryptun_client::inspector::serve(
            listener,
            inspector.clone(),
            shutdown.clone(),
        ));
        TestInspector {
            addr,
            inspector,
            visitor: Visitor::new(addr),
            shutdown,
        }
    }

    /// For [`TestClient::start_with`](crate::TestClient::start_with):
    /// records the client's exchanges here.
    pub fn attach(&self) -> impl FnOnce(&mut ClientConfig) + use<> {
        let inspector = self.inspector.clone();
        move |config| config.inspector = Some(inspector)
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The Host the inspector answers to.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        within(path, self.visitor.get(&self.host(), path)).await
    }

    /// `METHOD path` with no body.
    pub async fn call(&self, method: &str, path: &str) -> Reply {
        within(path, self.visitor.call(method, &self.host(), path, "")).await
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        reply.json()
    }

    /// The list, newest first.
    pub async fn list(&self) -> Vec<Value> {
        self.json("/api/requests")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `POST /api/requests/{id}/replay`, with `edits` as its JSON body.
    pub async fn replay(&self, id: u64, edits: Option<&Value>) -> Reply {
        let path = format!("/api/requests/{id}/replay");
        let body = edits.map(Value::to_string).unwrap_or_default();
        let request = self
            .visitor
            .builder("POST", &self.host(), &path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        within(&path, self.visitor.fetch(request)).await
    }

    /// One exchange in full.
    pub async fn detail(&self, id: u64) -> Value {
        self.json(&format!("/api/requests/{id}")).await
    }

    /// Waits until `done` holds for the list, rechecking on each event of
    /// the live feed, and returns the list.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        within(what, async {
            let mut feed = self.feed().await;
            loop {
                let list = self.list().await;
                if done(&list) {
                    return list;
                }
                next_event(&mut feed).await;
            }
        })
        .await
    }

    /// Waits until `done` holds for `/api/status` (the session's tunnels
    /// change on a reconnect), rechecking on each event of the live feed,
    /// and returns it.
    pub async fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        within(what, async {
            let mut feed = self.feed().await;
            loop {
                let status = self.json("/api/status").await;
                if done(&status) {
                    return status;
                }
                next_event(&mut feed).await;
            }
        })
        .await
    }

    /// The live feed, once live: from then on, no change goes unnoticed.
    async fn feed(&self) -> hyper::body::Incoming {
        let request = self
            .visitor
            .builder("GET", &self.host(), "/api/events")
            .body(Full::<Bytes>::default())
            .unwrap();
        let mut feed = self.visitor.send(request).await.into_body();
        // The first event says the feed is live.
        next_event(&mut feed).await;
        feed
    }

    /// Waits until the exchange at `path` (the newest one) has finished,
    /// and returns its summary.
    pub async fn wait_finished(&self, path: &str) -> Value {
        let list = self
            .wait_for(&format!("{path} to finish"), |list| {
                list.iter().any(|e| e["path"] == path && finished(e))
            })
            .await;
        list.into_iter().find(|e| e["path"] == path).unwrap()
    }

    /// Waits until exchange `id` has finished, and returns its summary.
    pub async fn wait_id(&self, id: u64) -> Value {
        let list = self
            .wait_for(&format!("#{id} to finish"), |list| {
                list.iter().any(|e| e["id"] == id && finished(e))
            })
            .await;
        list.into_iter().find(|e| e["id"] == id).unwrap()
    }
}

/// Waits for the next chunk of the event stream (an event or keepalive).
async fn next_event(feed: &mut hyper::body::Incoming) {
    let frame = feed.frame().await.expect("the inspector's feed ended");
    frame.expect("the inspector's feed failed");
}

/// Whether a summary is of an exchange that has ended.
pub fn finished(summary: &Value) -> bool {
    matches!(summary["state"].as_str(), Some("done" | "failed"))
}

impl Drop for TestInspector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
