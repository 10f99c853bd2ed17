//! Visitors' access, chosen per tunnel by its client and enforced by the
//! server: IP allow and deny lists (403), HTTP Basic credentials (401 with a
//! challenge), and invalid rules refused when the tunnel is created. A
//! refused visitor never reaches the local app.

use std::net::IpAddr;

use cryptun_client::{BasicAuth, ClientConfig, ClientError};
use cryptun_proto::ErrorCode;
use cryptun_testkit::visitor::{raw_exchange_from, status_of};
use cryptun_testkit::{LIMIT, Origin, RawWs, TestClient, TestServer, Visitor, within};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A tunnel to a fresh origin, with the client configured by `adjust`.
async fn tunnel(
    server: &TestServer,
    adjust: impl FnOnce(&mut ClientConfig),
) -> (Origin, TestClient) {
    let origin = Origin::start().await;
    let client = within(
        "tunnel",
        TestClient::start_with(server, &origin.target(), adjust),
    )
    .await
    .unwrap();
    (origin, client)
}

/// `GET /token?t=ok` on `host` from `source`, with `extra` header lines;
/// the raw response.
async fn get_from(server: &TestServer, source: &str, host: &str, extra: &str) -> String {
    let request =
        format!("GET /token?t=ok HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw_exchange_from(ip(source), server.addr, request.as_bytes(), LIMIT).await
}

#[tokio::test]
async fn allow_and_deny_lists_keep_visitors_out_before_the_app() {
    let server = TestServer::start().await;
    let (allow_origin, allowing) = tunnel(&server, |c| {
        c.tunnel.allow_ips = vec!["127.0.0.1/32".into()]
    })
    .await;
    let (deny_origin, denying) = tunnel(&server, |c| {
        c.tunnel.allow_ips = vec!["127.0.0.0/8".into()];
        c.tunnel.deny_ips = vec!["127.0.0.2".into(), "10.0.0.0/8".into()];
    })
    .await;

    let ok = get_from(&server, "127.0.0.1", &allowing.host, "").await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let out = get_from(&server, "127.0.0.2", &allowing.host, "").await;
    assert_eq!(status_of(&out), 403, "{out}");
    assert!(out.contains("x-cryptun-error: forbidden"), "{out}");
    // The visitor's claims about its address change nothing.
    let claim = "X-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n";
    let out = get_from(&server, "127.0.0.2", &allowing.host, claim).await;
    assert_eq!(status_of(&out), 403, "{out}");
    assert_eq!(allow_origin.requests(), 1);

    let denied = get_from(&server, "127.0.0.2", &denying.host, "").await;
    assert_eq!(status_of(&denied), 403, "deny wins over allow: {denied}");
    for source in ["127.0.0.1", "127.0.0.3"] {
        let ok = get_from(&server, source, &denying.host, "").await;
        assert_eq!(status_of(&ok), 200, "{source}: {ok}");
    }
    assert_eq!(deny_origin.requests(), 2);

    // The admin API shows the rules.
    let list = within("api", Visitor::new(server.addr).tunnels()).await;
    let entry = list
        .iter()
        .find(|t| t["subdomain"] == denying.tunnel.subdomain)
        .unwrap();
    assert_eq!(entry["allow_ips"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(
        entry["deny_ips"],
        serde_json::json!(["127.0.0.2/32", "10.0.0.0/8"])
    );
    assert_eq!(entry["basic_auth"], false);
}

fn basic(user_pass: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        cryptun_testkit::raw::base64_encode(user_pass.as_bytes())
    )
}

#[tokio::test]
async fn basic_auth_challenges_and_the_app_never_sees_the_credentials() {
    let server = TestServer::start().await;
    let password = "correct horse:battery";
    let (origin, client) = tunnel(&server, |c| {
        c.tunnel.basic_auth = Some(BasicAuth {
            username: "ann".into(),
            password: password.into(),
        })
    })
    .await;
    let host = &client.host;
    let bad = [
        String::new(),
        basic("ann:wrong"),
        basic("bob:correct horse:battery"),
        basic("ann:correct horse:battery ").replace("Basic", "Bearer"),
        "Authorization: Basic not-base64!\r\n".to_owned(),
        format!("{0}{0}", basic(&format!("ann:{password}"))),
    ];
    for extra in bad {
        let reply = get_from(&server, "127.0.0.1", host, &extra).await;
        assert_eq!(status_of(&reply), 401, "{extra:?}: {reply}");
        let challenge = format!(
            "www-authenticate: Basic realm=\"{}\"",
            client.tunnel.subdomain
        );
        assert!(reply.contains(&challenge), "{reply}");
    }
    assert_eq!(origin.requests(), 0, "a refused visitor reached the app");

    let good = basic(&format!("ann:{password}"));
    let reply = get_from(&server, "127.0.0.1", host, &good).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
    let echo = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n{good}Connection: close\r\n\r\n");
    let reply = raw_exchange_from(ip("127.0.0.1"), server.addr, echo.as_bytes(), LIMIT).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("authorization"),
        "{reply}"
    );

    // The admin API tells that credentials are set, and nothing of them.
    let list = within("api", Visitor::new(server.addr).tunnels()).await;
    assert_eq!(list[0]["basic_auth"], true);
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains("horse") && !text.contains("ann"), "{text}");
}

