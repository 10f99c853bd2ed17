//! Names that persist, end to end: a reserved name goes only to its key,
//! also after a server restart on the same data directory; a name is held
//! for its client after a disconnect (visitors get 503 with Retry-After)
//! and goes back only to the same identity, its key or the reconnect
//! secret of an anonymous tunnel, also across a restart of a server with
//! a database; after the grace it is free again; a second live client
//! never takes a name from a live one.

use std::time::Duration;

use cryptun_client::{ClientError, Secret};
use cryptun_proto::ErrorCode;
use cryptun_server::policy::BackoffConfig;
use cryptun_server::{AuthMode, Config, Store};
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, RawWs, TempDir, TestClient, TestServer, Visitor};
use http::StatusCode;
use serde_json::{Value, json};

async fn code_for(server: &TestServer, create: Value) -> String {
    let (_ws, reply) = RawWs::create(server, create).await;
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap().to_owned()
}

async fn client(
    server: &TestServer,
    origin: &Origin,
    name: &str,
    token: Option<&Secret>,
    secret: Option<&Secret>,
) -> Result<TestClient, ClientError> {
    TestClient::start_with(server, &origin.target(), |c| {
        c.tunnel.subdomain = Some(name.to_owned());
        c.token = token.cloned();
        c.tunnel.reconnect_secret = secret.cloned();
    })
    .await
}

/// Waits until visitors of `name` get the reconnecting 503; checks it.
async fn wait_held(server: &TestServer, name: &str) {
    let visitor = Visitor::new(server.addr);
    let host = server.host_of(name);
    eventually(WAIT, "the name is held for reconnection", || async {
        visitor.get(&host, "/").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let reply = visitor.get(&host, "/").await;
    assert_eq!(reply.headers["x-cryptun-error"], "tunnel_reconnecting");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
}

async fn serves(server: &TestServer, name: &str, text: &str) {
    let reply = Visitor::new(server.addr)
        .get(&server.host_of(name), &format!("/token?t={text}"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), text);
}

#[tokio::test]
async fn a_reserved_name_goes_only_to_its_key_also_after_a_restart() {
    let dir = TempDir::new();
    let config = TestServer::auth_config(&dir.path, AuthMode::Optional);
    let store = Store::open(&dir.path).unwrap();
    let owner = store.create_key("owner").unwrap();
    let other = store.create_key("other").unwrap();
    store.reserve(&owner.info.id, "myapp").unwrap();
    drop(store);
    let origin = Origin::start().await;

    for (i, round) in ["first start", "after a restart"].into_iter().enumerate() {
        let server = TestServer::start_with(config.clone()).await;
        let other_token = json!({ "subdomain": "MyApp", "token": other.token.expose() });
        assert_eq!(
            code_for(&server, other_token).await,
            "subdomain_reserved",
            "{round}"
        );
        let anonymous = json!({ "subdomain": "myapp" });
        assert_eq!(
            code_for(&server, anonymous).await,
            "subdomain_reserved",
            "{round}"
        );
        let refused = client(&server, &origin, "myapp", None, None).await;
        assert!(
            matches!(
                refused,
                Err(ClientError::Refused {
                    code: ErrorCode::SubdomainReserved,
                    ..
                })
            ),
            "{round}"
        );
        let mine = client(&server, &origin, "myapp", Some(&owner.token), None)
            .await
            .unwrap();
        assert_eq!(mine.tunnel.subdomain, "myapp");
        serves(&server, "myapp", "reserved").await;
        // Other names stay first come, first served (a new one each round:
        // the last round's is held for its client across the restart).
        let free = format!("free-{i}");
        let (_ws, created) = RawWs::create(&server, json!({ "subdomain": free })).await;
        assert_eq!(created["type"], "tunnel_created", "{round}: {created}");
        drop(mine);
        server.stop().await;
    }
}

#[tokio::test]
async fn an_anonymous_tunnel_gets_its_name_back_with_its_secret() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let first = TestClient::start(&server, &origin.target()).await;
    let name = first.tunnel.subdomain.clone();
    let secret = first.tunnel.reconnect_secret.clone().unwrap();
    let url = first.tunnel.public_url.clone();
    serves(&server, &name, "before").await;
    first.kill().await;
    wait_held(&server, &name).await;

    // Nobody else takes it: not without the secret, not with a wrong one.
    assert_eq!(
        code_for(&server, json!({ "subdomain": name })).await,
        "subdomain_held"
    );
    let guess = json!({ "subdomain": name, "reconnect_secret": "a".repeat(32) });
    assert_eq!(code_for(&server, guess).await, "unauthorized");

    let back = client(&server, &origin, &name, None, Some(&secret))
        .await
        .unwrap();
    assert_eq!(back.tunnel.public_url, url);
    let renewed = back.tunnel.reconnect_secret.clone().unwrap();
    assert_eq!(
        renewed, secret,
        "the secret that took the name back is kept"
    );
    serves(&server, &name, "after").await;

    // The client API hands out the settings for that reconnection.
    back.kill().await;
    wait_held(&server, &name).await;
    let again = client(&server, &origin, &name, None, Some(&renewed)).await;
    assert!(again.is_ok(), "the kept secret takes the name back again");
    // While the name is live again, even its own secret cannot take it.
    let while_live = json!({ "subdomain": name, "reconnect_secret": secret.expose() });
    assert_eq!(
        code_for(&server, while_live).await,
        "subdomain_taken",
        "live again"
    );
}

#[tokio::test]
async fn the_client_keeps_what_it_needs_to_reconnect() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let config = cryptun_client::ClientConfig::new(
        &server.url(),
        cryptun_client::Target::parse(&origin.target()).unwrap(),
    )
    .unwrap();
    let session = cryptun_client::connect(&config).await.unwrap();
    let name = session.tunnel().subdomain.clone();
    let again = session.reconnect_config();
    assert_eq!(again.tunnel.subdomain.as_deref(), Some(name.as_str()));
    assert_eq!(
        again.tunnel.reconnect_secret,
        session.tunnel().reconnect_secret
    );
    drop(session);
    wait_held(&server, &name).await;
    let back = cryptun_client::connect(&again).await.unwrap();
    assert_eq!(back.tunnel().subdomain, name);
}

