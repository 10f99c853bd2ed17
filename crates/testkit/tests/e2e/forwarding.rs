//! Forwarding through a tunnel, end to end over real loopback sockets: the
//! request line, method, headers and body reach the local service as the
//! visitor sent them (minus hop-by-hop headers, with `X-Forwarded-*` set by
//! the server); responses come back with their status and repeated headers;
//! large bodies arrive intact both ways; many concurrent requests each get
//! their own answer; routing by Host; the server's own `/api/tunnels` and
//! `/healthz`; and requested subdomains.

use cryptun_client::ClientError;
use cryptun_proto::ErrorCode;
use cryptun_testkit::visitor::{raw_exchange, read_response};
use cryptun_testkit::{
    LIMIT, Origin, Reply, TestClient, TestServer, Visitor, pattern, sha256_hex, within,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// `GET path` on `host`, bounded.
async fn get(visitor: &Visitor, host: &str, path: &str) -> Reply {
    within(path, visitor.get(host, path)).await
}

/// `METHOD path` on `host` with `body`, bounded.
async fn call(visitor: &Visitor, method: &str, host: &str, path: &str, body: Vec<u8>) -> Reply {
    within(path, visitor.call(method, host, path, body)).await
}

/// A server, an origin and a client tunnelling to it, and a visitor.
async fn tunnel() -> (TestServer, Origin, TestClient, Visitor) {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    (server, origin, client, visitor)
}

/// The values of header `name` in an `/echo` answer, in order.
fn echoed(json: &Value, name: &str) -> Vec<String> {
    json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn path_and_query_arrive_byte_for_byte() {
    let (_server, _origin, client, visitor) = tunnel().await;
    for path in [
        "/echo",
        "/echo?a=1&a=2&a=&b",
        "/echo?slash=%2F%2f&semi=a;b;c&sp=%20+x&q=?/&pct=%00%FF&sym=~!$'()*,:@",
        "/echo/a%2Fb/;p=1;q=2/./x/../y//z?k=v;w",
        "/echo/%E2%82%AC/caf%C3%A9?%E2%82%AC=%E2%82%AC",
    ] {
        let reply = get(&visitor, &client.host, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.json()["path"], path);
    }
}

#[tokio::test]
async fn methods_and_bodies_are_preserved() {
    let (_server, _origin, client, visitor) = tunnel().await;
    let body = pattern(100_000);
    for method in "GET POST PUT PATCH DELETE OPTIONS PURGE PROPFIND X-CUSTOM_1".split(' ') {
        let sent = if method == "GET" { &[][..] } else { &body[..] };
        let reply = call(&visitor, method, &client.host, "/echo?m", sent.to_vec()).await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["method"], method);
        assert_eq!(json["body_len"], sent.len(), "{method}");
        assert_eq!(json["body_sha256"], sha256_hex(sent), "{method}");
    }
    // HEAD: the length of the body that GET would have, and no body.
    let head = call(&visitor, "HEAD", &client.host, "/bytes?n=12345", vec![]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "12345");
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn request_headers_are_forwarded_without_hop_by_hop_ones() {
    let (server, _origin, client, _visitor) = tunnel().await;
    // From another loopback address where the system has one, so that
    // X-Forwarded-For is seen to come from the connection.
    let socket = TcpSocket::new_v4().unwrap();
    let from = match socket.bind("127.0.0.2:0".parse().unwrap()) {
        Ok(()) => "127.0.0.2",
        Err(_) => "127.0.0.1",
    };
    let stream = within("connect", socket.connect(server.addr))
        .await
        .unwrap();
    let mut conn = BufReader::new(stream);
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\n\
         X-Repeat: one\r\nX-Other: a\r\nX-Repeat: two\r\nX-Repeat: three\r\n\
         Connection: keep-alive, X-Secret\r\nX-Secret: hidden\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
         Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n",
        client.host
    )
    .into_bytes();
    request.extend_from_slice(b"X-Latin1: caf\xe9\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    conn.get_mut().write_all(&request).await.unwrap();
    let reply = within("echo", read_response(&mut conn)).await;
    assert_eq!(reply.status, 200);
    let json: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["body_len"], 5, "the chunked body is sent on");
    assert_eq!(echoed(&json, "x-repeat"), ["one", "two", "three"]);
    assert_eq!(echoed(&json, "x-other"), ["a"]);
    assert_eq!(echoed(&json, "host"), [client.host.as_str()]);
    assert_eq!(echoed(&json, "x-latin1"), ["caf\u{fffd}"], "raw byte kept");
    let hop_by_hop = "connection x-secret keep-alive upgrade proxy-connection";
    for gone in hop_by_hop.split(' ').chain(["forwarded", "x-real-ip"]) {
        assert!(echoed(&json, gone).is_empty(), "{gone} forwarded");
    }
    // TE is hop-by-hop too, but that the visitor takes trailers travels
    // (the session carries them): as `te: trailers`, nothing else.
    assert_eq!(echoed(&json, "te"), ["trailers"]);
    // The client may frame its own hop as chunked, but the visitor's
    // Transfer-Encoding must not come through.
    let te = echoed(&json, "transfer-encoding");
    assert!(te.iter().all(|v| v == "chunked"), "{te:?}");
    assert_eq!(echoed(&json, "x-forwarded-for"), [from]);
    assert_eq!(echoed(&json, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&json, "x-forwarded-host"), [client.host.as_str()]);
}

#[tokio::test]
async fn conflicting_body_lengths_cannot_smuggle_a_request() {
    let (server, origin, client, _visitor) = tunnel().await;
    // Content-Length and Transfer-Encoding together are refused outright
    // (RFC 9112 6.3 allows it; a proxy in front might have framed the body
    // by the other header) and the connection closes: the origin sees
    // neither this request nor the one hidden after it.
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: {0}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\nGET /token?t=next HTTP/1.1\r\nHost: {0}\r\n\r\n",
        client.host
    );
    let mut conn = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    conn.get_mut().write_all(request.as_bytes()).await.unwrap();
    let first = within("first", read_response(&mut conn)).await;
    assert_eq!(first.status, 400);
    assert_eq!(first.header("connection"), Some("close"));
    assert_eq!(first.header("x-cryptun-error"), Some("bad_framing"));
    let mut rest = Vec::new();
    within("close", conn.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "");
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn response_status_and_headers_come_back() {
    let (_server, _origin, client, visitor) = tunnel().await;
    for code in [200u16, 201, 202, 301, 400, 404, 418, 451, 500, 503, 599] {
        let reply = get(&visitor, &client.host, &format!("/status?code={code}")).await;
        assert_eq!(reply.status.as_u16(), code);
        assert_eq!(reply.text(), format!("status {code}"));
        assert!(reply.headers.get("x-cryptun-error").is_none());
    }
    let empty = get(&visitor, &client.host, "/status?code=204").await;
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());

    let reply = get(&visitor, &client.host, "/headers").await;
    assert_eq!(reply.status, 200);
    let all = |name: &str| -> Vec<&str> {
        let values = reply.headers.get_all(name).iter();
        values.map(|v| v.to_str().unwrap()).collect()
    };
    assert_eq!(all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(all("x-multi"), ["1", "2"]);
    assert_eq!(reply.text(), "headers");
}

// On several threads, as the real server and client run: hashing and
// comparing megabytes in a debug build must not starve the heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_arrive_intact_both_ways() {
    // Worked out before anything runs, so that no heartbeat waits for it.
    let data = pattern(16 << 20);
    let data_sha = sha256_hex(&data);
    let (_server, _origin, client, visitor) = tunnel().await;
    let n = 8 << 20;
    let down = get(&visitor, &client.host, &format!("/bytes?n={n}")).await;
    assert_eq!(down.status, 200);
    assert_eq!(down.body.len(), n);
    assert!(down.body[..] == data[..n], "the download was corrupted");

    let up = call(&visitor, "POST", &client.host, "/sha256", data.clone()).await;
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(up.json()["len"], data.len());
    assert_eq!(up.json()["sha256"], data_sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_each_get_their_own_answer() {
    let (_server, origin, client, visitor) = tunnel().await;
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let (visitor, host) = (visitor.clone(), client.host.clone());
            let token = format!("req-{i}-{}", cryptun_proto::random_id(8));
            tokio::spawn(async move {
                let reply = visitor.get(&host, &format!("/token?t={token}")).await;
                (token, reply)
            })
        })
        .collect();
    for task in tasks {
        let (token, reply) = within("concurrent request", task).await.unwrap();
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
        assert_eq!(reply.text(), token);
    }
    assert_eq!(origin.requests(), 256);
}