#[tokio::test]
async fn invalid_rules_are_refused_at_create_tunnel() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let target = origin.target();
    let refused = |adjust: Box<dyn FnOnce(&mut ClientConfig) + Send>| {
        let server = &server;
        let target = target.clone();
        async move {
            match within("refused", TestClient::start_with(server, &target, adjust)).await {
                Err(ClientError::Refused { code, message }) => (code, message),
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("granted"),
            }
        }
    };
    for cidr in [
        "10.0.0.0/33",
        "10.0.0",
        "example.com",
        "10.0.0.0/8 ",
        "::/200",
    ] {
        let list = vec![cidr.to_owned()];
        let (code, message) = refused(Box::new(move |c| c.tunnel.allow_ips = list)).await;
        assert_eq!(code, ErrorCode::InvalidCidr, "{cidr}: {message}");
        assert!(message.contains(cidr), "{message}");
        let list = vec![cidr.to_owned()];
        let (code, _) = refused(Box::new(move |c| c.tunnel.deny_ips = list)).await;
        assert_eq!(code, ErrorCode::InvalidCidr, "{cidr}");
    }
    let many = vec!["10.0.0.1".to_owned(); 65];
    let (code, _) = refused(Box::new(move |c| c.tunnel.deny_ips = many)).await;
    assert_eq!(code, ErrorCode::InvalidCidr);
    for (user, pass) in [("a:b", "x"), ("", "x"), ("a", ""), ("a", "x\r\ny")] {
        let auth = BasicAuth {
            username: user.into(),
            password: pass.into(),
        };
        let (code, message) = refused(Box::new(move |c| c.tunnel.basic_auth = Some(auth))).await;
        assert_eq!(code, ErrorCode::InvalidBasicAuth, "{user:?}: {message}");
    }
    assert!(
        within("api", Visitor::new(server.addr).tunnels())
            .await
            .is_empty()
    );
}

/// A raw `GET path` on `host` from `source` with these extra header lines
/// (`X-Forwarded-For` and the like, as a proxy would add them).
async fn get_via(
    server: &TestServer,
    source: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw_exchange_from(ip(source), server.addr, request.as_bytes(), LIMIT).await
}

/// `GET /echo` on `host` from `source` with these header lines: the status
/// and, if the app was reached, the `x-forwarded-for` and
/// `x-forwarded-proto` it saw.
async fn echo_via(
    server: &TestServer,
    source: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<(String, String)>) {
    let raw = get_via(server, source, host, "/echo", headers).await;
    let status = status_of(&raw);
    let seen = (status == 200).then(|| {
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        let headers = echo["headers"].as_array().unwrap();
        let named = |name: &str| {
            let pair = headers.iter().find(|h| h[0] == name).unwrap();
            pair[1].as_str().unwrap().to_owned()
        };
        (named("x-forwarded-for"), named("x-forwarded-proto"))
    });
    (status, seen)
}