#[tokio::test]
async fn a_keyed_tunnel_gets_its_name_back_with_its_key_only() {
    let dir = TempDir::new();
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Required)).await;
    let store = Store::open(&dir.path).unwrap();
    let (owner, other) = (
        store.create_key("a").unwrap(),
        store.create_key("b").unwrap(),
    );
    let origin = Origin::start().await;
    let first = client(&server, &origin, "keyed", Some(&owner.token), None)
        .await
        .unwrap();
    // A second live client is refused, even with the same key.
    let twin = client(&server, &origin, "keyed", Some(&owner.token), None).await;
    assert!(matches!(
        twin,
        Err(ClientError::Refused {
            code: ErrorCode::SubdomainTaken,
            ..
        })
    ));
    serves(&server, "keyed", "first").await;

    first.kill().await;
    wait_held(&server, "keyed").await;
    let stranger = json!({ "subdomain": "keyed", "token": other.token.expose() });
    assert_eq!(code_for(&server, stranger).await, "subdomain_held");
    let _back = client(&server, &origin, "keyed", Some(&owner.token), None)
        .await
        .unwrap();
    serves(&server, "keyed", "back").await;
}

#[tokio::test]
async fn names_live_when_the_server_stops_are_held_for_their_clients_after_it_restarts() {
    let dir = TempDir::new();
    let config = TestServer::auth_config(&dir.path, AuthMode::Optional);
    let store = Store::open(&dir.path).unwrap();
    let (owner, other) = (
        store.create_key("owner").unwrap(),
        store.create_key("other").unwrap(),
    );
    drop(store);
    let origin = Origin::start().await;
    let server = TestServer::start_with(config.clone()).await;
    let anonymous = TestClient::start(&server, &origin.target()).await;
    let name = anonymous.tunnel.subdomain.clone();
    let secret = anonymous.tunnel.reconnect_secret.clone().unwrap();
    let _keyed = client(&server, &origin, "keyed", Some(&owner.token), None)
        .await
        .unwrap();
    server.stop().await;

    let server = TestServer::start_with(config).await;
    for held in [name.as_str(), "keyed"] {
        wait_held(&server, held).await;
    }
    // Strangers are turned away, as before the restart.
    assert_eq!(
        code_for(&server, json!({ "subdomain": name })).await,
        "subdomain_held"
    );
    let guess = json!({ "subdomain": name, "reconnect_secret": "a".repeat(32) });
    assert_eq!(code_for(&server, guess).await, "unauthorized");
    let stranger = json!({ "subdomain": "keyed", "token": other.token.expose() });
    assert_eq!(code_for(&server, stranger).await, "subdomain_held");
    // Their clients take them back.
    let _anonymous = client(&server, &origin, &name, None, Some(&secret))
        .await
        .unwrap();
    serves(&server, &name, "anonymous").await;
    let _keyed = client(&server, &origin, "keyed", Some(&owner.token), None)
        .await
        .unwrap();
    serves(&server, "keyed", "keyed").await;
}

