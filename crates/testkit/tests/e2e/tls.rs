//! TLS end to end, over real loopback sockets: HTTPS visitors through a
//! tunnel whose client connects over `wss://` (with the development
//! authority and with an operator's wildcard certificate); a client that
//! does not trust the certificate is refused with a message that says what
//! to do; a certificate reload is served to new connections (and a failed
//! one keeps the old certificate); the development authority survives a
//! restart and signs nothing outside its domain; a Host that differs from
//! the SNI gets 421; plain HTTP redirects with `redirect_http`; a silent
//! TLS client is closed after the handshake timeout.

use std::time::Duration;

use cryptun_client::ClientError;
use cryptun_server::Certs;
use cryptun_testkit::tls::TlsFiles;
use cryptun_testkit::visitor::raw_exchange;
use cryptun_testkit::{HttpsVisitor, Origin, TestClient, TestServer, Visitor, within};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A TLS server, an origin, and a client tunnelling to it over `wss://`.
async fn tunnel() -> (TestServer, Origin, TestClient) {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let origin = Origin::start().await;
    let client = within("client", TestClient::start(&server, &origin.target())).await;
    (server, origin, client)
}

/// The tunnel's host name, without the port.
fn name(client: &TestClient) -> String {
    format!("{}.localhost", client.tunnel.subdomain)
}

