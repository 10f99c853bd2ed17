//! Certificates from a real ACME server (Pebble) by DNS-01 through a real
//! DNS server (Knot, RFC 2136 updates signed with TSIG): the server gets
//! the wildcard for its domain by itself, serves it to visitors who trust
//! Pebble's root, keeps it across a restart, renews it at two thirds of its
//! short lifetime under a live connection, and when renewal fails keeps
//! serving the good one with the error counted.

use std::path::Path;
use std::time::Duration;

use cryptun_server::Config;
use cryptun_server::tls::acme::AcmeConfig;
use cryptun_server::tls::acme::dns::{DnsUpdater, TsigKey};
use cryptun_testkit::raw::eventually;
use cryptun_testkit::{HttpsVisitor, TestDns, TestPebble, TestServer};
use rustls::pki_types::CertificateDer;

const DOMAIN: &str = "tunnels.test";

/// ACME from `pebble`, the records set at `dns` with `key`, retrying
/// after half a second.
fn acme(pebble: &TestPebble, dns: &TestDns, key: TsigKey) -> AcmeConfig {
    AcmeConfig {
        directory: pebble.directory.clone(),
        ca: Some(pebble.api_ca.clone()),
        email: Some("ops@tunnels.test".into()),
        dns: DnsUpdater::new(dns.addr, DOMAIN, key).unwrap(),
        retry: Duration::from_millis(500),
    }
}

/// A server for `DOMAIN` getting its certificate from `pebble` through
/// `dns`, keeping it in `data_dir`.
async fn server(dns: &TestDns, pebble: &TestPebble, data_dir: &Path) -> TestServer {
    let key = TsigKey::parse(&dns.key()).unwrap();
    let config = Config {
        domain: DOMAIN.into(),
        data_dir: Some(data_dir.to_owned()),
        acme: Some(acme(pebble, dns, key)),
        ..TestServer::test_config()
    };
    let certs = cryptun_server::Certs::managed();
    TestServer::start_tls_with(config, certs, pebble.issuing_root.clone(), None).await
}

/// The leaf of the certificate kept in the database under `data`.
fn kept_leaf(data: &Path) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let store = cryptun_server::Store::open(data).unwrap();
    let kept = store.acme_certificate("*.tunnels.test").unwrap()?;
    CertificateDer::pem_slice_iter(kept.chain.as_bytes())
        .next()
        .map(Result::unwrap)
}

