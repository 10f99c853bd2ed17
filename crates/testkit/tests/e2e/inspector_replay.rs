//! What the inspector shows was sent, and replays edited, through its JSON
//! API end to end (a real server, client and origin): a request body the
//! local service never read is captured as the visitor sent it and can be
//! replayed; a replay may change the method, path, headers and body (an
//! edited body makes a truncated request replayable); replays are reported
//! to the session's events, as the terminal shows them; the list holds its
//! byte budget; and edits that are not JSON or too large are refused.

use cryptun_client::{Event, InspectorLimits};
use cryptun_testkit::inspector::InspectedTunnel;
use cryptun_testkit::within;
use serde_json::{Value, json};

fn limits(max_body: usize) -> InspectorLimits {
    InspectorLimits {
        max_body,
        ..InspectorLimits::default()
    }
}

/// The value of header `name` in a `[[name, value], ...]` list.
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

const FORM: &str = "name=Ada+Lovelace&topic=engines&message=hello";

#[tokio::test]
async fn a_body_the_local_service_never_read_is_shown_as_sent_and_replays() {
    let tunnel = InspectedTunnel::start(limits(64 << 10)).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    // The origin's /status answers at once, without reading the body.
    let request = visitor
        .builder("POST", &client.host, "/status?code=501")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(FORM.into())
        .unwrap();
    let reply = within("the POST", visitor.fetch(request)).await;
    assert_eq!(reply.status, 501);

    let list = inspector
        .wait_for("the form's body", |list| {
            list.iter().any(|e| {
                e["path"] == "/status?code=501"
                    && e["request_size"] == FORM.len()
                    && e["state"] == "done"
            })
        })
        .await;
    let id = list[0]["id"].as_u64().unwrap();
    let detail = within("the body complete", async {
        loop {
            let detail = inspector.detail(id).await;
            if detail["request"]["body"]["state"] != "streaming" {
                return detail;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let body = &detail["request"]["body"];
    assert_eq!(body["text"], FORM, "{detail:#}");
    assert_eq!(body["state"], "complete");
    // Whether the bytes were passed to the app before it answered, or read
    // on from the visitor after (`drained`), depends on timing: either way
    // the body is shown as sent.
    assert!(body["drained"].is_boolean(), "{detail:#}");
    assert_eq!(detail["replay"]["allowed"], true, "{detail:#}");

    // Replayed as captured: the same body again, and the same 501.
    let replayed = inspector.replay(id, None).await;
    assert_eq!(replayed.status, 202, "{}", replayed.text());
    let new = replayed.json()["id"].as_u64().unwrap();
    let summary = inspector.wait_id(new).await;
    assert_eq!(summary["status"], 501);
    assert_eq!(summary["request_size"], FORM.len());
}

#[tokio::test]
async fn a_replay_can_change_method_path_headers_and_body() {
    let tunnel = InspectedTunnel::start(limits(1024)).await;
    let (origin, inspector, client, visitor) = (
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );
    let reply = within(
        "the POST",
        visitor.call("POST", &client.host, "/echo/original", "original body"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let id = inspector.wait_finished("/echo/original").await["id"]
        .as_u64()
        .unwrap();

    let edits = json!({
        "method": "PUT",
        "path": "/echo/edited?x=1",
        "headers": [["host", client.host], ["x-edited", "yes"], ["content-length", "999"]],
        "body": "an edited body",
    });
    let replayed = inspector.replay(id, Some(&edits)).await;
    assert_eq!(replayed.status, 202, "{}", replayed.text());
    let new = replayed.json()["id"].as_u64().unwrap();
    inspector.wait_id(new).await;
    let detail = inspector.detail(new).await;
    assert_eq!(detail["replay_of"], id);
    assert_eq!(
        (detail["method"].as_str(), detail["path"].as_str()),
        (Some("PUT"), Some("/echo/edited?x=1"))
    );
    // What the origin received, as it echoed it back.
    let echoed: Value =
        serde_json::from_str(detail["response"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["path"], "/echo/edited?x=1");
    assert_eq!(header(&echoed["headers"], "x-edited"), Some("yes"));
    assert_eq!(
        echoed["body_len"], 14,
        "Content-Length follows the body sent"
    );
    assert_eq!(origin.requests(), 2);

    // The replay is reported where the session's requests are.
    let event = client
        .wait_event("the replay's event", |e| {
            matches!(e, Event::Replayed { .. })
        })
        .await;
    let Event::Replayed { of, done } = event else {
        unreachable!()
    };
    assert_eq!(
        (of, &done.method[..], &done.path[..], done.status),
        (id, "PUT", "/echo/edited?x=1", 200)
    );

    // A truncated body cannot be sent again as captured, but an edited one
    // stands in for it.
    let big = "x".repeat(5000);
    within(
        "the big POST",
        visitor.call("POST", &client.host, "/echo/big", big),
    )
    .await;
    let big_id = inspector.wait_finished("/echo/big").await["id"]
        .as_u64()
        .unwrap();
    assert_eq!(inspector.replay(big_id, None).await.status, 409);
    let edited = inspector
        .replay(big_id, Some(&json!({ "body_base64": "aGVsbG8=" })))
        .await;
    assert_eq!(edited.status, 202, "{}", edited.text());
    let new = edited.json()["id"].as_u64().unwrap();
    inspector.wait_id(new).await;
    let detail = inspector.detail(new).await;
    let echoed: Value =
        serde_json::from_str(detail["response"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["body_len"], 5);
}

#[tokio::test]
async fn edits_that_are_not_valid_are_refused_and_nothing_is_sent() {
    let tunnel = InspectedTunnel::start(limits(1024)).await;
    let (origin, inspector, client, visitor) = (
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );
    within("a GET", visitor.get(&client.host, "/echo/one")).await;
    let id = inspector.wait_finished("/echo/one").await["id"]
        .as_u64()
        .unwrap();
    for (edits, status) in [
        (json!({ "nethod": "GET" }), 400),
        (json!({ "method": "NOT A METHOD" }), 409),
        (json!({ "path": "no-slash" }), 409),
        (json!({ "body": "a", "body_base64": "YQ==" }), 409),
        (json!({ "body": "y".repeat(2 << 20) }), 413),
    ] {
        let refused = inspector.replay(id, Some(&edits)).await;
        assert_eq!(refused.status, status, "{}", refused.text());
        assert!(refused.json()["error"].is_string());
    }
    assert_eq!(origin.requests(), 1, "no refused replay reached the origin");
}

#[tokio::test]
async fn the_list_keeps_within_its_byte_budget_and_keeps_the_newest() {
    let budget = 64 << 10;
    let tunnel = InspectedTunnel::start(InspectorLimits {
        capacity: 1000,
        max_body: 8 << 10,
        max_bytes: budget,
    })
    .await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    let body = "b".repeat(6 << 10);
    for i in 0..20 {
        let path = format!("/echo/{i}");
        within(
            &path.clone(),
            visitor.call("POST", &client.host, &path, body.clone()),
        )
        .await;
    }
    let list = inspector
        .wait_for("the last", |list| {
            list.first()
                .is_some_and(|e| e["path"] == "/echo/19" && cryptun_testkit::inspector::finished(e))
        })
        .await;
    // Each exchange holds 6 KiB of request body and its response: far
    // fewer than twenty fit in 64 KiB.
    assert!(list.len() < 10, "{} exchanges kept", list.len());
    assert!(inspector.inspector.bytes() <= budget);
    let status = inspector.json("/api/status").await;
    assert_eq!(status["max_bytes"], budget);
    assert!(status["bytes"].as_u64().unwrap() <= budget as u64);
    assert_eq!(status["count"], list.len());
}