#[tokio::test]
async fn holds_that_cannot_be_read_or_saved_cost_only_themselves() {
    let dir = TempDir::new();
    drop(Store::open(&dir.path).unwrap());
    // The table of saved holds is gone (a damaged or hand-edited database):
    // reading it at start and writing it at shutdown both fail.
    let db = rusqlite::Connection::open(dir.path.join(cryptun_server::store::DB_FILE)).unwrap();
    db.execute_batch("DROP TABLE held_names").unwrap();
    drop(db);
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Optional)).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    serves(&server, &client.tunnel.subdomain, "served").await;
    // And it stops cleanly, its serve task returning Ok.
    server.stop().await;
}

#[tokio::test]
async fn after_the_grace_the_name_is_free_again() {
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(Config {
        reconnect_grace: grace,
        ..TestServer::test_config()
    })
    .await;
    let origin = Origin::start().await;
    let first = TestClient::start(&server, &origin.target()).await;
    let name = first.tunnel.subdomain.clone();
    first.kill().await;
    wait_held(&server, &name).await;
    assert_eq!(
        code_for(&server, json!({ "subdomain": name })).await,
        "subdomain_held"
    );
    eventually(WAIT, "the name is free after the grace", || async {
        let (_ws, reply) = RawWs::create(&server, json!({ "subdomain": name })).await;
        reply["type"] == "tunnel_created"
    })
    .await;
}

#[tokio::test]
async fn wrong_reconnect_secrets_count_as_failed_attempts() {
    let server = TestServer::start_with(Config {
        auth_backoff: BackoffConfig {
            free_failures: 1,
            base: Duration::from_secs(60),
            ..BackoffConfig::default()
        },
        ..TestServer::test_config()
    })
    .await;
    let (ws, created) = RawWs::create(&server, json!({})).await;
    let name = created["subdomain"].as_str().unwrap().to_owned();
    let secret = created["reconnect_secret"].as_str().unwrap().to_owned();
    drop(ws);
    wait_held(&server, &name).await;
    for guess in ["guess-one", "guess-two"] {
        let create = json!({ "subdomain": name, "reconnect_secret": guess });
        assert_eq!(code_for(&server, create).await, "unauthorized");
    }
    // Now even the right secret is turned away for a while.
    let right = json!({ "subdomain": name, "reconnect_secret": secret });
    assert_eq!(code_for(&server, right).await, "too_many_attempts");
}

/// The attack of a stranger who wants a disconnected client's name: it
/// opens and drops named tunnels until the table of held names is full,
/// from enough addresses that a per-address share alone cannot stop it
/// filling the table (with 100,000 held names, the oldest hold, the
/// victim's, used to end early, and the name went to whoever asked).
#[tokio::test]
async fn a_stranger_opening_and_dropping_names_cannot_end_someone_elses_hold() {
    let config = Config {
        max_held_names: 64,
        max_holds_per_identity: 8,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let at = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let (victim, created) = RawWs::connect_from(&server, at("127.0.0.2"), None)
        .await
        .ask(json!({ "subdomain": "victim" }))
        .await;
    assert_eq!(created["type"], "tunnel_created", "{created}");
    let secret = created["reconnect_secret"].as_str().unwrap().to_owned();
    drop(victim);
    wait_held(&server, "victim").await;

    // 12 addresses x 3 connections x 16 names: 576 names dropped, 96 more
    // than the shares allow, 32 more than the table holds.
    for a in 0..12 {
        for c in 0..3 {
            let mut ws = RawWs::connect_from(&server, at(&format!("127.0.1.{a}")), None).await;
            for t in 0..16 {
                let (next, created) = ws
                    .ask(json!({ "subdomain": format!("x{a}-{c}-{t}") }))
                    .await;
                assert_eq!(created["type"], "tunnel_created", "{created}");
                ws = next;
            }
        }
    }
    let admin = Visitor::new(server.addr);
    eventually(WAIT, "every attacking session has ended", || async {
        admin.admin_get("/healthz").await.json()["tunnels"] == 0
    })
    .await;
    // The name is still its owner's: a stranger is refused, visitors wait.
    let stranger = RawWs::connect_from(&server, at("127.0.0.9"), None).await;
    let (_stranger, refused) = stranger.ask(json!({ "subdomain": "victim" })).await;
    assert_eq!(refused["code"], "subdomain_held", "{refused}");
    wait_held(&server, "victim").await;
    // And it goes back to the owner with its secret.
    let back = json!({ "subdomain": "victim", "reconnect_secret": secret });
    let (_back, created) = RawWs::connect_from(&server, at("127.0.0.2"), None)
        .await
        .ask(back)
        .await;
    assert_eq!(created["type"], "tunnel_created", "{created}");
}
