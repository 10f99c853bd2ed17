//! Request rates: per visitor address across the server, per tunnel across
//! its visitors; 429 with `Retry-After` beyond them; and the per-address
//! table stays within its cap under a flood from many addresses, then
//! empties once they stop.

use std::net::IpAddr;
use std::time::Duration;

use cryptun_server::policy::Rate;
use cryptun_testkit::raw::eventually;
use cryptun_testkit::visitor::{raw_exchange_from, status_of};
use cryptun_testkit::{LIMIT, Origin, TestClient, TestServer, Visitor, within};

/// `GET /token?t=ok` on `host` from `source`; the raw response.
async fn get_from(server: &TestServer, source: IpAddr, host: &str) -> String {
    let request = format!("GET /token?t=ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange_from(source, server.addr, request.as_bytes(), LIMIT).await
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

#[tokio::test]
async fn each_address_has_its_own_rate_across_the_server() {
    let mut config = TestServer::test_config();
    // Per minute, so that the test's own pace cannot refill a bucket.
    config.rate_limits.per_ip = Some(rate("2/m"));
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let a = TestClient::start(&server, &origin.target()).await;
    let b = TestClient::start(&server, &origin.target()).await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();

    // The limit spans tunnels: two of them share the address's budget.
    assert_eq!(status_of(&get_from(&server, one, &a.host).await), 200);
    assert_eq!(status_of(&get_from(&server, one, &b.host).await), 200);
    let over = get_from(&server, one, &a.host).await;
    assert_eq!(status_of(&over), 429, "{over}");
    assert_eq!(header(&over, "x-cryptun-error"), Some("rate_limited"));
    let retry: u64 = header(&over, "retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(origin.requests(), 2, "a limited request reached the app");
    // Another address is not held back.
    assert_eq!(status_of(&get_from(&server, two, &a.host).await), 200);
    assert_eq!(origin.requests(), 3);
}

#[tokio::test]
async fn each_tunnel_has_its_own_rate_across_its_visitors() {
    let mut config = TestServer::test_config();
    config.rate_limits.per_tunnel = Some(rate("3/m"));
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let busy = within(
        "busy",
        TestClient::start_with(&server, &origin.target(), |c| {
            c.tunnel.allow_ips = vec!["127.0.0.0/24".into()];
        }),
    )
    .await
    .unwrap();
    let quiet = TestClient::start(&server, &origin.target()).await;
    // Visitors the tunnel refuses do not use up its rate.
    for _ in 0..5 {
        let refused = get_from(&server, "127.0.1.1".parse().unwrap(), &busy.host).await;
        assert_eq!(status_of(&refused), 403, "{refused}");
    }
    for i in 1..=3u8 {
        let source = IpAddr::from([127, 0, 0, i]);
        assert_eq!(status_of(&get_from(&server, source, &busy.host).await), 200);
    }
    let over = get_from(&server, "127.0.0.9".parse().unwrap(), &busy.host).await;
    assert_eq!(status_of(&over), 429, "{over}");
    assert!(over.contains("to this tunnel"), "{over}");
    assert!(header(&over, "retry-after").is_some(), "{over}");
    let other = get_from(&server, "127.0.0.9".parse().unwrap(), &quiet.host).await;
    assert_eq!(status_of(&other), 200, "{other}");
}

/// How many addresses the per-address limiter tracks, from `/api/limits`
/// (the server's own routes are not rate limited).
async fn tracked(visitor: &Visitor) -> u64 {
    let reply = within("limits", visitor.admin_get("/api/limits")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["tracked_addresses"].as_u64().unwrap()
}

/// One request for an unknown tunnel from each of `count` addresses
/// 127.1.x.y, `batch` at a time; their statuses.
async fn flood(server: &TestServer, count: u16) -> Vec<u16> {
    let host = server.host_of("nosuch");
    let mut statuses = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        let sends = chunk.iter().map(|&n| {
            let source = IpAddr::from([127, 1, (n >> 8) as u8, n as u8]);
            get_from(server, source, &host)
        });
        let replies = within("flood", futures_util::future::join_all(sends)).await;
        statuses.extend(replies.iter().map(|r| status_of(r)));
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_stays_within_the_table_cap() {
    const CAP: usize = 50;
    let mut config = TestServer::test_config();
    // Slow enough that no entry expires during the test: only the cap can
    // keep the table small.
    config.rate_limits.per_ip = Some(rate("1/h:1"));
    config.rate_limits.max_tracked_ips = CAP;
    let server = TestServer::start_with(config).await;
    let statuses = flood(&server, 300).await;
    // The first CAP addresses get a bucket each; the rest are counted by
    // their /24 (two here: 127.1.0 and 127.1.1), a bucket each, which lets
    // one request through apiece.
    let served = statuses.iter().filter(|s| **s == 404).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((served, limited), (CAP + 2, 300 - CAP - 2), "{statuses:?}");
    let visitor = Visitor::new(server.addr);
    assert_eq!(tracked(&visitor).await, CAP as u64);
}

#[tokio::test]
async fn addresses_are_forgotten_once_their_bucket_refills() {
    let mut config = TestServer::test_config();
    // A bucket refills within 100 ms; the sweep runs every 200 ms.
    config.rate_limits.per_ip = Some(rate("10/s:1"));
    config.rate_limits.sweep_interval = Duration::from_millis(200);
    let server = TestServer::start_with(config).await;
    let statuses = flood(&server, 100).await;
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    let visitor = Visitor::new(server.addr);
    assert!(tracked(&visitor).await > 0);
    // Sweeps happen as requests come; any request for a tunnel host will do.
    eventually(LIMIT, "the flood's addresses are forgotten", || async {
        let probe = IpAddr::from([127, 2, 0, 1]);
        get_from(&server, probe, &server.host_of("nosuch")).await;
        tracked(&visitor).await <= 1
    })
    .await;
}
