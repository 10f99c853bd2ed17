//! A cluster of three servers on a real Redis, in one process: any node
//! serves any tunnel (bodies both ways, WebSocket, event streams, the
//! visitor's address), one owner per name under racing claims, fencing of
//! a node whose claim was taken over, strangers refused on the internal
//! hop, and Redis trouble survived.
//!
//! Each test starts its own `redis-server` (`TestRedis`); it fails, not
//! skips, when Redis is not installed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use cryptun_server::cluster::keys::SharedKeys;
use cryptun_testkit::visitor::{raw_exchange, raw_exchange_from, status_of};
use cryptun_testkit::wsecho::{self, WsEcho};
use cryptun_testkit::{
    Origin, RawWs, TestClient, TestRedis, TestServer, Visitor, pattern, redis::TestRedisCluster,
    sha256_hex, within,
};

/// Three nodes of one cluster on `redis`.
async fn nodes(redis: &TestRedis) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(TestServer::start_with(TestServer::cluster_config(&redis.url(), name)).await);
    }
    nodes
}

/// Where node `name` serves the hop, as it told Redis.
pub(crate) fn hop_of(redis: &TestRedis, name: &str) -> SocketAddr {
    let reply = redis.command(&["GET", &format!("cryptun:1:node:{{{name}}}")]);
    let value = reply.lines().nth(1).expect("the node is registered");
    value
        .split_whitespace()
        .nth(1)
        .expect("token and address")
        .parse()
        .unwrap()
}

