//! The request inspector through its JSON API, end to end: a real server,
//! a real client recording into an inspector on `127.0.0.1:0`, and the
//! origin. Exchanges appear with their heads and bodies; large bodies pass
//! whole while the inspector keeps only their start and says so; binary
//! bodies come as a hex dump; the HAR export has HAR's structure; replay
//! reaches the origin again (and is refused for a truncated body); the ring
//! buffer holds its bound; and the API refuses other hosts and origins.

use base64::Engine as _;
use cryptun_client::InspectorLimits;
use cryptun_testkit::inspector::InspectedTunnel;
use cryptun_testkit::wsecho::{self, WsEcho};
use cryptun_testkit::{
    TestClient, TestInspector, TestServer, Visitor, pattern, sha256_hex, within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn small(max_body: usize) -> InspectorLimits {
    InspectorLimits {
        capacity: 50,
        max_body,
        ..InspectorLimits::default()
    }
}

/// The value of header `name` in a `[[name, value], ...]` list.
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

#[tokio::test]
async fn exchanges_appear_with_their_heads_and_bodies() {
    let tunnel = InspectedTunnel::start(small(64 << 10)).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    let request = visitor
        .builder("POST", &client.host, "/echo/hook?x=1")
        .header("x-test", "inspected")
        .header("content-type", "text/plain")
        .body("hello inspector".into())
        .unwrap();
    let reply = within("the POST", visitor.fetch(request)).await;
    assert_eq!(reply.status, 200);

    let summary = inspector.wait_finished("/echo/hook?x=1").await;
    assert_eq!(summary["method"], "POST");
    assert_eq!(summary["status"], 200);
    assert_eq!(summary["state"], "done");
    assert_eq!(summary["request_size"], 15);
    assert_eq!(summary["response_size"], reply.body.len());
    assert!(summary["duration_ms"].as_f64().unwrap() >= 0.0);

    let detail = inspector.detail(summary["id"].as_u64().unwrap()).await;
    let request = &detail["request"];
    assert_eq!(header(&request["headers"], "x-test"), Some("inspected"));
    assert_eq!(header(&request["headers"], "host"), Some(&client.host[..]));
    assert_eq!(request["body"]["kind"], "text");
    assert_eq!(request["body"]["text"], "hello inspector");
    assert_eq!(request["body"]["truncated"], false);
    assert_eq!(request["body"]["state"], "complete");
    let response = &detail["response"];
    assert_eq!(response["status"], 200);
    assert_eq!(
        header(&response["headers"], "content-type"),
        Some("application/json")
    );
    assert_eq!(response["body"]["kind"], "text");
    assert_eq!(response["body"]["text"], reply.text());
    assert_eq!(detail["replay"]["allowed"], true);
}

#[tokio::test]
async fn large_bodies_pass_whole_and_are_kept_truncated_with_a_note() {
    let tunnel = InspectedTunnel::start(small(1024)).await;
    let (origin, inspector, client, visitor) = (
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );
    let upload = pattern(300_000);
    let reply = within(
        "the upload",
        visitor.call("POST", &client.host, "/sha256", upload.clone()),
    )
    .await;
    assert_eq!(
        reply.json()["sha256"],
        sha256_hex(&upload),
        "the origin got it whole"
    );
    let download = within("the download", visitor.get(&client.host, "/bytes?n=200000")).await;
    assert_eq!(
        &download.body[..],
        &pattern(200_000)[..],
        "the visitor got it whole"
    );

    let up = inspector.wait_finished("/sha256").await;
    let detail = inspector.detail(up["id"].as_u64().unwrap()).await;
    let body = &detail["request"]["body"];
    assert_eq!(body["size"], 300_000);
    assert_eq!(body["captured"], 1024);
    assert_eq!(body["truncated"], true);
    let note = body["note"].as_str().unwrap();
    assert!(note.contains("first 1024 of 300000 bytes"), "{note}");
    let kept = base64::engine::general_purpose::STANDARD
        .decode(body["base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept, &upload[..1024]);

    // A truncated body is not known whole: replay says so, and sends nothing.
    assert_eq!(detail["replay"]["allowed"], false);
    let seen = origin.requests();
    let refused = inspector
        .call("POST", &format!("/api/requests/{}/replay", up["id"]))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );
    assert_eq!(origin.requests(), seen);

    let down = inspector.wait_finished("/bytes?n=200000").await;
    let detail = inspector.detail(down["id"].as_u64().unwrap()).await;
    let body = &detail["response"]["body"];
    assert_eq!(body["size"], 200_000);
    assert_eq!(body["captured"], 1024);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["state"], "complete");
}

#[tokio::test]
async fn binary_bodies_are_shown_as_a_hex_dump() {
    let tunnel = InspectedTunnel::start(small(64 << 10)).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    let reply = within("binary", visitor.get(&client.host, "/bytes?n=40")).await;
    assert_eq!(reply.body.len(), 40);
    let summary = inspector.wait_finished("/bytes?n=40").await;
    let detail = inspector.detail(summary["id"].as_u64().unwrap()).await;
    let body = &detail["response"]["body"];
    assert_eq!(body["kind"], "binary");
    assert!(body.get("text").is_none());
    let dump = body["hexdump"].as_str().unwrap();
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 3, "{dump}");
    // pattern(): byte i is i * 7 % 256 for the first 251 bytes.
    assert!(
        lines[0].starts_with("00000000  00 07 0e 15 1c 23 2a 31  38 3f 46 4d 54 5b 62 69  |"),
        "{dump}"
    );
    assert!(
        lines[2].starts_with("00000020  e0 e7 ee f5 fc 03 0a 11 "),
        "{dump}"
    );
}

