//! One inspector for a session of several tunnels (`cryptun start`), end
//! to end: two tunnels on one connection, each to its own origin. Each
//! exchange is listed with the tunnel that served it and that tunnel's
//! local service; replaying it reaches that origin and no other;
//! `/api/status` lists both tunnels and the HAR export names them; after a
//! reconnect the status shows the tunnels' new public URLs.

use cryptun_client::{InspectorLimits, Target};
use cryptun_server::Config;
use cryptun_testkit::inspector::TwoTunnels;
use cryptun_testkit::{Origin, TestClient, TestInspector, TestServer, Visitor, within};
use serde_json::Value;

/// How the inspector writes `origin`'s target.
fn target_of(origin: &Origin) -> String {
    Target::parse(&origin.target()).unwrap().to_string()
}

/// Replays exchange `id` and waits for the replay to finish; returns its summary.
async fn replay(inspector: &TestInspector, id: &Value) -> Value {
    let accepted = inspector
        .call("POST", &format!("/api/requests/{id}/replay"))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    inspector
        .wait_id(accepted.json()["id"].as_u64().unwrap())
        .await
}

#[tokio::test]
async fn each_exchange_names_its_tunnel_and_replays_to_its_origin() {
    let TwoTunnels {
        server,
        web_origin,
        api_origin,
        inspector,
        client,
        visitor,
    } = TwoTunnels::start().await;

    let reply = within("web", visitor.get(&client.host, "/echo/web")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let api_host = server.host_of("api");
    let reply = within("api", visitor.call("POST", &api_host, "/echo/api", "b")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((web_origin.requests(), api_origin.requests()), (1, 1));

    let web = inspector.wait_finished("/echo/web").await;
    let api = inspector.wait_finished("/echo/api").await;
    assert_eq!(web["tunnel"], "web");
    assert_eq!(web["target"], target_of(&web_origin));
    assert_eq!(api["tunnel"], "api");
    assert_eq!(api["target"], target_of(&api_origin));
    let detail = inspector.detail(api["id"].as_u64().unwrap()).await;
    assert_eq!(detail["tunnel"], "api");

    // Each replay goes to the origin of the tunnel that served the request.
    let again = replay(&inspector, &api["id"]).await;
    assert_eq!(again["status"], 200);
    assert_eq!(again["tunnel"], "api");
    assert_eq!((web_origin.requests(), api_origin.requests()), (1, 2));
    let again = replay(&inspector, &web["id"]).await;
    assert_eq!(again["status"], 200);
    assert_eq!(again["tunnel"], "web");
    assert_eq!((web_origin.requests(), api_origin.requests()), (2, 2));

    let status = inspector.json("/api/status").await;
    let tunnels = status["tunnels"].as_array().unwrap();
    let shown: Vec<(&str, &str)> = tunnels
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["target"].as_str().unwrap()))
        .collect();
    let (web_target, api_target) = (target_of(&web_origin), target_of(&api_origin));
    assert_eq!(shown, [("web", &web_target[..]), ("api", &api_target[..])]);
    assert_eq!(tunnels[0]["public_url"], client.tunnel.public_url);
    assert_eq!(tunnels[1]["subdomain"], "api");
    let api_url = tunnels[1]["public_url"].as_str().unwrap();
    assert!(api_url.contains(&api_host), "{api_url}");
    // The single-tunnel fields are the first tunnel's.
    assert_eq!(status["public_url"], client.tunnel.public_url);
    assert_eq!(status["target"], web_target);

    let har = inspector.json("/api/requests.har").await;
    let entries = har["log"]["entries"].as_array().unwrap();
    let tagged: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            let url = e["request"]["url"].as_str().unwrap();
            (
                url.rsplit('/').next().unwrap(),
                e["_tunnel"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tagged,
        [
            ("web", "web"),
            ("api", "api"),
            ("api", "api"),
            ("web", "web")
        ]
    );
    assert_eq!(entries[1]["_target"], api_target);
}

#[tokio::test]
async fn after_a_reconnect_the_status_shows_the_new_public_urls() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let (web_origin, api_origin) = (Origin::start().await, Origin::start().await);
    let inspector = TestInspector::start(InspectorLimits::default()).await;
    let attach = inspector.attach();
    let client = TestClient::start_reconnecting(&server, &web_origin.target(), |c| {
        c.more_tunnels.push(api_origin.tunnel("api"));
        attach(c);
    })
    .await
    .unwrap();
    let status = inspector.json("/api/status").await;
    assert_eq!(status["tunnels"][0]["public_url"], client.tunnel.public_url);

    // The same address under another domain: every public URL changes.
    server.stop().await;
    let restarted = TestServer::start_on(
        addr,
        Config {
            domain: "moved.localhost".into(),
            ..TestServer::test_config()
        },
    )
    .await;
    let api_host = restarted.host_of("api");
    let status = inspector
        .wait_status("the new public URLs", |status| {
            let urls: Vec<&str> = status["tunnels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["public_url"].as_str())
                .collect();
            urls.len() == 2 && urls.iter().all(|u| u.contains(".moved.localhost:"))
        })
        .await;
    assert_eq!(status["tunnels"][1]["name"], "api");
    assert_eq!(
        status["tunnels"][1]["public_url"],
        format!("http://{api_host}")
    );
    assert_eq!(status["public_url"], status["tunnels"][0]["public_url"]);

    // The new connection's exchanges are still told apart.
    let reply = within("api", Visitor::new(addr).get(&api_host, "/echo/moved")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let moved = inspector.wait_finished("/echo/moved").await;
    assert_eq!(moved["tunnel"], "api");
    assert_eq!(moved["target"], target_of(&api_origin));
}