/// GETs `path` of `host` through `node` until it answers `status`, within
/// `limit`; returns how long that took.
async fn until_status(
    node: &TestServer,
    host: &str,
    path: &str,
    status: u16,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let visitor = Visitor::new(node.addr);
    loop {
        let reply = visitor.get(host, path).await;
        if reply.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{host}{path} via {} still {} ({}) after {limit:?}",
            node.addr,
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` of `node`.
async fn readyz(node: &TestServer) -> u16 {
    Visitor::new(node.addr)
        .get(&node.own_host(), "/readyz")
        .await
        .status
        .as_u16()
}

/// Waits, within ten seconds, for `node` to be ready.
async fn ready(node: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(node).await != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz of {} not 200",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_on_one_node_is_served_through_every_node() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let origin = Origin::start().await;
    let client = TestClient::start(b, &origin.target()).await;
    let host = b.host_of(&client.tunnel.subdomain);

    for node in [a, b, c] {
        let reply = Visitor::new(node.addr).get(&host, "/echo/hello").await;
        assert_eq!(reply.status, 200, "via {}: {}", node.addr, reply.text());
        assert_eq!(reply.json()["path"], "/echo/hello");
        // A small answer keeps its length through the hop (not chunked).
        let length = reply.headers.get("content-length");
        assert_eq!(
            length.map(|v| v.to_str().unwrap().parse::<usize>().unwrap()),
            Some(reply.body.len()),
            "via {}: {:?}",
            node.addr,
            reply.headers
        );
    }

    // The visitor's address and scheme are what the first node saw.
    let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let source: IpAddr = "127.0.0.9".parse().unwrap();
    let raw = raw_exchange_from(source, a.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let lower = raw.to_ascii_lowercase();
    assert!(
        lower.contains("127.0.0.9"),
        "X-Forwarded-For names the visitor: {raw}"
    );
    assert!(
        !lower.contains("x-cryptun-hop"),
        "the hop's headers stay between nodes: {raw}"
    );

    // 8 MiB up through A, 8 MiB down through C, hashes checked.
    let body = pattern(8 << 20);
    let visitor = Visitor::new(a.addr);
    let req = visitor
        .builder("POST", &host, "/sha256")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = within("8 MiB up", visitor.fetch(req)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["sha256"], sha256_hex(&body));
    let reply = within(
        "8 MiB down",
        Visitor::new(c.addr).get(&host, &format!("/bytes?n={}", 8 << 20)),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&body));

    // An event stream arrives event by event through C.
    let visitor = Visitor::new(c.addr);
    let req = visitor
        .builder("GET", &host, "/stream?chunks=3&interval_ms=400")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = visitor.send(req).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let first = within("the first event", resp.body_mut().frame()).await;
    assert!(first.is_some());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the first event came when the stream was produced, not at its end"
    );
    while within("the rest", resp.body_mut().frame()).await.is_some() {}
    assert!(started.elapsed() >= Duration::from_millis(700));

    // A WebSocket through A to a tunnel on B.
    let echo = WsEcho::start().await;
    let ws_client = TestClient::start(b, &echo.target()).await;
    let ws_host = b.host_of(&ws_client.tunnel.subdomain);
    let mut ws = within("ws through a", wsecho::connect(a.addr, &ws_host, "/"))
        .await
        .expect("the upgrade goes through the hop");
    ws.send(Message::text("over the hop")).await.unwrap();
    let back = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "over the hop");

    // Unknown names are unknown everywhere.
    let reply = Visitor::new(a.addr)
        .get(&b.host_of("nobody-here"), "/")
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn strangers_are_refused_on_the_internal_hop() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&nodes[1], &origin.target()).await;
    let host = nodes[1].host_of(&client.tunnel.subdomain);
    let hop = hop_of(&redis, "b");
    for proof in [
        "",
        "x-cryptun-hop-proof: guess\r\n",
        "x-cryptun-hop-proof: test-cluster-secret-0123456789\r\n",
    ] {
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: {host}\r\n{proof}x-cryptun-hop-visitor: 10.0.0.1:1\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(hop, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), 403, "{raw}");
        assert!(raw.contains("hop_forbidden"), "{raw}");
    }
    assert_eq!(origin.requests(), 0, "nothing reached the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_racing_for_one_name_on_two_nodes_one_wins() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    for round in 0..50 {
        let name = format!("race-{round}");
        let ((_wa, on_a), (_wc, on_c)) = tokio::join!(
            RawWs::create(&nodes[0], json!({ "subdomain": name })),
            RawWs::create(&nodes[2], json!({ "subdomain": name })),
        );
        let won = [&on_a, &on_c]
            .iter()
            .filter(|r| r["type"] == "tunnel_created")
            .count();
        assert_eq!(won, 1, "round {round}: {on_a} / {on_c}");
        let lost = if on_a["type"] == "error" {
            &on_a
        } else {
            &on_c
        };
        assert_eq!(lost["code"], "subdomain_taken", "round {round}: {lost}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_name_moved_never_answers_for_it_again() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let first = Origin::start().await;
    let second = Origin::start().await;
    let old = TestClient::start(b, &first.target()).await;
    let name = old.tunnel.subdomain.clone();
    let secret = old.tunnel.reconnect_secret.clone().unwrap();
    let host = b.host_of(&name);
    for node in [a, b, c] {
        assert_eq!(
            Visitor::new(node.addr).get(&host, "/echo").await.status,
            200
        );
    }
    assert_eq!(first.requests(), 3);

    // The same owner (its secret) claims the name on C while B's session
    // still lives: C's claim wins, and B drops its tunnel at its next
    // renewal; every node then sends visitors to C.
    let moved = TestClient::start_with(c, &second.target(), |config| {
        config.tunnel.subdomain = Some(name.clone());
        config.tunnel.reconnect_secret = Some(secret.clone());
    })
    .await
    .expect("the owner takes its name over on another node");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = first.requests();
    for round in 0..10 {
        for node in [a, b, c] {
            let reply = Visitor::new(node.addr).get(&host, "/echo").await;
            assert_eq!(
                reply.status,
                200,
                "round {round} via {}: {}",
                node.addr,
                reply.text()
            );
        }
    }
    assert_eq!(first.requests(), before, "the stale session answered");
    assert_eq!(second.requests(), 30);
    drop((old, moved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_then_killed_live_tunnels_keep_serving_and_all_comes_back() {
    let mut redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&nodes[1], &origin.target()).await;
    let host = nodes[1].host_of(&client.tunnel.subdomain);
    for node in &nodes {
        assert_eq!(
            Visitor::new(node.addr).get(&host, "/echo").await.status,
            200
        );
    }

    redis.pause();
    // Within a renewal and a timeout the nodes know; the live tunnel is
    // served through every node all along.
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&nodes[0]).await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 with Redis paused"
        );
        for node in &nodes {
            assert_eq!(
                Visitor::new(node.addr).get(&host, "/echo").await.status,
                200
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &nodes {
        let reply = Visitor::new(node.addr).get(&host, "/echo").await;
        assert_eq!(
            reply.status,
            200,
            "via {} with Redis paused: {}",
            node.addr,
            reply.text()
        );
    }
    // New clients are refused clearly: /ws answers 503 with Retry-After.
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        nodes[2].own_host()
    );
    let raw = raw_exchange(nodes[2].addr, upgrade.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), 503, "{raw}");
    assert!(
        raw.contains("cluster_unavailable") && raw.to_ascii_lowercase().contains("retry-after"),
        "{raw}"
    );

    // Killed and started again (empty: no persistence here): the nodes
    // write their live routes back, and all is as before, no restarts.
    redis.resume();
    redis.restart_empty();
    for node in &nodes {
        until_status(node, &host, "/echo", 200, Duration::from_secs(10)).await;
        ready(node).await;
    }
    let (_ws, created) = RawWs::create(&nodes[0], json!({})).await;
    assert_eq!(created["type"], "tunnel_created", "{created}");
    // The route was written back: a node that never saw it finds it.
    let route = redis.command(&[
        "EXISTS",
        &format!("cryptun:1:{{{}}}:route", client.tunnel.subdomain),
    ]);
    assert!(route.starts_with(":1"), "{route}");
    // And the loss is reported: /readyz says when and what, the metric
    // counts it, on every node once its keeper has looked (each looks at
    // its next renewal, within a third of the lease: a node may serve the
    // tunnel again before that).
    for node in &nodes {
        let visitor = Visitor::new(node.addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            let ready = visitor.get(&node.own_host(), "/readyz").await.json();
            if ready["cluster"]["store_emptied_at"].is_string() || Instant::now() > deadline {
                break ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cluster = &ready["cluster"];
        assert_eq!(cluster["store"], "up", "{ready}");
        assert!(cluster["store_emptied_at"].is_string(), "{ready}");
        assert!(
            cluster["detail"].as_str().unwrap().contains("API keys"),
            "{ready}"
        );
        let metrics = visitor.admin_get("/metrics").await.text();
        assert!(
            metrics.contains("cryptun_cluster_store_emptied_total 1"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_aof_a_redis_restart_keeps_held_names_for_their_owners() {
    let mut redis = TestRedis::start_aof();
    let nodes = nodes(&redis).await;
    let origin = Origin::start().await;
    let first = TestClient::start(&nodes[0], &origin.target()).await;
    let name = first.tunnel.subdomain.clone();
    let secret = first.tunnel.reconnect_secret.clone().unwrap();
    let host = nodes[0].host_of(&name);
    first.kill().await;
    // Held for its owner, cluster-wide: 503 through every node.
    for node in &nodes {
        until_status(node, &host, "/", 503, Duration::from_secs(10)).await;
    }

    redis.restart();
    // A stranger is still refused on another node (once that node is
    // ready again: until then /ws answers 503 and claims `unavailable`);
    // the owner, with its secret, gets it back there.
    ready(&nodes[2]).await;
    let (_ws, refused) = RawWs::create(&nodes[2], json!({ "subdomain": name })).await;
    assert_eq!(refused["code"], "subdomain_held", "{refused}");
    let back = TestClient::start_with(&nodes[2], &origin.target(), |config| {
        config.tunnel.subdomain = Some(name.clone());
        config.tunnel.reconnect_secret = Some(secret.clone());
    })
    .await
    .expect("the owner takes its held name back on another node");
    assert_eq!(back.tunnel.subdomain, name);
    for node in &nodes {
        until_status(node, &host, "/echo", 200, Duration::from_secs(10)).await;
    }
}

/// The core cases against a sharded Redis Cluster: each name's record
/// lives in one slot (its hash tag), wherever that slot is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn against_a_three_shard_redis_cluster() {
    let redis = TestRedisCluster::start();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(TestServer::start_with(TestServer::cluster_config(&redis.url(), name)).await);
    }
    let origin = Origin::start().await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let client = TestClient::start(node, &origin.target()).await;
        clients.push((i, client));
    }
    // Every tunnel through every node: names spread over the shards.
    for (_, client) in &clients {
        let host = nodes[0].host_of(&client.tunnel.subdomain);
        for node in &nodes {
            let reply = Visitor::new(node.addr).get(&host, "/echo").await;
            assert_eq!(reply.status, 200, "via {}: {}", node.addr, reply.text());
        }
    }
    for round in 0..10 {
        let name = format!("shard-race-{round}");
        let ((_wa, on_a), (_wc, on_c)) = tokio::join!(
            RawWs::create(&nodes[0], json!({ "subdomain": name })),
            RawWs::create(&nodes[2], json!({ "subdomain": name })),
        );
        let won = [&on_a, &on_c]
            .iter()
            .filter(|r| r["type"] == "tunnel_created")
            .count();
        assert_eq!(won, 1, "round {round}: {on_a} / {on_c}");
    }
    // A client gone: held for it on every node, whichever shard has it.
    let (_, gone) = clients.remove(0);
    let host = nodes[0].host_of(&gone.tunnel.subdomain);
    gone.kill().await;
    for node in &nodes {
        until_status(node, &host, "/", 503, Duration::from_secs(10)).await;
    }
}

/// Nodes that check API keys, kept in the cluster's Redis, polling for
/// revocations every 200 ms.
async fn keyed_nodes(redis: &TestRedis) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let config = cryptun_server::Config {
            auth: cryptun_server::AuthMode::Required,
            revocation_poll: Duration::from_millis(200),
            ..TestServer::cluster_config(&redis.url(), name)
        };
        nodes.push(TestServer::start_with(config).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_reservations_hold_on_every_node() {
    let redis = TestRedis::start();
    let nodes = keyed_nodes(&redis).await;
    let keys = SharedKeys::connect(&redis.url()).await.unwrap();
    let owner = keys.create_key("owner").await.unwrap();
    let other = keys.create_key("other").await.unwrap();
    keys.reserve(&owner.info.id, "mine").await.unwrap();
    assert_eq!(keys.list_keys().await.unwrap()[0].reserved, ["mine"]);
    let origin = Origin::start().await;

    // Reserved through the cluster's store: refused to another key on C,
    // given to its own there.
    let refused = TestClient::start_with(&nodes[2], &origin.target(), |c| {
        c.token = Some(other.token.clone());
        c.tunnel.subdomain = Some("mine".into());
    })
    .await;
    assert!(refused.is_err(), "a reserved name went to another key");
    let (_ws, unknown) = RawWs::create(&nodes[2], json!({ "token": "ck_aaaaaaaa_nope" })).await;
    assert_eq!(unknown["code"], "unauthorized", "{unknown}");
    let mine = TestClient::start_reconnecting(&nodes[2], &origin.target(), |c| {
        c.token = Some(owner.token.clone());
        c.tunnel.subdomain = Some("mine".into());
    })
    .await
    .unwrap();
    let host = nodes[2].host_of("mine");
    assert_eq!(
        Visitor::new(nodes[0].addr).get(&host, "/echo").await.status,
        200
    );

    // Revoked from anywhere (here, as `cryptun keys revoke --cluster`
    // does): the session on C is cut within the poll, and the key is
    // refused on every node.
    keys.revoke_key(&owner.info.id).await.unwrap();
    let finished = within("the revoked key's session ends", mine.finished()).await;
    assert!(finished.is_err(), "the client was told its key is revoked");
    for node in &nodes {
        until_status(node, &host, "/", 404, Duration::from_secs(10)).await;
        let (_ws, reply) = RawWs::create(node, json!({ "token": owner.token.expose() })).await;
        assert_eq!(reply["code"], "unauthorized", "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_nodes_tunnels_are_listed_a_page_at_a_time() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let origin = Origin::start().await;
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            clients.push(TestClient::start(node, &origin.target()).await);
        }
    }
    let visitor = Visitor::new(nodes[1].addr);
    let mut path = "/api/tunnels?limit=4".to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let reply = visitor.admin_get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        assert!(page.as_array().unwrap().len() <= 4, "{page}");
        for tunnel in page.as_array().unwrap() {
            seen.push((
                tunnel["node"].as_str().unwrap().to_owned(),
                tunnel["subdomain"].as_str().unwrap().to_owned(),
            ));
        }
        let Some(link) = reply.headers.get("link") else {
            break;
        };
        let link = link.to_str().unwrap();
        path = link
            .trim_start_matches('<')
            .split_once('>')
            .unwrap()
            .0
            .to_owned();
    }
    seen.sort();
    let mut expected: Vec<(String, String)> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                ["a", "b", "c"][i / 2].to_owned(),
                c.tunnel.subdomain.clone(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "every tunnel once, with its node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_and_metrics_show_the_cluster() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis).await;
    let origin = Origin::start().await;
    let on_b = TestClient::start(&nodes[1], &origin.target()).await;
    let on_c = TestClient::start(&nodes[2], &origin.target()).await;
    // A request through A for B's tunnel: one answered hop request, which
    // B's own counters see.
    let host = nodes[1].host_of(&on_b.tunnel.subdomain);
    let a = Visitor::new(nodes[0].addr);
    assert_eq!(a.get(&host, "/echo").await.status, 200);

    let snapshot = a.admin_get("/api/dashboard").await.json();
    assert_eq!(snapshot["server"]["node"], "a", "{snapshot}");
    let names: Vec<&str> = snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["reachable"], true, "{n}");
            n["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{snapshot}");
    assert_eq!(snapshot["totals"]["tunnels"], 2, "{snapshot}");
    assert_eq!(snapshot["totals"]["clients"], 2, "{snapshot}");
    let mut listed: Vec<(String, String)> = snapshot["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["node"].as_str().unwrap().to_owned(),
                t["subdomain"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("b".to_owned(), on_b.tunnel.subdomain.clone()),
            ("c".to_owned(), on_c.tunnel.subdomain.clone()),
        ],
        "{snapshot}"
    );
    let b_tunnel = snapshot["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["node"] == "b")
        .unwrap();
    assert_eq!(b_tunnel["stats"]["requests"], 1, "{snapshot}");
    for client in snapshot["clients"].as_array().unwrap() {
        assert!(client["node"].is_string(), "{snapshot}");
    }

    // /metrics stays the node's own, with what it sees of the cluster.
    let metrics = a.admin_get("/metrics").await.text();
    for line in [
        "cryptun_cluster_store_up 1",
        "cryptun_cluster_nodes 3",
        "cryptun_cluster_names_owned 0",
        "cryptun_cluster_routes_cached 1",
        "cryptun_cluster_hop_requests_total{outcome=\"answered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    let b_metrics = Visitor::new(nodes[1].addr)
        .admin_get("/metrics")
        .await
        .text();
    assert!(
        b_metrics.contains("cryptun_cluster_names_owned 1"),
        "{b_metrics}"
    );

    // A node gone (its lease left to run) is shown unreachable, not
    // holding the page up.
    let mut nodes = nodes;
    let c = nodes.pop().unwrap();
    c.stop().await;
    let snapshot = a.admin_get("/api/dashboard").await.json();
    let c_info = snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "c")
        .cloned();
    if let Some(c_info) = c_info {
        assert_eq!(c_info["reachable"], false, "{snapshot}");
    }
    assert_eq!(snapshot["totals"]["tunnels"], 1, "{snapshot}");

    // A node slow to answer its head (2 s) and then never sending its body
    // holds the page up for the peer timeout (3 s, head and body together:
    // it was 3 s each, 5 s here), no longer, and is shown unreachable.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let stalling = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut conn, _) = silent.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut head).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let stall = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, stall).await;
            held.push(conn);
        }
    });
    let value = format!("token {silent_addr}");
    redis.command(&["SET", "cryptun:1:node:{silent}", &value, "PX", "60000"]);
    redis.command(&["SADD", "cryptun:1:nodes", "silent"]);
    let asked = Instant::now();
    let snapshot = a.admin_get("/api/dashboard").await.json();
    let took = asked.elapsed();
    let silent_info = snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "silent")
        .cloned()
        .expect("the silent node listed");
    assert_eq!(silent_info["reachable"], false, "{snapshot}");
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(4_500),
        "the page took {took:?}"
    );
    stalling.abort();
}