#[tokio::test]
async fn har_export_has_the_structure_of_har_1_2() {
    let tunnel = InspectedTunnel::start(small(64 << 10)).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    within("get", visitor.get(&client.host, "/echo?a=1&b=two")).await;
    within(
        "post",
        visitor.call("PUT", &client.host, "/echo/put", "payload"),
    )
    .await;
    inspector.wait_finished("/echo/put").await;
    inspector.wait_finished("/echo?a=1&b=two").await;

    let reply = inspector.get("/api/requests.har").await;
    assert_eq!(reply.status, 200);
    let disposition = reply.headers["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("cryptun.har"), "{disposition}");
    let har = reply.json();
    let log = &har["log"];
    assert_eq!(log["version"], "1.2");
    assert_eq!(log["creator"]["name"], "cryptun");
    assert!(log["creator"]["version"].is_string());
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        assert!(entry["startedDateTime"].as_str().unwrap().ends_with('Z'));
        assert!(entry["time"].as_f64().unwrap() >= 0.0);
        assert!(entry["cache"].is_object());
        for timing in ["send", "wait", "receive"] {
            assert!(entry["timings"][timing].as_f64().unwrap() >= 0.0, "{entry}");
        }
        let request = &entry["request"];
        for field in ["method", "url", "httpVersion"] {
            assert!(request[field].is_string(), "{field}: {entry}");
        }
        for field in ["cookies", "headers", "queryString"] {
            assert!(request[field].is_array(), "{field}: {entry}");
        }
        assert_eq!(request["headersSize"], -1);
        let response = &entry["response"];
        assert_eq!(response["status"], 200);
        assert_eq!(response["statusText"], "OK");
        assert!(response["headers"].is_array() && response["cookies"].is_array());
        assert!(response["content"]["size"].as_u64().unwrap() > 0);
        assert_eq!(response["content"]["mimeType"], "application/json");
        assert!(response["content"]["text"].is_string());
        assert!(response["redirectURL"].is_string());
    }
    // Oldest first, as HAR viewers expect.
    let get = &entries[0]["request"];
    assert_eq!(get["method"], "GET");
    assert_eq!(get["url"], format!("http://{}/echo?a=1&b=two", client.host));
    assert_eq!(get["queryString"][1]["name"], "b");
    assert_eq!(get["queryString"][1]["value"], "two");
    let put = &entries[1]["request"];
    assert_eq!(put["postData"]["text"], "payload");
    assert_eq!(put["bodySize"], 7);
}