/// The values of header `name` in an `/echo` answer.
fn echoed(json: &Value, name: &str) -> Vec<String> {
    let headers = json["headers"].as_array().unwrap();
    let values = headers.iter().filter(|h| h[0] == name);
    values.map(|h| h[1].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn https_visitor_through_a_tunnel_over_wss() {
    let (server, _origin, client) = tunnel().await;
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(
        client.tunnel.public_url,
        format!("https://{}:{}", name(&client), tls.addr.port())
    );
    let visitor = tls.visitor();
    let reply = within(
        "https get",
        visitor.get(Some(&name(&client)), &client.host, "/echo?tls=1"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["path"], "/echo?tls=1");
    assert_eq!(echoed(&json, "x-forwarded-proto"), ["https"]);

    // The same tunnel over the plain listener says so too: the scheme is
    // the connection's, not the server's.
    let plain = within(
        "http get",
        Visitor::new(server.addr).get(&client.host, "/echo"),
    )
    .await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(echoed(&plain.json(), "x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn a_client_without_the_ca_is_refused_clearly() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let origin = Origin::start().await;
    let refused = within(
        "client",
        TestClient::start_with(&server, &origin.target(), |c| c.ca = None),
    )
    .await;
    let Err(err) = refused else {
        panic!("a client that does not trust the certificate connected")
    };
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("certificate not trusted"), "{message}");
    assert!(message.contains("--ca FILE"), "{message}");

    // Another CA is no better than none.
    let other = TlsFiles::generate("localhost");
    let refused = within(
        "client",
        TestClient::start_with(&server, &origin.target(), |c| c.ca = Some(other.ca.clone())),
    )
    .await;
    assert!(matches!(refused, Err(ClientError::Untrusted { .. })));

    // A --ca file that holds no certificate is named.
    let refused = within(
        "client",
        TestClient::start_with(&server, &origin.target(), |c| {
            c.ca = Some(other.key.clone())
        }),
    )
    .await;
    assert!(matches!(refused, Err(ClientError::Ca { .. })));
}

/// A server whose certificate comes from files, as an operator's does.
async fn server_with_files(domain: &str) -> (TestServer, TlsFiles) {
    let files = TlsFiles::generate(domain);
    let certs = Certs::load(&files.cert, &files.key).unwrap();
    let config = cryptun_server::Config {
        domain: domain.into(),
        ..TestServer::test_config()
    };
    let server = TestServer::start_tls_with(config, certs, files.ca.clone(), None).await;
    (server, files)
}

#[tokio::test]
async fn an_operator_wildcard_certificate_serves_tunnels() {
    let (server, _files) = server_with_files("tunnels.localhost").await;
    let origin = Origin::start().await;
    // The client dials https://tunnels.localhost:PORT, trusting the CA.
    let client = within("client", TestClient::start(&server, &origin.target())).await;
    let name = format!("{}.tunnels.localhost", client.tunnel.subdomain);
    assert!(
        client
            .tunnel
            .public_url
            .starts_with(&format!("https://{name}:"))
    );
    let visitor = server.tls.as_ref().unwrap().visitor();
    let reply = within("get", visitor.get(Some(&name), &client.host, "/echo")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_reloaded_certificate_is_served_to_new_connections() {
    let (server, files) = server_with_files("localhost").await;
    let tls = server.tls.as_ref().unwrap();
    let (cert_path, key_path) = tls.certs.files().unwrap();
    let old = tls.visitor();
    let original = files.leaf();
    let served = within("handshake", old.served_leaf("localhost"))
        .await
        .unwrap();
    assert_eq!(served, original);
    // An established connection keeps its certificate across the reload.
    let established = within("handshake", old.connect(Some("localhost")))
        .await
        .unwrap();

    let renewed = TlsFiles::generate("localhost");
    std::fs::copy(&renewed.cert, cert_path).unwrap();
    std::fs::copy(&renewed.key, key_path).unwrap();
    tls.certs.reload().unwrap();

    let new = HttpsVisitor::new(tls.addr, &renewed.ca);
    let served = within("handshake", new.served_leaf("localhost"))
        .await
        .unwrap();
    assert_eq!(served, renewed.leaf());
    let refused = within("handshake", old.served_leaf("localhost")).await;
    assert!(refused.is_err(), "the old CA still verifies the server");
    let kept = &established.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(*kept, original);

    // A reload that fails (a key that is not PEM) keeps the current pair.
    std::fs::write(key_path, "not a key").unwrap();
    let err = tls.certs.reload().unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    let served = within("handshake", new.served_leaf("localhost"))
        .await
        .unwrap();
    assert_eq!(served, renewed.leaf());
    // So does one whose key belongs to another certificate.
    let stranger = TlsFiles::generate("localhost");
    std::fs::copy(&stranger.key, key_path).unwrap();
    let err = tls.certs.reload().unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let served = within("handshake", new.served_leaf("localhost"))
        .await
        .unwrap();
    assert_eq!(served, renewed.leaf());
}

#[tokio::test]
async fn the_development_authority_outlives_restarts_and_its_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (first, dev) = Certs::dev("localhost", dir.path()).unwrap();
    assert!(dev.created);
    drop(first);
    let (again, same) = Certs::dev("localhost", dir.path()).unwrap();
    assert!(!same.created);
    assert_eq!(same.ca, dev.ca);
    let config = TestServer::test_config();
    let server = TestServer::start_tls_with(config, again, dev.ca.clone(), None).await;
    // The restarted server's certificates verify with the first ca.pem.
    let visitor = server.tls.as_ref().unwrap().visitor();
    let reply = within("get", visitor.get(Some("x.localhost"), "x.localhost", "/")).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    // It vouches for nothing outside its domain.
    let other = within("handshake", visitor.connect(Some("example.com"))).await;
    assert!(other.is_err(), "a certificate for example.com verified");
}

#[tokio::test]
async fn a_host_other_than_the_sni_is_misdirected() {
    let (server, _origin, client) = tunnel().await;
    let visitor = server.tls.as_ref().unwrap().visitor();
    let mine = name(&client);

    // Opened for one tunnel, asked for another (or for the server itself).
    let reply = within(
        "get",
        visitor.get(Some("other.localhost"), &client.host, "/echo"),
    )
    .await;
    assert_eq!(reply.status, 421, "{}", reply.text());
    assert_eq!(reply.headers["x-cryptun-error"], "misdirected");
    let reply = within("get", visitor.get(Some(&mine), "localhost", "/healthz")).await;
    assert_eq!(reply.status, 421, "{}", reply.text());

    // No SNI (a connection by IP address) reaches the server's own routes
    // only.
    let reply = within("get", visitor.get(None, &client.host, "/echo")).await;
    assert_eq!(reply.status, 421, "{}", reply.text());
    let reply = within("get", visitor.get(None, "127.0.0.1", "/healthz")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The SNI's spelling does not matter, nor the Host's port.
    let upper = mine.to_ascii_uppercase();
    let reply = within("get", visitor.get(Some(&upper), &client.host, "/echo")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let config = cryptun_server::Config {
        redirect_http: true,
        ..TestServer::test_config()
    };
    let server = TestServer::start_tls(config).await;
    let port = server.tls.as_ref().unwrap().addr.port();
    for (host, path) in [
        ("tunnel-x.localhost:80", "/a/b?c=d&e"),
        ("localhost", "/ws"),
        ("LOCALHOST.:4000", "/"),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let head = within(
            "redirect",
            raw_exchange(server.addr, request.as_bytes(), Duration::from_secs(2)),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 308 "), "{head}");
        let name = host.split(':').next().unwrap().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let location = format!("location: https://{name}:{port}{path}\r\n");
        assert!(head.to_ascii_lowercase().contains(&location), "{head}");
    }
    // A client pointed at the plain listener is told where to go.
    let origin = Origin::start().await;
    let redirected = within(
        "client",
        TestClient::start_with(&server, &origin.target(), |c| {
            c.control_url = format!("ws://{}/ws", server.addr)
        }),
    )
    .await;
    let Err(ClientError::Redirected { suggest, .. }) = redirected else {
        panic!("the client was not redirected")
    };
    assert_eq!(suggest, format!("https://127.0.0.1:{port}"));
    // A request without a usable Host cannot be redirected.
    let head = raw_exchange(
        server.addr,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(head.contains(" 400 "), "{head}");
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_handshake_timeout() {
    let config = cryptun_server::Config {
        tls_handshake_timeout: Duration::from_millis(300),
        ..TestServer::test_config()
    };
    let server = TestServer::start_tls(config).await;
    let mut silent = TcpStream::connect(server.tls.as_ref().unwrap().addr)
        .await
        .unwrap();
    // Well under the 30 s header timeout that would close it otherwise.
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0; 64])).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the connection stayed open: {closed:?}"
    );
}

#[tokio::test]
async fn hsts_goes_with_every_answer_over_https_and_never_over_http() {
    let server = TestServer::start_tls(cryptun_server::Config {
        hsts: Some(std::time::Duration::from_secs(31_536_000)),
        ..TestServer::test_config()
    })
    .await;
    let origin = Origin::start().await;
    let client = within("client", TestClient::start(&server, &origin.target())).await;
    let visitor = server.tls.as_ref().unwrap().visitor();
    let sts = |reply: &cryptun_testkit::Reply| {
        let values = reply.headers.get_all("strict-transport-security").iter();
        values
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let reply = visitor
        .get(Some(&name(&client)), &client.host, "/echo")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(sts(&reply), ["max-age=31536000"]);
    // A local service's own policy for its name stands.
    let reply = visitor
        .get(Some(&name(&client)), &client.host, "/headers")
        .await;
    assert_eq!(sts(&reply), ["max-age=60"]);
    // The server's own answers too: a name without a tunnel.
    let stranger = format!(
        "nobody.localhost:{}",
        server.tls.as_ref().unwrap().addr.port()
    );
    let reply = visitor.get(Some("nobody.localhost"), &stranger, "/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(sts(&reply), ["max-age=31536000"]);
    // Never over plain HTTP, where an attacker could strip or forge it.
    let plain = Visitor::new(server.addr)
        .get(&server.host_of(&client.tunnel.subdomain), "/echo")
        .await;
    assert_eq!(plain.status, 200);
    assert!(sts(&plain).is_empty(), "{:?}", plain.headers);
}