#[tokio::test]
async fn unknown_tunnel_is_404_without_naming_live_ones() {
    let (server, _origin, client, visitor) = tunnel().await;
    let live = &client.tunnel.subdomain;
    // A name that differs by its last character, and unrelated ones.
    let near = &live[..live.len() - 1];
    for name in [near, "tunnel-nosuchname", "www"] {
        let reply = get(&visitor, &server.host_of(name), "/token?t=x").await;
        assert_eq!(reply.status, 404, "{name}");
        assert_eq!(reply.headers["x-cryptun-error"], "tunnel_not_found");
        let text = reply.text();
        assert!(!text.contains(live.as_str()), "names {live}: {text}");
        assert!(!text.contains(&client.tunnel.tunnel_id), "{text}");
        assert!(!text.contains(&client.host), "{text}");
    }
    let ok = get(&visitor, &client.host, "/token?t=ok").await;
    assert_eq!(ok.text(), "ok");
}

#[tokio::test]
async fn host_routing_accepts_every_spelling_of_a_tunnel_name() {
    let (server, _origin, client, visitor) = tunnel().await;
    let sub = &client.tunnel.subdomain;
    let port = server.addr.port();
    for host in [
        format!("{}.LOCALHOST:{port}", sub.to_ascii_uppercase()),
        format!("{sub}.localhost"),
        format!("{sub}.localhost:1"),
        format!("{sub}.localhost.:{port}"),
        format!("{sub}.localhost."),
    ] {
        let reply = get(&visitor, &host, "/token?t=routed").await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
        assert_eq!(reply.text(), "routed", "{host}");
    }
    // An absolute-form target routes by its authority: with HTTP/1.0 no
    // Host is needed; HTTP/1.1 must send one (RFC 9112 §3.2), whatever the
    // target names.
    let absolute = |version: &str| {
        format!(
            "GET http://{}/token?t=abs HTTP/{version}\r\nConnection: close\r\n\r\n",
            client.host
        )
    };
    let raw = raw_exchange(server.addr, absolute("1.0").as_bytes(), LIMIT).await;
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    assert!(raw.ends_with("abs"), "{raw}");
    let raw = raw_exchange(server.addr, absolute("1.1").as_bytes(), LIMIT).await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}