const XFF: &str = "X-Forwarded-For";

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_it_forwarded_is_the_visitors() {
    let server = TestServer::start_with(cryptun_server::Config {
        trusted_proxies: vec!["127.0.0.2".parse().unwrap()],
        ..TestServer::test_config()
    })
    .await;
    let (origin, client) = tunnel(&server, |c| {
        c.tunnel.allow_ips = vec!["203.0.113.0/24".into()];
    })
    .await;
    let host = &client.host;

    // Through the proxy (127.0.0.2): the rightmost address it appended is
    // the visitor's, for the allow list and for the app; what the visitor
    // wrote before it is not. The proxy's scheme is the visitor's too.
    let chain = [
        (XFF, "198.51.100.1, 203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
    ];
    let seen = ("203.0.113.9".to_owned(), "https".to_owned());
    assert_eq!(
        echo_via(&server, "127.0.0.2", host, &chain).await,
        (200, Some(seen))
    );
    let outside = [(XFF, "203.0.113.9, 198.51.100.7")];
    let (status, _) = echo_via(&server, "127.0.0.2", host, &outside).await;
    assert_eq!(status, 403, "a visitor cannot choose its address");
    // The proxy itself, with no header: not on the list.
    assert_eq!(echo_via(&server, "127.0.0.2", host, &[]).await.0, 403);
    // Anyone else's headers are not trusted.
    let direct = echo_via(&server, "127.0.0.1", host, &chain).await;
    assert_eq!(direct.0, 403);
    assert_eq!(origin.requests(), 1);

    // The admin API's loopback rule: a visitor named by a proxy on this
    // host is not local, even one named 127.0.0.1.
    let own = server.own_host();
    for claimed in ["203.0.113.9", "127.0.0.1"] {
        let remote = get_via(
            &server,
            "127.0.0.2",
            &own,
            "/api/tunnels",
            &[(XFF, claimed)],
        )
        .await;
        assert_eq!(status_of(&remote), 403, "{claimed}: {remote}");
    }
    let local = get_via(&server, "127.0.0.2", &own, "/api/tunnels", &[]).await;
    assert_eq!(status_of(&local), 200, "{local}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_rates_and_handshake_failures_count_per_forwarded_address() {
    let dir = cryptun_testkit::TempDir::new();
    let mut config = TestServer::auth_config(&dir.path, cryptun_server::AuthMode::Required);
    config.trusted_proxies = vec!["127.0.0.2".parse().unwrap()];
    config.rate_limits.per_ip = Some("1/m".parse().unwrap());
    config.auth_backoff.free_failures = 1;
    config.auth_backoff.base = std::time::Duration::from_secs(60);
    let server = TestServer::start_with(config).await;
    let token = cryptun_server::Store::open(&dir.path)
        .unwrap()
        .create_key("k")
        .unwrap()
        .token;
    let (_origin, client) = tunnel(&server, |c| c.token = Some(token.clone())).await;

    // One request a minute per visitor address, however many share the proxy.
    for (who, status) in [
        ("203.0.113.1", 200),
        ("203.0.113.1", 429),
        ("203.0.113.2", 200),
    ] {
        let reply = get_via(
            &server,
            "127.0.0.2",
            &client.host,
            "/token?t=ok",
            &[(XFF, who)],
        )
        .await;
        assert_eq!(status_of(&reply), status, "{who}: {reply}");
    }

    // Failed handshakes through the proxy turn away the address that
    // failed, not every client behind the proxy.
    async fn create(server: &TestServer, who: &str, token: &str) -> String {
        let ws = RawWs::connect_from(server, ip("127.0.0.2"), Some(who)).await;
        let (_ws, answer) = ws.ask(serde_json::json!({ "token": token })).await;
        answer["code"].as_str().unwrap_or("created").to_owned()
    }
    for expected in ["unauthorized", "unauthorized", "too_many_attempts"] {
        assert_eq!(
            create(&server, "198.51.100.1", "ck_guess_x").await,
            expected
        );
    }
    assert_eq!(
        create(&server, "198.51.100.2", token.expose()).await,
        "created"
    );
}

#[tokio::test]
async fn behind_a_proxy_terminating_tls_public_urls_say_https() {
    let server = TestServer::start_with(cryptun_server::Config {
        public_scheme: "https".into(),
        public_port: Some(443),
        trusted_proxies: vec!["127.0.0.2".parse().unwrap()],
        ..TestServer::test_config()
    })
    .await;
    let (_ws, created) = RawWs::tunnel(&server, serde_json::json!({})).await;
    let name = created["subdomain"].as_str().unwrap();
    assert_eq!(created["public_url"], format!("https://{name}.localhost"));
    let listed = within("api", Visitor::new(server.addr).tunnels()).await;
    assert_eq!(listed[0]["public_url"], created["public_url"]);
}
