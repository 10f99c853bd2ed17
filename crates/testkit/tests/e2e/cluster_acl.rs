//! The Redis ACL that docs/CLUSTER.md advises, tested: a Redis whose
//! `cryptun` user is exactly that line, two nodes on it as that user doing
//! what nodes do (keys and reservations, claims, visits through the other
//! node, listings, the dashboard, releases and holds, renewals), and Redis's
//! `ACL LOG` empty at the end: nothing the nodes asked for was refused.

use std::time::Duration;

use cryptun_server::cluster::keys::SharedKeys;
use cryptun_testkit::{Origin, TestClient, TestRedis, TestServer, Visitor};

/// The `ACL SETUSER` line of docs/CLUSTER.md, as words.
fn documented_acl() -> Vec<String> {
    let doc = include_str!("../../../../docs/CLUSTER.md");
    let line = doc
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("ACL SETUSER cryptun"))
        .expect("docs/CLUSTER.md has an ACL SETUSER line");
    line.split_whitespace()
        .skip(1)
        .map(|word| word.replace(">PASSWORD", ">acl-test-password"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_runs_as_the_documented_acl_user() {
    let redis = TestRedis::start();
    let mut acl = vec!["ACL".to_owned()];
    acl.extend(documented_acl());
    let words: Vec<&str> = acl.iter().map(String::as_str).collect();
    let set = redis.command(&words);
    assert!(set.starts_with("+OK"), "{set}");
    let url = redis
        .url()
        .replacen("redis://", "redis://cryptun:acl-test-password@", 1);

    let keyed = |name: &str| cryptun_server::Config {
        auth: cryptun_server::AuthMode::Required,
        revocation_poll: Duration::from_millis(200),
        ..TestServer::cluster_config(&url, name)
    };
    let a = TestServer::start_with(keyed("a")).await;
    let b = TestServer::start_with(keyed("b")).await;
    let keys = SharedKeys::connect(&url).await.unwrap();
    let key = keys.create_key("acl").await.unwrap();
    keys.reserve(&key.info.id, "acl-mine").await.unwrap();
    assert_eq!(keys.list_keys().await.unwrap().len(), 1);

    let origin = Origin::start().await;
    let client = TestClient::start_reconnecting(&b, &origin.target(), |c| {
        c.token = Some(key.token.clone());
        c.tunnel.subdomain = Some("acl-mine".into());
    })
    .await
    .unwrap();
    let host = b.host_of("acl-mine");
    let visitor = Visitor::new(a.addr);
    assert_eq!(visitor.get(&host, "/echo").await.status, 200);
    assert_eq!(visitor.get(&b.host_of("nobody"), "/").await.status, 404);
    assert_eq!(visitor.admin_get("/api/tunnels").await.status, 200);
    assert_eq!(visitor.admin_get("/api/dashboard").await.status, 200);
    assert_eq!(visitor.admin_get("/metrics").await.status, 200);
    // Renewals, then a client gone without a goodbye: its name is held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.kill().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while visitor.get(&host, "/").await.status != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "the name was not held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keys.revoke_key(&key.info.id).await.unwrap();

    let log = redis.command(&["ACL", "LOG"]);
    assert!(
        log.starts_with("*0"),
        "Redis refused the cryptun user: {log}"
    );
}