#[tokio::test]
async fn missing_or_malformed_host_is_400() {
    let (server, origin, client, _visitor) = tunnel().await;
    let mut requests = vec![
        "GET /token?t=x HTTP/1.0\r\n\r\n".to_owned(),
        "GET /token?t=x HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET /token?t=x HTTP/1.1\r\nHost: {0}\r\nHost: {0}\r\nConnection: close\r\n\r\n",
            client.host
        ),
    ];
    let sub = &client.tunnel.subdomain;
    for bad in [
        format!("{sub}.localhost:port"),
        format!("{sub}.localhost:99999"),
        format!("{sub}..localhost"),
        format!("{sub}.local host"),
        format!("user@{sub}.localhost"),
        format!("{sub}.localhost/x"),
        "[::1".to_owned(),
    ] {
        requests.push(format!(
            "GET /token?t=x HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n"
        ));
    }
    for request in requests {
        let raw = raw_exchange(server.addr, request.as_bytes(), LIMIT).await;
        let status = raw.split(' ').nth(1).unwrap_or("");
        assert_eq!(status, "400", "{request:?} got {raw:?}");
    }
    assert_eq!(
        origin.requests(),
        0,
        "a request without a valid Host got through"
    );
}

#[tokio::test]
async fn each_request_on_a_keep_alive_connection_routes_by_its_own_host() {
    let server = TestServer::start().await;
    let (origin_a, origin_b) = (Origin::start().await, Origin::start().await);
    let a = TestClient::start(&server, &origin_a.target()).await;
    let b = TestClient::start(&server, &origin_b.target()).await;
    let mut conn = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    for (i, host) in [&a.host, &b.host, &a.host].into_iter().enumerate() {
        let request = format!("GET /echo?n={i} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
        let reply = within("keep-alive request", read_response(&mut conn)).await;
        assert_eq!(reply.status, 200);
        assert_ne!(reply.header("connection"), Some("close"));
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["path"], format!("/echo?n={i}"));
        assert_eq!(echoed(&json, "x-forwarded-host"), [host.as_str()]);
    }
    assert_eq!((origin_a.requests(), origin_b.requests()), (2, 1));
}

