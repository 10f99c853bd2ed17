//! The inspector page's tools in a real headless Chromium: the filter box
//! (status, method, path) and the switch hiding assets (scripts, styles by
//! path or content type) show only the rows that match; Edit and replay
//! sends the request with another method, path, header and body, and the
//! origin gets that; Copy as curl gives a command that, run, sends the
//! visitor's request through the tunnel again. The page loads its script
//! and style as files under a policy that allows no inline script.
//!
//! Chromium must be installed (`apt-get install -y chromium`), and curl.

use cryptun_client::InspectorLimits;
use cryptun_testkit::inspector::InspectedTunnel;
use cryptun_testkit::{Browser, TestInspector, within};
use serde_json::Value;

/// Chromium on the inspector's page, its live feed connected.
async fn open(inspector: &TestInspector) -> Browser {
    let mut browser = Browser::launch().await;
    browser.navigate(&inspector.url()).await;
    browser
        .wait_until("the live feed", "document.querySelector('#live.on')")
        .await;
    browser
}

/// The paths of the rows shown, top to bottom.
const SHOWN: &str = "[...document.querySelectorAll('#list li')].filter(li => !li.hidden && li.offsetParent !== null)
                      .map(li => li.querySelector('.method').textContent + ' ' + li.summary.path).join(',')";

/// Sets the filter box to `text` as typing would.
fn filter(text: &str) -> String {
    format!(
        "(f => {{ f.value = {text:?}; f.dispatchEvent(new Event('input')); return true; }})(document.querySelector('#filter'))"
    )
}

#[tokio::test]
async fn the_filter_shows_matching_rows_and_can_hide_assets() {
    let tunnel = InspectedTunnel::start(InspectorLimits::default()).await;
    let (inspector, client, visitor) = (&tunnel.inspector, &tunnel.client, &tunnel.visitor);
    let mut browser = open(inspector).await;

    within("page", visitor.get(&client.host, "/echo/index")).await;
    within("script", visitor.get(&client.host, "/echo/src/main.tsx")).await;
    within("style", visitor.get(&client.host, "/echo/src/app.css?v=2")).await;
    within("vite", visitor.get(&client.host, "/echo/x")).await;
    within("missing", visitor.get(&client.host, "/status?code=404")).await;
    within(
        "api",
        visitor.call("POST", &client.host, "/echo/api/items", "{}"),
    )
    .await;
    browser
        .wait_until("six rows", "document.querySelectorAll('#list li .status').length === 6 && [...document.querySelectorAll('#list li .status')].every(s => s.textContent !== '…')")
        .await;

    browser.eval(&filter("404")).await;
    assert_eq!(browser.eval(SHOWN).await, "GET /status?code=404");
    browser.eval(&filter("4xx post")).await;
    assert_eq!(browser.eval(SHOWN).await, "", "4xx and POST: none is both");
    let note = browser
        .eval("!document.querySelector('#filtered').hidden")
        .await;
    assert_eq!(note, true, "the page says nothing matches");
    browser.eval(&filter("POST")).await;
    assert_eq!(browser.eval(SHOWN).await, "POST /echo/api/items");
    browser.eval(&filter("/src/")).await;
    assert_eq!(
        browser.eval(SHOWN).await,
        "GET /echo/src/app.css?v=2,GET /echo/src/main.tsx"
    );
    let count = browser
        .eval("document.querySelector('#count').textContent")
        .await;
    assert!(
        count.as_str().unwrap().starts_with("2 shown of 6"),
        "{count}"
    );
    browser.eval(&filter("")).await;
    browser.eval("(c => { c.checked = true; c.dispatchEvent(new Event('change')); return true; })(document.querySelector('#hide-assets'))").await;
    assert_eq!(
        browser.eval(SHOWN).await,
        "POST /echo/api/items,GET /status?code=404,GET /echo/x,GET /echo/index"
    );
    // New rows are filtered as they come.
    within("another script", visitor.get(&client.host, "/echo/late.js")).await;
    within("another page", visitor.get(&client.host, "/echo/late")).await;
    browser
        .wait_until("the late page", "[...document.querySelectorAll('#list li')].some(li => li.summary.path === '/echo/late')")
        .await;
    let shown = browser.eval(SHOWN).await;
    assert!(
        shown.as_str().unwrap().starts_with("GET /echo/late,POST"),
        "{shown}"
    );
    assert!(!shown.as_str().unwrap().contains("late.js"), "{shown}");
}