#[tokio::test]
async fn replay_sends_the_request_to_the_origin_again() {
    let tunnel = InspectedTunnel::start(small(64 << 10)).await;
    let (origin, inspector, client, visitor) = (
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );
    let request = visitor
        .builder("PATCH", &client.host, "/echo/again?k=v")
        .header("x-replayed", "yes")
        .body("the same body".into())
        .unwrap();
    let first = within("the PATCH", visitor.fetch(request)).await.json();
    let original = inspector.wait_finished("/echo/again?k=v").await;
    assert_eq!(origin.requests(), 1);

    let path = format!("/api/requests/{}/replay", original["id"]);
    let accepted = inspector.call("POST", &path).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let replay_id = accepted.json()["id"].as_u64().unwrap();
    assert_eq!(accepted.json()["replay_of"], original["id"]);
    let replay = inspector.wait_id(replay_id).await;
    assert_eq!(origin.requests(), 2, "the origin got the request again");
    assert_eq!(replay["status"], 200);
    assert_eq!(replay["replay_of"], original["id"]);
    assert_eq!(replay["method"], "PATCH");

    // The origin saw the same method, path, header and body.
    let detail = inspector.detail(replay_id).await;
    let echoed: Value =
        serde_json::from_str(detail["response"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "PATCH");
    assert_eq!(echoed["path"], "/echo/again?k=v");
    assert_eq!(echoed["body_sha256"], first["body_sha256"]);
    assert!(
        echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-replayed" && h[1] == "yes"),
        "{echoed}"
    );

    let missing = inspector.call("POST", "/api/requests/999/replay").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_ring_buffer_keeps_only_the_newest_exchanges() {
    let limits = InspectorLimits {
        capacity: 5,
        max_body: 1024,
        ..InspectorLimits::default()
    };
    let tunnel = InspectedTunnel::start(limits).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    for i in 0..12 {
        within(
            "a request",
            visitor.get(&client.host, &format!("/echo?i={i}")),
        )
        .await;
    }
    let list = inspector
        .wait_for("the last request to finish", |list| {
            list.first().is_some_and(|e| e["path"] == "/echo?i=11")
                && list.iter().all(cryptun_testkit::inspector::finished)
        })
        .await;
    let paths: Vec<&str> = list.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/echo?i=11",
            "/echo?i=10",
            "/echo?i=9",
            "/echo?i=8",
            "/echo?i=7"
        ]
    );
    assert_eq!(inspector.inspector.len(), 5);
    let oldest = list.last().unwrap()["id"].as_u64().unwrap();
    assert_eq!(
        inspector
            .get(&format!("/api/requests/{}", oldest - 1))
            .await
            .status,
        404
    );
    let status = inspector.json("/api/status").await;
    assert_eq!(status["capacity"], 5);
    assert_eq!(status["count"], 5);
    assert_eq!(status["public_url"], client.tunnel.public_url);

    assert_eq!(inspector.call("DELETE", "/api/requests").await.status, 204);
    assert!(inspector.list().await.is_empty());
}

#[tokio::test]
async fn an_unreachable_local_service_is_recorded_with_its_error() {
    let server = TestServer::start().await;
    let inspector = TestInspector::start(small(1024)).await;
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = TestClient::start_with(&server, &closed.to_string(), inspector.attach())
        .await
        .unwrap();
    let reply = within(
        "the GET",
        Visitor::new(server.addr).get(&client.host, "/down"),
    )
    .await;
    assert_eq!(reply.status, 502);
    let summary = inspector.wait_finished("/down").await;
    assert_eq!(summary["status"], 502);
    assert_eq!(summary["state"], "failed");
    let error = summary["error"].as_str().unwrap();
    assert!(
        error.contains("could not reach the local service"),
        "{error}"
    );
}

#[tokio::test]
async fn a_websocket_is_recorded_as_a_switch_and_not_replayed() {
    let server = TestServer::start().await;
    let app = WsEcho::start().await;
    let inspector = TestInspector::start(small(1024)).await;
    let client = TestClient::start_with(&server, &app.target(), inspector.attach())
        .await
        .unwrap();
    let mut ws = within(
        "the upgrade",
        wsecho::connect(server.addr, &client.host, "/socket"),
    )
    .await
    .unwrap();
    within("an echo", async {
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    })
    .await;
    let list = inspector
        .wait_for("the switch", |list| list.iter().any(|e| e["status"] == 101))
        .await;
    let detail = inspector.detail(list[0]["id"].as_u64().unwrap()).await;
    assert_eq!(detail["upgraded"], true);
    assert_eq!(detail["response"]["status"], 101);
    assert_eq!(detail["replay"]["allowed"], false);
    let reason = detail["replay"]["reason"].as_str().unwrap();
    assert!(reason.contains("WebSocket"), "{reason}");
    drop(ws);
    inspector.wait_finished("/socket").await;
}

#[tokio::test]
async fn the_api_refuses_other_hosts_and_cross_origin_writes() {
    let inspector = TestInspector::start(small(1024)).await;
    let visitor = Visitor::new(inspector.addr);
    let rebound = within(
        "rebinding",
        visitor.get("evil.example:4040", "/api/requests"),
    )
    .await;
    assert_eq!(rebound.status, 403);
    assert_eq!(
        within(
            "localhost",
            visitor.get(&format!("localhost:{}", inspector.addr.port()), "/")
        )
        .await
        .status,
        200
    );
    let request = visitor
        .builder("DELETE", &inspector.host(), "/api/requests")
        .header("origin", "http://evil.example")
        .body(Default::default())
        .unwrap();
    assert_eq!(
        within("cross-origin", visitor.fetch(request)).await.status,
        403
    );
    let page = inspector.get("/").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(inspector.get("/api/nothing").await.status, 404);
    assert_eq!(inspector.call("PUT", "/api/requests").await.status, 405);
}