#[tokio::test]
async fn api_lists_tunnels_and_counts_their_requests() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let a = TestClient::start(&server, &origin.target()).await;
    let b = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let own = format!("localhost:{}", server.addr.port());

    let health = get(&visitor, &own, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["tunnels"], 2);

    for _ in 0..3 {
        assert_eq!(get(&visitor, &a.host, "/token?t=x").await.status, 200);
    }
    let list = within("api", visitor.tunnels()).await;
    assert_eq!(list.len(), 2, "{list:?}");
    for (client, count) in [(&a, 3), (&b, 0)] {
        let t = &client.tunnel;
        let entry = list.iter().find(|e| e["subdomain"] == t.subdomain.as_str());
        let entry = entry.unwrap_or_else(|| panic!("{} missing: {list:?}", t.subdomain));
        assert_eq!(entry["tunnel_id"], t.tunnel_id.as_str());
        assert_eq!(entry["public_url"], t.public_url.as_str());
        assert_eq!(
            t.public_url,
            format!("http://{}.localhost:{}", t.subdomain, server.addr.port())
        );
        let addr: std::net::SocketAddr = entry["client_addr"].as_str().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        // RFC 3339 in UTC, to the second: 2026-01-02T03:04:05Z.
        let created = entry["created_at"].as_str().unwrap().as_bytes();
        let shape = created
            .iter()
            .map(|b| if b.is_ascii_digit() { b'0' } else { *b });
        assert_eq!(
            shape.collect::<Vec<_>>(),
            b"0000-00-00T00:00:00Z",
            "{entry}"
        );
        assert_eq!(entry["request_count"], count, "{entry}");
    }
    // Server routes on the server's own host are not tunnel requests.
    assert_eq!(get(&visitor, &own, "/nope").await.status, 404);
    let list = within("api", visitor.tunnels()).await;
    let entry = list.iter().find(|e| e["subdomain"] == a.tunnel.subdomain);
    assert_eq!(entry.unwrap()["request_count"], 3);
}

#[tokio::test]
async fn requested_subdomains_are_granted_validated_and_exclusive() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let name = format!("My-App-{}", cryptun_proto::random_id(6));
    let lower = name.to_ascii_lowercase();
    let target = origin.target();
    let ask = |name: String| {
        TestClient::start_with(&server, &target, move |c| c.tunnel.subdomain = Some(name))
    };
    let granted = within("granted", ask(name.clone())).await.unwrap();
    assert_eq!(granted.tunnel.subdomain, lower);
    let url = format!("http://{lower}.localhost:{}", server.addr.port());
    assert_eq!(granted.tunnel.public_url, url);
    let visitor = Visitor::new(server.addr);
    let reply = get(&visitor, &server.host_of(&lower), "/token?t=named").await;
    assert_eq!(reply.text(), "named");

    for taken in [name.clone(), lower.clone(), name.to_ascii_uppercase()] {
        match within("taken", ask(taken.clone())).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::SubdomainTaken, "{taken}: {message}");
                assert!(message.contains(&lower), "{message}");
            }
            Err(other) => panic!("{taken}: {other}"),
            Ok(_) => panic!("{taken} granted twice"),
        }
    }
    let long = "a".repeat(64);
    for invalid in ["", "-app", "app-", "a.b", "a_b", "ap p", "café", &long] {
        match within("invalid", ask(invalid.to_owned())).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidSubdomain, "{invalid:?}: {message}");
                assert!(message.contains("not a valid"), "{message}");
            }
            Err(other) => panic!("{invalid:?}: {other}"),
            Ok(_) => panic!("{invalid:?} granted"),
        }
    }
    // Nothing refused was registered; the granted one still works.
    assert_eq!(within("api", visitor.tunnels()).await.len(), 1);
    assert!(within("stop", granted.stop()).await.is_ok());
}
