//! The inspector's page in a real headless Chromium, as a person uses it:
//! it loads and goes live, a request sent through the tunnel appears in
//! the list without a reload, clicking it shows its headers and bodies
//! (markup a visitor sent shows as text, never as HTML), and Replay sends
//! it to the local service again. With two tunnels on the connection, the
//! page names both, badges each row with its tunnel, and a replay goes to
//! the tunnel's own local service.
//!
//! Chromium must be installed (`apt-get install -y chromium`); without it
//! this test fails and says so. `CRYPTUN_SCREENSHOT=path` saves a picture
//! of the page at the end (that is how `docs/inspector.png` is made).

use cryptun_client::InspectorLimits;
use cryptun_testkit::inspector::InspectedTunnel;
use cryptun_testkit::inspector::TwoTunnels;
use cryptun_testkit::{Browser, TestInspector, within};

/// A header value that would run script if the page used innerHTML.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned='yes'\">";

/// Chromium on the inspector's page, its live feed connected.
async fn open(inspector: &TestInspector) -> Browser {
    let mut browser = Browser::launch().await;
    browser.navigate(&inspector.url()).await;
    browser
        .wait_until("the live feed", "document.querySelector('#live.on')")
        .await;
    browser
}

#[tokio::test]
async fn the_page_lists_requests_live_shows_them_and_replays() {
    let tunnel = InspectedTunnel::start(InspectorLimits::default()).await;
    let (origin, inspector, client, visitor) = (
        &tunnel.origin,
        &tunnel.inspector,
        &tunnel.client,
        &tunnel.visitor,
    );

    let mut browser = open(inspector).await;
    let tunnel = browser
        .eval("document.querySelector('#tunnel').textContent")
        .await;
    assert!(
        tunnel.as_str().unwrap().contains(&client.tunnel.public_url),
        "{tunnel}"
    );

    // A request through the tunnel appears without a reload.
    let request = visitor
        .builder("POST", &client.host, "/echo/from-the-browser-test?q=1")
        .header("x-trace", "abc123")
        .body("hello from the visitor".into())
        .unwrap();
    let reply = within("the POST", visitor.fetch(request)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.requests(), 1);
    let row = "[...document.querySelectorAll('#list li')]
               .find(li => li.textContent.includes('/echo/from-the-browser-test?q=1'))";
    browser
        .wait_until(
            "the request in the list with its status",
            &format!("{row}?.querySelector('.status')?.textContent === '200'"),
        )
        .await;

    // One tunnel: no tunnel badges.
    let badges = browser
        .eval("document.querySelectorAll('.tunnel-badge').length")
        .await;
    assert_eq!(badges, 0);

    // Clicking it shows its headers and both bodies.
    browser.eval(&format!("{row}.click(); true")).await;
    let header_value = |name: &str| {
        format!(
            "[...document.querySelectorAll('#request table.headers tr')]
               .find(tr => tr.querySelector('.name').textContent === '{name}')
               ?.querySelector('.value').textContent"
        )
    };
    let trace = browser
        .wait_until("the request headers", &header_value("x-trace"))
        .await;
    assert_eq!(trace, "abc123");
    let body = browser
        .wait_until(
            "the request body",
            "document.querySelector('#request .body pre')?.textContent",
        )
        .await;
    assert_eq!(body, "hello from the visitor");
    let response = browser
        .wait_until(
            "the response body",
            "document.querySelector('#response .body pre')?.textContent",
        )
        .await;
    assert!(
        response.as_str().unwrap().contains("body_sha256"),
        "{response}"
    );

    // Replay: the origin gets the request again, and the replay is listed.
    browser
        .wait_until(
            "Replay to be enabled",
            "document.querySelector('#replay:not(:disabled)')",
        )
        .await;
    browser.click("#replay").await;
    let message = browser
        .wait_until(
            "the replay confirmation",
            "(t => t.startsWith('Sent again') && t)(document.querySelector('#replay-msg').textContent)",
        )
        .await;
    let replay_id: u64 = message
        .as_str()
        .unwrap()
        .rsplit('#')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let replay = inspector.wait_id(replay_id).await;
    assert_eq!(replay["status"], 200);
    assert_eq!(origin.requests(), 2, "the origin got the request again");
    browser
        .wait_until(
            "the replay in the list",
            &format!(
                "document.querySelector('#list .replay-mark[title=\"replay of #{}\"]')",
                replay["replay_of"]
            ),
        )
        .await;

    if let Ok(path) = std::env::var("CRYPTUN_SCREENSHOT") {
        browser.screenshot(std::path::Path::new(&path)).await;
    }

    // What a visitor sent is shown as text, never run as markup.
    let request = visitor
        .builder("GET", &client.host, "/echo/hostile")
        .header("x-hostile", HOSTILE)
        .body(Default::default())
        .unwrap();
    within("the hostile GET", visitor.fetch(request)).await;
    let row = "[...document.querySelectorAll('#list li')]
               .find(li => li.textContent.includes('/echo/hostile'))";
    browser
        .wait_until("the hostile request in the list", row)
        .await;
    browser.eval(&format!("{row}.click(); true")).await;
    let hostile = browser
        .wait_until("the hostile header", &header_value("x-hostile"))
        .await;
    assert_eq!(hostile, HOSTILE);
    let injected = browser
        .eval("document.querySelector('#detail img') !== null || 'pwned' in document.body.dataset")
        .await;
    assert_eq!(injected, false, "markup from a request reached the DOM");
}

#[tokio::test]
async fn with_two_tunnels_rows_name_their_tunnel_and_replay_goes_to_its_origin() {
    let TwoTunnels {
        server,
        web_origin,
        api_origin,
        inspector,
        client,
        visitor,
    } = TwoTunnels::start().await;

    let mut browser = open(&inspector).await;
    let names = browser
        .wait_until(
            "both tunnels in the header",
            "(n => n.length === 2 && n.join(','))([...document.querySelectorAll('#tunnel .one')].map(e => e.dataset.name))",
        )
        .await;
    assert_eq!(names, "web,api");

    within("web", visitor.get(&client.host, "/echo/to-web")).await;
    within("api", visitor.get(&server.host_of("api"), "/echo/to-api")).await;
    let badge = |path: &str| {
        format!(
            "[...document.querySelectorAll('#list li')]
               .find(li => li.textContent.includes('{path}'))
               ?.querySelector('.tunnel-badge')?.textContent"
        )
    };
    let web = browser
        .wait_until("the web row's badge", &badge("/echo/to-web"))
        .await;
    assert_eq!(web, "web");
    let api = browser
        .wait_until("the api row's badge", &badge("/echo/to-api"))
        .await;
    assert_eq!(api, "api");

    // Replay from the api row's detail: the api origin gets it again.
    let row = "[...document.querySelectorAll('#list li')]
               .find(li => li.textContent.includes('/echo/to-api'))";
    browser.eval(&format!("{row}.click(); true")).await;
    browser
        .wait_until(
            "the api detail",
            "document.querySelector('#detail .sub')?.textContent.includes('tunnel api') \
             && document.querySelector('#replay:not(:disabled)')",
        )
        .await;
    browser.click("#replay").await;
    browser
        .wait_until(
            "the replay confirmation",
            "document.querySelector('#replay-msg').textContent.startsWith('Sent again')",
        )
        .await;
    inspector
        .wait_for("the replay to finish", |list| {
            list.iter()
                .any(|e| !e["replay_of"].is_null() && cryptun_testkit::inspector::finished(e))
        })
        .await;
    assert_eq!((web_origin.requests(), api_origin.requests()), (1, 2));
}
