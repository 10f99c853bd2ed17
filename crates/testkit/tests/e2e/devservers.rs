//! The client pointed at local services as development servers are: one
//! that refuses Hosts but its own unless `--host-header rewrite` (or a
//! value) says its name, and one over HTTPS whose certificate a test
//! authority signed: refused (502, saying why and what to do) unless that
//! authority is trusted (`--local-ca`) or the check is off
//! (`--local-insecure`), a browser's page saying so; its WebSocket upgrades pass too.

use cryptun_client::{Event, HostHeader, LocalTls};
use cryptun_testkit::devserver::{HostCheck, HttpsOrigin};
use cryptun_testkit::wsecho;
use cryptun_testkit::{TestClient, TestServer, Visitor, within};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A client to `target` with `host_header`.
async fn with_host_header(server: &TestServer, target: &str, host: HostHeader) -> TestClient {
    TestClient::start_with(server, target, |c| c.tunnel.target.set_host_header(host))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_host_checking_app_answers_once_the_host_is_rewritten() {
    let server = TestServer::start().await;
    let app = HostCheck::start().await;
    let visitor = Visitor::new(server.addr);

    // Preserved (the default): the app sees the tunnel's name and refuses.
    let preserved = TestClient::start(&server, &app.target()).await;
    let reply = visitor.get(&preserved.host, "/").await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("is not allowed"), "{}", reply.text());

    // Rewritten: the target's host:port; the visitor's Host stays in
    // X-Forwarded-Host.
    let rewritten = with_host_header(&server, &app.target(), HostHeader::Rewrite).await;
    let reply = visitor.get(&rewritten.host, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["host"], app.target());
    assert_eq!(seen["forwarded_host"], rewritten.host);

    // A value: sent as given.
    let named = format!("localhost:{}", app.addr.port());
    let value: HostHeader = named.parse().unwrap();
    let valued = with_host_header(&server, &app.target(), value).await;
    let reply = visitor.get(&valued.host, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["host"], named);
}

#[tokio::test]
async fn an_https_target_is_served_when_its_authority_is_trusted() {
    let server = TestServer::start().await;
    let origin = HttpsOrigin::start().await;
    let visitor = Visitor::new(server.addr);

    // The system's authorities alone do not know the test authority.
    let untrusted = TestClient::start(&server, &origin.target()).await;
    let reply = visitor.get(&untrusted.host, "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let why = reply.text();
    assert!(why.contains(&origin.target()), "{why}");
    assert!(
        why.contains("not signed by an authority this machine trusts"),
        "{why}"
    );
    assert!(why.contains("--local-ca FILE"), "{why}");
    let failed = |e: &Event| matches!(e, Event::Request(done) if done.error.is_some());
    let event = untrusted.wait_event("the failed request", failed).await;
    let Event::Request(done) = event else {
        unreachable!("matched above");
    };
    let printed = done.error.unwrap_or_default();
    assert_eq!(done.status, 502);
    assert!(printed.contains("--local-insecure"), "{printed}");
    // A browser's page says so too, not that nothing answered.
    let html = visitor
        .builder("GET", &untrusted.host, "/")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .body(Default::default())
        .unwrap();
    let page = visitor.fetch(html).await;
    assert_eq!(page.status, 502);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let page = page.text();
    assert!(page.contains("certificate is not trusted"), "{page}");
    assert!(page.contains("not signed by an authority"), "{page}");
    assert!(page.contains("--local-ca FILE"), "{page}");
    assert!(!page.contains("nothing answered"), "{page}");

    // With --local-ca: served, Host rewritten to the target's name.
    let trusted = TestClient::start_with(&server, &origin.target(), |c| {
        let tls = LocalTls {
            ca: Some(origin.files.ca.clone()),
            insecure: false,
            h2: false,
        };
        c.tunnel.target.set_local_tls(tls).unwrap();
        c.tunnel.target.set_host_header(HostHeader::Rewrite);
    })
    .await
    .unwrap();
    let reply = visitor.get(&trusted.host, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["host"],
        format!("localhost:{}", origin.addr.port())
    );

    // With --local-insecure: served without any authority.
    let insecure = TestClient::start_with(&server, &origin.target(), |c| {
        let tls = LocalTls {
            ca: None,
            insecure: true,
            h2: false,
        };
        c.tunnel.target.set_local_tls(tls).unwrap();
    })
    .await
    .unwrap();
    let reply = visitor.get(&insecure.host, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["host"], insecure.host);
}

#[tokio::test]
async fn a_websocket_to_an_https_target_echoes() {
    let server = TestServer::start().await;
    let origin = HttpsOrigin::start().await;
    let client = TestClient::start_with(&server, &origin.target(), |c| {
        let tls = LocalTls {
            ca: Some(origin.files.ca.clone()),
            insecure: false,
            h2: false,
        };
        c.tunnel.target.set_local_tls(tls).unwrap();
    })
    .await
    .unwrap();
    let mut ws = within(
        "the WebSocket handshake",
        wsecho::connect(server.addr, &client.host, "/socket"),
    )
    .await
    .unwrap();
    for i in 0..10usize {
        let msg = Message::text(format!("over TLS {i}"));
        ws.send(msg.clone()).await.unwrap();
        let echoed = within("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, msg);
    }
    ws.close(None).await.unwrap();
}
