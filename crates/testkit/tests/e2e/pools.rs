//! Pools (`cryptun http --pool`): several clients of one owner (one API
//! key, or one `--pool-secret`) serve one name together. Visitors are
//! spread over the members; a member that goes is taken out at once and
//! only its requests in flight fail; the last one's going holds the name
//! for the pool; a pool and a single tunnel never share a name; strangers
//! cannot join. In a cluster, members on two nodes are reached through a
//! third.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cryptun_client::{ClientConfig, ClientError, Secret};
use cryptun_proto::ErrorCode;
use cryptun_testkit::{Origin, TestClient, TestRedis, TestServer, Visitor, within};

const SECRET: &str = "pool-secret-0123456789";

/// Makes `config` a member of the pool `name` with `secret`.
fn member(name: &str, secret: &str) -> impl FnOnce(&mut ClientConfig) {
    let (name, secret) = (name.to_owned(), secret.to_owned());
    move |config| {
        config.tunnel.subdomain = Some(name);
        config.tunnel.pool = true;
        config.tunnel.pool_secret = Some(Secret::new(secret));
    }
}

/// A member of pool `name` on `server`, serving `origin`.
async fn join(server: &TestServer, origin: &Origin, name: &str) -> TestClient {
    TestClient::start_with(server, &origin.target(), member(name, SECRET))
        .await
        .unwrap()
}

/// The refusal `server` gives a client `adjust`ed so.
async fn refused(
    server: &TestServer,
    adjust: impl FnOnce(&mut ClientConfig),
) -> (ErrorCode, String) {
    let origin = Origin::start().await;
    match TestClient::start_with(server, &origin.target(), adjust).await {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(ClientError::Held { message, .. }) => (ErrorCode::SubdomainHeld, message),
        Err(err) => panic!("refused otherwise: {err}"),
        Ok(client) => panic!("admitted as {}", client.tunnel.public_url),
    }
}

