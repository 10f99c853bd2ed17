//! The server dashboard in a real headless Chromium, as an operator uses
//! it: it asks for the admin token (and refuses a wrong one), then shows a
//! tunnel as its client connects, its request count and errors as
//! visitors use it, and its departure when the client disconnects, all
//! without a reload; a key name with markup in it shows as text. A server
//! without a token shows its dashboard to loopback with no prompt.
//!
//! Chromium must be installed (`apt-get install -y chromium`); without it
//! this test fails and says so. `CRYPTUN_SCREENSHOT=path` saves a picture
//! of the page (that is how `docs/dashboard.png` is made).

use cryptun_server::{AdminToken, AuthMode, Store};
use cryptun_testkit::{Browser, Origin, TempDir, TestClient, TestServer, Visitor, within};

const TOKEN: &str = "dashboard-browser-token-0123456789";

/// A key name that would run script if the page used innerHTML.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned='yes'\">";

/// The text of the `column` cell of `subdomain`'s row, as a JS expression.
fn cell(subdomain: &str, column: &str) -> String {
    format!(
        "document.querySelector('#tunnels tr[data-subdomain=\"{subdomain}\"] td.{column}')?.textContent"
    )
}

/// Types `text` into the tunnel filter, as JavaScript.
fn filter(text: &str) -> String {
    format!(
        "(() => {{ const f = document.querySelector('#filter');
           f.value = {}; f.dispatchEvent(new Event('input')); return true; }})()",
        serde_json::to_string(text).unwrap()
    )
}