/// The first leaf `server` serves for `sni` that verifies against
/// Pebble's issuing root and that `wanted` accepts, within `limit`. Each
/// try is a new visitor: a resumed TLS session would show the certificate
/// of the session it resumes.
async fn served(
    (server, pebble): (&TestServer, &TestPebble),
    sni: &str,
    limit: Duration,
    wanted: impl Fn(&CertificateDer<'static>) -> bool,
) -> CertificateDer<'static> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let visitor = HttpsVisitor::new(server.tls.as_ref().unwrap().addr, &pebble.issuing_root);
        if let Ok(leaf) = visitor.served_leaf(sni).await {
            if wanted(&leaf) {
                return leaf;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such certificate for {sni} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wildcard_is_obtained_by_dns01_kept_and_renewed_in_place() {
    let dns = TestDns::start(DOMAIN);
    let mut pebble = TestPebble::start(dns.addr, Duration::from_secs(24));
    let data = tempfile::tempdir().unwrap();
    let server = server(&dns, &pebble, data.path()).await;
    let tls = server.tls.as_ref().unwrap();
    let visitor = HttpsVisitor::new(tls.addr, &pebble.issuing_root);

    // Obtained by itself, for any tunnel's name and the apex, verified
    // against Pebble's root.
    let first = served(
        (&server, &pebble),
        "app.tunnels.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    let apex = served((&server, &pebble), "tunnels.test", Duration::ZERO, |_| true).await;
    assert_eq!(apex, first);
    assert_eq!(
        kept_leaf(data.path()),
        Some(first.clone()),
        "kept in the database"
    );
    let reply = visitor
        .get(Some("nobody.tunnels.test"), "nobody.tunnels.test", "/")
        .await;
    assert_eq!(reply.status, 404, "served over the new certificate");

    // A connection made now lives through the renewal.
    let mut live = visitor.connect(Some("app.tunnels.test")).await.unwrap();

    // Renewed at two thirds of its 24 s: a new leaf, same names.
    let renewed = served(
        (&server, &pebble),
        "app.tunnels.test",
        Duration::from_secs(40),
        |leaf| *leaf != first,
    )
    .await;
    assert_eq!(kept_leaf(data.path()), Some(renewed.clone()));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    live.write_all(b"GET / HTTP/1.1\r\nHost: app.tunnels.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    live.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 404"),
        "the old connection still served"
    );

    // Pebble gone: renewals fail, the good certificate stays, the error
    // is counted.
    pebble.stop();
    let metrics = cryptun_testkit::Visitor::new(server.addr);
    eventually(Duration::from_secs(30), "a failed renewal counted", || {
        let metrics = &metrics;
        async move {
            let text = metrics.get("localhost", "/metrics").await.text();
            text.contains("cryptun_acme_orders_total{name=\"*.tunnels.test\",outcome=\"failed\"}")
        }
    })
    .await;
    let dashboard = metrics.admin_get("/api/dashboard").await.json();
    let cert = &dashboard["server"]["certificate"];
    assert_eq!(cert["days_left"], 0, "a 24 s certificate: {cert}");
    assert!(cert["not_after"].is_string(), "{cert}");
    assert!(
        cert["last_error"].as_str().unwrap().contains("ACME"),
        "{cert}"
    );
    let still = served(
        (&server, &pebble),
        "app.tunnels.test",
        Duration::ZERO,
        |_| true,
    )
    .await;
    let digest = |c: &CertificateDer| cryptun_testkit::sha256_hex(c.as_ref());
    assert_eq!(
        digest(&still),
        digest(&kept_leaf(data.path()).unwrap()),
        "the kept certificate is served (first {}, renewed {})",
        digest(&first),
        digest(&renewed)
    );
    server.stop().await;

    // Restarted (Pebble still gone): the kept certificate is served at
    // once, no order needed.
    let server = self::server(&dns, &pebble, data.path()).await;
    let after = served(
        (&server, &pebble),
        "app.tunnels.test",
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    assert_eq!(Some(after), kept_leaf(data.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_updates_set_and_remove_records_and_a_wrong_key_is_refused() {
    let dns = TestDns::start(DOMAIN);
    let key = TsigKey::parse(&dns.key()).unwrap();
    let updater = DnsUpdater::new(dns.addr, DOMAIN, key).unwrap();
    let name = "_acme-challenge.tunnels.test";
    updater.add_txt(name, "one").await.unwrap();
    updater.add_txt(name, "two").await.unwrap();
    let mut values = updater.txt_values(name).await.unwrap();
    values.sort();
    assert_eq!(values, ["one", "two"], "both challenges' records at once");
    updater.remove_txt(name, "one").await.unwrap();
    assert_eq!(updater.txt_values(name).await.unwrap(), ["two"]);

    // Another secret under the same key name: the server refuses, and
    // nothing changes.
    let forged = TsigKey::parse("hmac-sha256:acme-key:Zm9yZ2VkZm9yZ2VkZm9yZ2Vk").unwrap();
    let forger = DnsUpdater::new(dns.addr, DOMAIN, forged).unwrap();
    let err = forger.add_txt(name, "evil").await.unwrap_err().to_string();
    assert!(err.contains("refused the update"), "{err}");
    assert_eq!(updater.txt_values(name).await.unwrap(), ["two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_that_cannot_set_its_records_serves_nothing_and_says_so() {
    let dns = TestDns::start(DOMAIN);
    let pebble = TestPebble::start(dns.addr, Duration::from_secs(300));
    let data = tempfile::tempdir().unwrap();
    let forged = TsigKey::parse("hmac-sha256:acme-key:Zm9yZ2VkZm9yZ2VkZm9yZ2Vk").unwrap();
    let config = Config {
        domain: DOMAIN.into(),
        data_dir: Some(data.path().to_owned()),
        acme: Some(acme(&pebble, &dns, forged)),
        ..TestServer::test_config()
    };
    let certs = cryptun_server::Certs::managed();
    let server = TestServer::start_tls_with(config, certs, pebble.issuing_root.clone(), None).await;
    let metrics = cryptun_testkit::Visitor::new(server.addr);
    eventually(Duration::from_secs(20), "failed orders counted", || {
        let metrics = &metrics;
        async move {
            let text = metrics.get("localhost", "/metrics").await.text();
            text.contains("cryptun_acme_orders_total{name=\"*.tunnels.test\",outcome=\"failed\"} 2")
        }
    })
    .await;
    let visitor = HttpsVisitor::new(server.tls.as_ref().unwrap().addr, &pebble.issuing_root);
    assert!(
        visitor.served_leaf("app.tunnels.test").await.is_err(),
        "no certificate to serve"
    );
    assert_eq!(kept_leaf(data.path()), None, "nothing kept");
    let dashboard = metrics.admin_get("/api/dashboard").await.json();
    let cert = &dashboard["server"]["certificate"];
    assert_eq!(cert["name"], "*.tunnels.test", "{dashboard}");
    assert!(cert.get("not_after").is_none(), "{cert}");
    let error = cert["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused the update"),
        "the dashboard says why: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_and_chromium_trusting_the_acme_root_reach_a_tunnel_over_https() {
    let dns = TestDns::start(DOMAIN);
    let pebble = TestPebble::start(dns.addr, Duration::from_secs(3600));
    let data = tempfile::tempdir().unwrap();
    let server = server(&dns, &pebble, data.path()).await;
    let https = server.tls.as_ref().unwrap().addr;
    served(
        (&server, &pebble),
        "tunnels.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    // A tunnel, its client on the plain listener (the certificate names
    // only the tunnels' domain).
    let origin = cryptun_testkit::Origin::start().await;
    let target = cryptun_client::Target::parse(&origin.target()).unwrap();
    let config =
        cryptun_client::ClientConfig::new(&format!("http://{}", server.addr), target).unwrap();
    let client = cryptun_testkit::TestClient::start_config(config)
        .await
        .unwrap();
    let name = format!("{}.{DOMAIN}", client.tunnel.subdomain);
    let url = format!("https://{name}:{}/echo", https.port());

    // curl, trusting Pebble's root only.
    let resolve = format!("{name}:{}:127.0.0.1", https.port());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--resolve", &resolve, "--cacert"])
        .arg(&pebble.issuing_root)
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"path\":\"/echo\""));

    // Chromium, with Pebble's root in its own certificate store and no
    // exception for errors: the page loads, over HTTP/2.
    let home = tempfile::tempdir().unwrap();
    cryptun_testkit::browser::trust_root(home.path(), &pebble.issuing_root);
    let rules = format!("--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1");
    let mut browser = cryptun_testkit::Browser::launch_with(&[rules], Some(home.path())).await;
    browser.navigate(&url).await;
    let text = browser.eval("document.body.innerText").await;
    assert!(
        text.as_str().unwrap_or_default().contains("/echo"),
        "{text}"
    );
    let protocol = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2");
}

/// The ACME orders a node's `/metrics` counts as issued.
async fn issued(server: &TestServer) -> u64 {
    let text = cryptun_testkit::Visitor::new(server.addr)
        .get("localhost", "/metrics")
        .await
        .text();
    text.lines()
        .find(|l| l.starts_with("cryptun_acme_orders_total{") && l.contains("issued"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_orders_one_certificate_and_every_node_serves_it() {
    let redis = cryptun_testkit::TestRedis::start();
    let dns = TestDns::start(DOMAIN);
    let pebble = TestPebble::start(dns.addr, Duration::from_secs(24));
    let node = |name: &str| {
        let key = TsigKey::parse(&dns.key()).unwrap();
        Config {
            domain: DOMAIN.into(),
            acme: Some(acme(&pebble, &dns, key)),
            ..TestServer::cluster_config(&redis.url(), name)
        }
    };
    let start = |config| {
        let certs = cryptun_server::Certs::managed();
        TestServer::start_tls_with(config, certs, pebble.issuing_root.clone(), None)
    };
    let a = start(node("a")).await;
    let b = start(node("b")).await;
    let first = served(
        (&a, &pebble),
        "app.tunnels.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    let on_b = served(
        (&b, &pebble),
        "app.tunnels.test",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert_eq!(on_b, first, "one certificate, served by both");
    assert_eq!(issued(&a).await + issued(&b).await, 1, "ordered once");

    // Renewed once for both, at two thirds of its 24 s.
    let renewed = served(
        (&a, &pebble),
        "app.tunnels.test",
        Duration::from_secs(40),
        |leaf| *leaf != first,
    )
    .await;
    let on_b = served(
        (&b, &pebble),
        "app.tunnels.test",
        Duration::from_secs(20),
        |leaf| *leaf == renewed,
    )
    .await;
    assert_eq!(on_b, renewed);
    assert_eq!(issued(&a).await + issued(&b).await, 2, "renewed once");
}