/// `count` GETs of `/echo` at `host` through `addr`, `workers` at a time;
/// the statuses in order of completion.
async fn load(addr: std::net::SocketAddr, host: &str, count: usize, workers: usize) -> Vec<u16> {
    let next = Arc::new(AtomicUsize::new(0));
    let each: Vec<_> = (0..workers)
        .map(|_| {
            let (next, host) = (Arc::clone(&next), host.to_owned());
            tokio::spawn(async move {
                let visitor = Visitor::new(addr);
                let mut statuses = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let reply = within("a request to the pool", visitor.get(&host, "/echo")).await;
                    statuses.push(reply.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for worker in each {
        statuses.extend(worker.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visitors_are_spread_over_the_members_and_a_member_lost_costs_only_its_requests() {
    let server = TestServer::start().await;
    let (one, two) = (Origin::start().await, Origin::start().await);
    let first = join(&server, &one, "shared").await;
    let second = join(&server, &two, "shared").await;
    assert!(first.tunnel.pool && second.tunnel.pool);
    assert_eq!(first.tunnel.public_url, second.tunnel.public_url);
    let host = server.host_of("shared");

    // A thousand requests, each answered by one member's local service.
    let statuses = load(server.addr, &host, 1000, 8).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let (a, b) = (one.requests(), two.requests());
    assert_eq!(a + b, 1000);
    for share in [a, b] {
        assert!((350..=650).contains(&share), "shares {a} / {b}");
    }

    // One member killed mid-load: only requests it had in flight fail
    // (502), none hangs, and the rest go to the other member.
    let (addr, again) = (server.addr, host.clone());
    let loading = tokio::spawn(async move { load(addr, &again, 600, 8).await });
    while one.requests() + two.requests() < 1200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    second.kill().await;
    let statuses = loading.await.unwrap();
    assert_eq!(statuses.len(), 600);
    // (Those it had in flight, and those sent its way before the server
    // saw its connection end: a few milliseconds of 8 visitors.)
    let failed: Vec<u16> = statuses.iter().copied().filter(|&s| s != 200).collect();
    assert!(failed.len() <= 40, "{failed:?}");
    assert!(failed.iter().all(|&s| s == 502), "{failed:?}");
    let before = two.requests();
    let statuses = load(server.addr, &host, 100, 4).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(two.requests(), before, "nothing goes to the member lost");
    drop(first);
}

#[tokio::test]
async fn a_pool_and_a_single_tunnel_never_share_a_name() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let _single = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.subdomain = Some("alone".into());
    })
    .await
    .unwrap();
    let (code, message) = refused(&server, member("alone", SECRET)).await;
    assert_eq!(code, ErrorCode::PoolConflict, "{message}");
    let _pool = join(&server, &origin, "together").await;
    let (code, message) = refused(&server, |c| c.tunnel.subdomain = Some("together".into())).await;
    assert_eq!(code, ErrorCode::PoolConflict, "{message}");
}

#[tokio::test]
async fn only_the_pools_owner_joins_it() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let _pool = join(&server, &origin, "ours").await;
    // Another secret is another owner: the name is taken.
    let (code, message) = refused(&server, member("ours", "another-secret-0123456789")).await;
    assert_eq!(code, ErrorCode::SubdomainTaken, "{message}");
    // Without a key a pool needs a secret, of some length, and a name.
    let (code, message) = refused(&server, |c| {
        c.tunnel.subdomain = Some("ours".into());
        c.tunnel.pool = true;
    })
    .await;
    assert_eq!(code, ErrorCode::BadMessage);
    assert!(message.contains("pool_secret"), "{message}");
    let (code, message) = refused(&server, member("ours", "short")).await;
    assert_eq!(code, ErrorCode::BadMessage);
    assert!(message.contains("16"), "{message}");
    let (code, message) = refused(&server, |c| {
        c.tunnel.pool = true;
        c.tunnel.pool_secret = Some(Secret::new(SECRET));
    })
    .await;
    assert_eq!(code, ErrorCode::BadMessage);
    assert!(message.contains("name"), "{message}");
}

#[tokio::test]
async fn the_last_member_gone_holds_the_name_for_the_pool() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let first = join(&server, &origin, "kept").await;
    let second = join(&server, &origin, "kept").await;
    let host = server.host_of("kept");
    let visitor = Visitor::new(server.addr);
    // One gone: the name still serves.
    first.kill().await;
    cryptun_testkit::raw::eventually(
        cryptun_testkit::raw::WAIT,
        "served by the other",
        || async { visitor.get(&host, "/echo").await.status == 200 },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(visitor.get(&host, "/echo").await.status, 200);
    }
    // The last gone: held for the pool (503 while it reconnects), refused
    // to others, given back to a member.
    second.kill().await;
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "held", || async {
        visitor.get(&host, "/echo").await.status == 503
    })
    .await;
    let (code, message) = refused(&server, |c| c.tunnel.subdomain = Some("kept".into())).await;
    assert_eq!(code, ErrorCode::SubdomainHeld, "{message}");
    let (code, message) = refused(&server, member("kept", "another-secret-0123456789")).await;
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    let _back = join(&server, &origin, "kept").await;
    assert_eq!(visitor.get(&host, "/echo").await.status, 200);
}

#[tokio::test]
async fn the_admin_api_lists_each_member() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let first = join(&server, &origin, "listed").await;
    let second = join(&server, &origin, "listed").await;
    let reply = Visitor::new(server.addr).admin_get("/api/tunnels").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let listed: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let members: Vec<&serde_json::Value> = listed
        .as_array()
        .expect("an array of tunnels")
        .iter()
        .filter(|t| t["subdomain"] == "listed")
        .collect();
    assert_eq!(members.len(), 2, "{listed}");
    assert!(members.iter().all(|m| m["pool"] == true), "{listed}");
    let mut ids: Vec<&str> = members
        .iter()
        .map(|m| m["tunnel_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = [
        first.tunnel.tunnel_id.as_str(),
        second.tunnel.tunnel_id.as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_with_members_on_two_nodes_is_served_through_a_third() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(TestServer::start_with(TestServer::cluster_config(&redis.url(), name)).await);
    }
    let (one, two) = (Origin::start().await, Origin::start().await);
    let _first = join(&nodes[0], &one, "spread").await;
    let _second = join(&nodes[1], &two, "spread").await;
    // A single tunnel cannot have the name on any node.
    let (code, message) = refused(&nodes[2], |c| c.tunnel.subdomain = Some("spread".into())).await;
    assert_eq!(code, ErrorCode::PoolConflict, "{message}");
    let host = nodes[2].host_of("spread");
    let statuses = load(nodes[2].addr, &host, 400, 8).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let (a, b) = (one.requests(), two.requests());
    assert_eq!(a + b, 400);
    for share in [a, b] {
        assert!((120..=280).contains(&share), "shares {a} / {b}");
    }
    // Each member's node serves the pool from its own member.
    let before = (one.requests(), two.requests());
    load(nodes[0].addr, &nodes[0].host_of("spread"), 20, 2).await;
    assert_eq!(one.requests(), before.0 + 20);
    assert_eq!(two.requests(), before.1);
}

/// A local TCP service that answers each connection with `tag` and closes.
async fn tagged(tag: &'static [u8]) -> std::net::SocketAddr {
    crate::tcp::service(move |mut stream: tokio::net::TcpStream| async move {
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(tag).await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// A member of TCP pool `name` at `port` on `server`, to `target`.
async fn tcp_member(
    server: &TestServer,
    target: std::net::SocketAddr,
    name: &str,
    port: u16,
) -> Result<TestClient, ClientError> {
    TestClient::start_with(server, &target.to_string(), |c| {
        crate::tcp::tcp(c);
        member(name, SECRET)(c);
        c.tunnel.remote_port = Some(port);
    })
    .await
}

/// The tags `count` connections to `addr` were answered with: (A, B),
/// and how many were closed without one (sent to a member just lost).
async fn tags(addr: std::net::SocketAddr, count: usize) -> (usize, usize, usize) {
    use tokio::io::AsyncReadExt;
    let (mut a, mut b, mut cut) = (0, 0, 0);
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tag = Vec::new();
        let _ = within("a tag", stream.read_to_end(&mut tag)).await;
        match tag.as_slice() {
            b"A" => a += 1,
            b"B" => b += 1,
            b"" => cut += 1,
            other => panic!("answered {other:?}"),
        }
    }
    (a, b, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_pool_shares_one_port_and_spreads_its_connections() {
    let server = TestServer::start().await;
    let port = crate::tcp::free_port();
    let (one, two) = (tagged(b"A").await, tagged(b"B").await);
    let first = tcp_member(&server, one, "db", port).await.unwrap();
    let second = tcp_member(&server, two, "db", port).await.unwrap();
    assert_eq!(second.tunnel.remote_port, Some(port));
    assert!(first.tunnel.pool && second.tunnel.pool);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (a, b, cut) = tags(addr, 200).await;
    assert!((60..=140).contains(&a) && a + b == 200, "{a} / {b} / {cut}");
    // A member must ask for the pool's port, and for that one.
    let refused = tcp_member(&server, two, "db", crate::tcp::free_port()).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused {
                code: ErrorCode::PoolConflict,
                ..
            })
        ),
        "{:?}",
        refused.map(|c| c.tunnel.remote_port)
    );
    let (code, message) = refused_tcp(&server, |c| member("db", SECRET)(c)).await;
    assert_eq!(code, ErrorCode::BadMessage);
    assert!(message.contains("remote_port"), "{message}");
    // One gone: the port stays, served by the other (once the server has
    // seen the first's connection end, a connection sent its way closed).
    first.kill().await;
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "only B", || async {
        tags(addr, 10).await == (0, 10, 0)
    })
    .await;
    drop(second);
}

/// The refusal of a TCP tunnel `adjust`ed so.
async fn refused_tcp(
    server: &TestServer,
    adjust: impl FnOnce(&mut ClientConfig),
) -> (ErrorCode, String) {
    refused(server, |c| {
        crate::tcp::tcp(c);
        adjust(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_pool_with_members_on_two_nodes_is_reached_at_a_third() {
    let redis = TestRedis::start();
    let port = crate::tcp::free_port();
    let nodes = crate::cluster_raw::tcp_nodes(&redis, &["a", "b", "c"], &[port]).await;
    let (one, two) = (tagged(b"A").await, tagged(b"B").await);
    let _first = tcp_member(&nodes[0], one, "db", port).await.unwrap();
    let _second = tcp_member(&nodes[1], two, "db", port).await.unwrap();
    let (a, b, cut) = tags(crate::cluster_raw::at(&nodes[2], port), 100).await;
    assert!(a >= 20 && b >= 20 && cut == 0, "{a} / {b} / {cut}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_pool_passes_each_connection_to_one_member() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let files = cryptun_testkit::tls::TlsFiles::generate("secure.localhost");
    let local = crate::tls_passthrough::local_tls;
    let (one, two) = (
        local(&files, Some(b"A")).await,
        local(&files, Some(b"B")).await,
    );
    let mut members = Vec::new();
    for target in [one, two] {
        let target = target.to_string();
        let joined = TestClient::start_with(&server, &target, |c| {
            c.tunnel.protocol = cryptun_client::TunnelProtocol::Tls;
            member("secure", SECRET)(c);
        });
        members.push(joined.await.unwrap());
    }
    let visitor = cryptun_testkit::tls::HttpsVisitor::new(https.addr, &files.ca);
    let (mut a, mut b) = (0, 0);
    for _ in 0..60 {
        let mut stream = visitor.connect(Some("secure.localhost")).await.unwrap();
        let mut tag = Vec::new();
        let _ = within("a tag", stream.read_to_end(&mut tag)).await;
        match tag.as_slice() {
            b"A" => a += 1,
            b"B" => b += 1,
            other => panic!("answered {other:?}"),
        }
    }
    assert!(a >= 10 && b >= 10, "{a} / {b}");
}