#[tokio::test]
async fn the_dashboard_follows_tunnels_and_their_requests_live() {
    let dir = TempDir::new();
    let mut config = TestServer::auth_config(&dir.path, AuthMode::Required);
    config.admin_token = Some(AdminToken::new(TOKEN).unwrap());
    let server = TestServer::start_with(config).await;
    let store = Store::open(&dir.path).unwrap();
    let (laptop, hostile) = (
        store.create_key("laptop").unwrap(),
        store.create_key(HOSTILE).unwrap(),
    );
    let origin = Origin::start().await;
    let visitor = Visitor::new(server.addr);
    let url = format!("http://{}/dashboard", server.own_host());

    let mut browser = Browser::launch().await;
    browser.navigate(&url).await;
    // The page asks for the token; a wrong one is refused.
    browser
        .wait_until(
            "the token prompt",
            "!document.querySelector('#login').hidden",
        )
        .await;
    let sign_in = |token: &str| {
        format!(
            "document.querySelector('#token').value = {};
             document.querySelector('#login-submit').click(); true",
            serde_json::to_string(token).unwrap()
        )
    };
    browser
        .eval(&sign_in("dashboard-browser-token-wrong-wrong"))
        .await;
    browser
        .wait_until(
            "the wrong token refused",
            "document.querySelector('#login-msg').textContent.includes('refused')",
        )
        .await;
    browser.eval(&sign_in(TOKEN)).await;
    browser
        .wait_until(
            "the dashboard, live and empty",
            "!document.querySelector('#board').hidden
             && document.querySelector('#conn.on')
             && !document.querySelector('#no-tunnels').hidden",
        )
        .await;
    // Survives only as long as the page is not reloaded.
    browser.eval("window.notReloaded = true").await;

    // A client connects: its tunnel appears, with its key's name.
    let client = TestClient::start_with(&server, &origin.target(), |c| {
        c.token = Some(laptop.token.clone());
        c.tunnel.subdomain = Some("myapp".into());
    })
    .await
    .unwrap();
    let sub = client.tunnel.subdomain.clone();
    let key_name = browser
        .wait_until("the tunnel in the list", &cell(&sub, "key"))
        .await;
    assert_eq!(key_name, "laptop");
    let count = browser.eval(&cell(&sub, "requests")).await;
    assert_eq!(count, "0");
    browser
        .wait_until(
            "the client in the list",
            "document.querySelector('#clients tbody td.names')?.textContent",
        )
        .await;

    // Requests through it: the count and the errors follow.
    for path in ["/echo/a", "/echo/b", "/echo/c"] {
        assert_eq!(
            within(path, visitor.get(&client.host, path)).await.status,
            200
        );
    }
    browser
        .wait_until(
            "three requests",
            &format!("{} === '3'", cell(&sub, "requests")),
        )
        .await;
    let failed = within("the 503", visitor.get(&client.host, "/status?code=503")).await;
    assert_eq!(failed.status, 503);
    browser
        .wait_until(
            "four requests, one 5xx",
            &format!(
                "{} === '4' && {} === '1'",
                cell(&sub, "requests"),
                cell(&sub, "e5xx")
            ),
        )
        .await;
    let totals = browser
        .eval("document.querySelector('#t-requests').textContent")
        .await;
    assert_eq!(totals, "4");

    if let Ok(path) = std::env::var("CRYPTUN_SCREENSHOT") {
        browser.screenshot(std::path::Path::new(&path)).await;
    }

    // A key name with markup in it is shown as text.
    let other = TestClient::start_with(&server, &origin.target(), |c| {
        c.token = Some(hostile.token.clone());
    })
    .await
    .unwrap();
    let other_key = browser
        .wait_until("the second tunnel", &cell(&other.tunnel.subdomain, "key"))
        .await;
    assert_eq!(other_key, HOSTILE);
    // The filter narrows the list to the matching tunnels.
    let visible = "[...document.querySelectorAll('#tunnels tbody tr')]
                   .filter(tr => !tr.hidden).map(tr => tr.dataset.subdomain).join()";
    browser.eval(&filter("LAPTOP")).await;
    assert_eq!(browser.eval(visible).await, "myapp");
    browser.eval(&filter("")).await;
    assert_eq!(
        browser
            .eval(visible)
            .await
            .as_str()
            .unwrap()
            .split(',')
            .count(),
        2
    );

    // The clients leave: so do their tunnels.
    client.stop().await.unwrap();
    browser
        .wait_until(
            "the first tunnel gone",
            &format!(
                "!document.querySelector('#tunnels tr[data-subdomain=\"{sub}\"]')
                 && document.querySelectorAll('#tunnels tbody tr').length === 1"
            ),
        )
        .await;
    other.stop().await.unwrap();
    browser
        .wait_until(
            "no tunnels left",
            "!document.querySelector('#no-tunnels').hidden
             && document.querySelector('#t-tunnels').textContent === '0'",
        )
        .await;
    let kept = browser
        .eval("window.notReloaded === true && !('pwned' in document.body.dataset)")
        .await;
    assert_eq!(kept, true, "the page reloaded, or markup ran");
    assert_eq!(
        browser.eval("document.querySelector('#board img')").await,
        serde_json::Value::Null,
        "markup from a key name reached the DOM"
    );

    // The token is kept for the tab: a reload asks for nothing.
    browser.navigate(&url).await;
    browser
        .wait_until(
            "the dashboard without a prompt",
            "!document.querySelector('#board').hidden && document.querySelector('#login').hidden",
        )
        .await;

    // A server without a token shows its dashboard to loopback at once.
    let open = TestServer::start().await;
    browser
        .navigate(&format!("http://{}/dashboard", open.own_host()))
        .await;
    browser
        .wait_until(
            "the open dashboard",
            "!document.querySelector('#board').hidden && document.querySelector('#conn.on')",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_nodes_dashboard_shows_every_node() {
    let redis = cryptun_testkit::TestRedis::start();
    let a = TestServer::start_with(TestServer::cluster_config(&redis.url(), "a")).await;
    let b = TestServer::start_with(TestServer::cluster_config(&redis.url(), "b")).await;
    let origin = Origin::start().await;
    let on_b = TestClient::start(&b, &origin.target()).await;
    let sub = on_b.tunnel.subdomain.clone();

    // Node A's page shows B's tunnel, in a node column, and both nodes.
    let mut browser = Browser::launch().await;
    browser
        .navigate(&format!("http://{}/dashboard", a.own_host()))
        .await;
    browser
        .wait_until(
            "B's tunnel, on b",
            &format!("{} === 'b'", cell(&sub, "node")),
        )
        .await;
    browser
        .wait_until(
            "both nodes, live",
            "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node + ':' + r.children[1].textContent).join(',') === 'a:live,b:live'",
        )
        .await;
    let shown = browser
        .eval(&format!(
            "getComputedStyle(document.querySelector('#tunnels tr[data-subdomain=\"{sub}\"] td.node')).display"
        ))
        .await;
    assert_ne!(shown, "none", "the node column is shown in a cluster");
    assert_eq!(
        browser
            .eval("document.querySelector('#server').textContent.includes('node a')")
            .await,
        true
    );
}

#[tokio::test]
async fn a_single_servers_dashboard_has_no_node_column() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let sub = client.tunnel.subdomain.clone();
    let mut browser = Browser::launch().await;
    browser
        .navigate(&format!("http://{}/dashboard", server.own_host()))
        .await;
    browser
        .wait_until(
            "the tunnel",
            &format!("{} !== undefined", cell(&sub, "node")),
        )
        .await;
    let shown = browser
        .eval(&format!(
            "getComputedStyle(document.querySelector('#tunnels tr[data-subdomain=\"{sub}\"] td.node')).display"
        ))
        .await;
    assert_eq!(shown, "none");
    assert_eq!(
        browser
            .eval("document.querySelector('#nodes-panel').hidden")
            .await,
        true
    );
}