#[tokio::test]
async fn edit_and_replay_and_copy_as_curl() {
    let tunnel = InspectedTunnel::start(InspectorLimits::default()).await;
    let (server, origin, inspector, client, visitor) = (
        &tunnel.server,
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );
    let mut browser = open(inspector).await;

    let request = visitor
        .builder("POST", &client.host, "/echo/hook?id=7")
        .header("x-signature", "it's signed")
        .header("content-type", "application/json")
        .body(r#"{"event":"paid","note":"it's here"}"#.into())
        .unwrap();
    within("the POST", visitor.fetch(request)).await;
    let row = "[...document.querySelectorAll('#list li')].find(li => li.summary.path === '/echo/hook?id=7')";
    browser
        .wait_until(
            "the row",
            &format!("{row}?.querySelector('.status').textContent === '200'"),
        )
        .await;
    browser.eval(&format!("{row}.click(); true")).await;
    browser
        .wait_until(
            "the detail",
            "document.querySelector('#copy-curl') && document.querySelector('#request .body pre')",
        )
        .await;

    // Copy as curl: the command, run, sends the same request again.
    browser.click("#copy-curl").await;
    let curl = browser
        .wait_until(
            "the curl command",
            "(t => t.startsWith('curl') && t)(document.querySelector('#curl').textContent)",
        )
        .await;
    let curl = curl.as_str().unwrap().to_owned();
    assert!(curl.contains("-X 'POST'"), "{curl}");
    assert!(
        curl.contains(&format!("'{}/echo/hook?id=7'", client.tunnel.public_url)),
        "{curl}"
    );
    assert!(
        curl.contains(r#"-H 'x-signature: it'\''s signed'"#),
        "{curl}"
    );
    let host = client.host.split(':').next().unwrap().to_owned();
    let command = format!(
        "{curl} --silent --show-error --resolve '{host}:{}:127.0.0.1'",
        server.addr.port()
    );
    let ran = within(
        "curl",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .output()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let echoed: Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(
        echoed["body_sha256"],
        cryptun_testkit::sha256_hex(br#"{"event":"paid","note":"it's here"}"#)
    );
    assert_eq!(origin.requests(), 2);

    // Edit and replay: another method, path, header and body.
    browser.click("#edit").await;
    browser
        .wait_until("the editor", "!document.querySelector('#editor').hidden && document.querySelector('#edit-method').value === 'POST'")
        .await;
    let headers = browser
        .eval("document.querySelector('#edit-headers').value")
        .await;
    assert!(
        headers
            .as_str()
            .unwrap()
            .contains("x-signature: it's signed"),
        "{headers}"
    );
    browser
        .eval(
            "(() => { const set = (id, v) => { document.querySelector(id).value = v; };
               set('#edit-method', 'PUT'); set('#edit-path', '/echo/edited');
               set('#edit-headers', document.querySelector('#edit-headers').value + '\\nx-edited: yes');
               set('#edit-body', 'edited'); return true; })()",
        )
        .await;
    browser.click("#edit-send").await;
    let message = browser
        .wait_until("the replay confirmation", "(t => t.startsWith('Sent again') && t)(document.querySelector('#replay-msg').textContent)")
        .await;
    let id: u64 = message
        .as_str()
        .unwrap()
        .rsplit('#')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    inspector.wait_id(id).await;
    let detail = inspector.detail(id).await;
    let echoed: Value =
        serde_json::from_str(detail["response"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["path"], "/echo/edited");
    assert_eq!(echoed["body_len"], 6);
    assert!(
        echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-edited" && h[1] == "yes"),
        "{echoed}"
    );
    assert_eq!(origin.requests(), 3);
    let inline = browser
        .eval("document.querySelectorAll('script:not([src]), style, [style]').length")
        .await;
    assert_eq!(inline, 0, "no inline script or style");
}
