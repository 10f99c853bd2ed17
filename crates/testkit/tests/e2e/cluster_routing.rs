//! Reaching tunnels on other nodes, attacked and failing: a flood of
//! distinct random names (which no cache absorbs) costs Redis the node's
//! lookup budget and no more, while a tunnel it knew keeps serving, even
//! past its route's expiry; visitors arriving together for an uncached
//! name share one lookup; and a tunnel's failures (its local service down,
//! no answer in time, the app's own status, an unknown name, a held one)
//! read the same, status and error code, through any node. Against a real
//! `redis-server`, two nodes in one process.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use cryptun_testkit::{Origin, TestClient, TestRedis, TestServer, Visitor};

/// The flood's lookup budget, per second, on the attacked node.
const RATE: u32 = 40;

/// A counter of `node`'s `/metrics`.
async fn counter(node: &TestServer, name: &str) -> u64 {
    let text = Visitor::new(node.addr).admin_get("/metrics").await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// Redis's count of script calls (lookups, claims and renewals all run as
/// scripts).
fn script_calls(redis: &TestRedis) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_random_names_costs_redis_a_fixed_rate() {
    let redis = TestRedis::start();
    let mut config = TestServer::cluster_config(&redis.url(), "a");
    let cluster = config.cluster.as_mut().unwrap();
    cluster.lookup_rate = RATE;
    // Short, so that the known tunnel's route expires during the flood.
    cluster.route_ttl = Duration::from_millis(300);
    let a = TestServer::start_with(config).await;
    let b = TestServer::start_with(TestServer::cluster_config(&redis.url(), "b")).await;
    let origin = Origin::start().await;
    let known = TestClient::start(&b, &origin.target()).await;
    let known_host = b.host_of(&known.tunnel.subdomain);
    let visitor = Visitor::new(a.addr);
    assert_eq!(visitor.get(&known_host, "/echo").await.status, 200);
    // Let the budget refill from that.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let lookups_before = counter(&a, "cryptun_cluster_store_lookups_total").await;
    let scripts_before = script_calls(&redis);
    let started = Instant::now();
    let (mut not_found, mut busy) = (0, 0);
    for round in 0..25 {
        let names: Vec<String> = (0..40)
            .map(|i| format!("random-{round}-{i}-{}", cryptun_proto::random_id(6)))
            .collect();
        let replies = join_all(names.iter().map(|name| {
            let host = b.host_of(name);
            let visitor = visitor.clone();
            async move { visitor.get(&host, "/").await }
        }))
        .await;
        for reply in replies {
            let code = reply.headers.get("x-cryptun-error").cloned();
            match (reply.status.as_u16(), code) {
                (404, _) => not_found += 1,
                (503, Some(code)) if code == "cluster_busy" => {
                    assert_eq!(reply.headers["retry-after"], "1");
                    busy += 1;
                }
                (status, _) => panic!("a random name answered {status}: {}", reply.text()),
            }
        }
        // The tunnel A knew is served all along, its route expired or not.
        let reply = visitor.get(&known_host, "/echo").await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lookups = counter(&a, "cryptun_cluster_store_lookups_total").await - lookups_before;
    let scripts = script_calls(&redis) - scripts_before;
    let refused = counter(&a, "cryptun_cluster_lookups_refused_total").await;
    eprintln!(
        "1,000 random names in {elapsed:.2} s: {not_found} 404, {busy} 503; {lookups} lookups, {refused} refused, {scripts} scripts in Redis"
    );
    // The budget: a burst of RATE, then RATE a second.
    let allowed = f64::from(RATE) * (1.0 + elapsed) + 2.0;
    assert!(
        (lookups as f64) <= allowed,
        "{lookups} lookups in {elapsed:.2} s, budget {allowed:.0}"
    );
    assert!(
        busy > 0 && refused > 0,
        "the flood never reached the budget"
    );
    // Redis saw no more: the lookups, and the two nodes' renewals of one
    // name and of themselves (a third of the 2 s lease).
    let renewals = (elapsed / 0.66 + 2.0) * 3.0;
    assert!(
        (scripts as f64) <= lookups as f64 + renewals,
        "{scripts} script calls in Redis for {lookups} lookups"
    );

    // Once the flood stops, the budget refills: a tunnel A never saw is
    // found.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = TestClient::start(&b, &origin.target()).await;
    let reply = visitor
        .get(&b.host_of(&fresh.tunnel.subdomain), "/echo")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visitors_arriving_together_share_one_lookup() {
    let redis = TestRedis::start();
    let a = TestServer::start_with(TestServer::cluster_config(&redis.url(), "a")).await;
    let b = TestServer::start_with(TestServer::cluster_config(&redis.url(), "b")).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&b, &origin.target()).await;
    let host = b.host_of(&client.tunnel.subdomain);
    let visitor = Visitor::new(a.addr);
    let before = counter(&a, "cryptun_cluster_store_lookups_total").await;

    // Redis held still, so that all fifty arrive while the first lookup
    // waits for its answer.
    redis.pause();
    let all = tokio::spawn({
        let (visitor, host) = (visitor.clone(), host.clone());
        async move {
            join_all((0..50).map(|_| {
                let (visitor, host) = (visitor.clone(), host.clone());
                async move { visitor.get(&host, "/echo").await }
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    for reply in all.await.unwrap() {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let lookups = counter(&a, "cryptun_cluster_store_lookups_total").await - before;
    assert_eq!(lookups, 1, "fifty visitors at once, {lookups} lookups");
}

/// What a visitor gets through node `via` for `host`'s `path`: status and
/// `x-cryptun-error`.
async fn answer(via: &TestServer, host: &str, path: &str) -> (u16, String) {
    let reply = Visitor::new(via.addr).get(host, path).await;
    let code = reply
        .headers
        .get("x-cryptun-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (reply.status.as_u16(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_read_the_same_through_any_node() {
    let redis = TestRedis::start();
    let node = |name: &str| {
        let mut config = TestServer::cluster_config(&redis.url(), name);
        config.request_timeout = Duration::from_millis(500);
        config
    };
    let a = TestServer::start_with(node("a")).await;
    let b = TestServer::start_with(node("b")).await;
    let origin = Origin::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = TestClient::start(&b, &format!("127.0.0.1:{closed}")).await;
    let slow = TestClient::start(&b, &origin.target()).await;
    let cases = [
        (b.host_of(&down.tunnel.subdomain), "/", 502),
        (b.host_of(&slow.tunnel.subdomain), "/hang", 504),
        (b.host_of(&slow.tunnel.subdomain), "/status?code=418", 418),
        (b.host_of("nobody-anywhere"), "/", 404),
    ];
    for (host, path, status) in &cases {
        let here = answer(&b, host, path).await;
        let there = answer(&a, host, path).await;
        assert_eq!(here.0, *status, "{host}{path} on its node: {here:?}");
        assert_eq!(there, here, "{host}{path} through the other node");
    }
    // A tunnel whose client is gone, its name held: 503 on both.
    let held = slow.tunnel.subdomain.clone();
    slow.kill().await;
    let host = b.host_of(&held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Until the node has written the hold (milliseconds), the other
        // node may find the name's member gone there: 503 node_unreachable.
        let (here, there) = (answer(&b, &host, "/").await, answer(&a, &host, "/").await);
        let held = (503, "tunnel_reconnecting".to_owned());
        if here == held && there == held {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not held: {here:?} {there:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that takes the hop's connection and never answers is the node's
/// failure, not the local service's: 503 `node_unreachable` once the hop's
/// head timeout (the longest request timeout + 5 s) has passed, and the
/// route is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_never_answers_the_hop_is_unreachable() {
    let redis = TestRedis::start();
    let mut config = TestServer::cluster_config(&redis.url(), "a");
    config.request_timeout = Duration::from_millis(500);
    config.max_request_timeout = Duration::from_millis(500);
    let a = TestServer::start_with(config).await;
    // A node "silent" serving "ghost", whose hop takes connections and
    // says nothing; its route written as nodes write theirs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        loop {
            let (conn, _) = silent.accept().await.unwrap();
            kept.push(conn);
        }
    });
    let time = redis.command(&["TIME"]);
    let secs: u64 = time
        .lines()
        .find_map(|l| l.trim().trim_start_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("TIME answered {time}"));
    let member = format!("{} silent {hop} t1", secs * 1000 + 60_000);
    let key = "cryptun:1:{ghost}:route";
    redis.command(&[
        "HSET", key, "owner", "k:nobody", "epoch", "1", "m:tok", &member,
    ]);
    redis.command(&["PEXPIRE", key, "120000"]);

    let asked = Instant::now();
    let (status, code) = answer(&a, &a.host_of("ghost"), "/").await;
    let took = asked.elapsed();
    assert_eq!((status, code.as_str()), (503, "node_unreachable"));
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(9),
        "answered after {took:?}"
    );
    held.abort();
}
