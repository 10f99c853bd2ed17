//! The live status view of `cryptun http`, on a real pseudo-terminal
//! against a real server: the public URL and each request appear on the
//! screen, Ctrl-C (typed, so the terminal sends SIGINT) and an error exit
//! both give the terminal back; without a terminal, or with `--json` on
//! one, the output stays plain lines.
//!
//! The waits on the terminal block their thread, so these tests run on a
//! multi-threaded runtime and wait inside `block_in_place`, leaving the
//! in-process server its own threads.

use crate::common::cryptun;
use crate::common::tty::{Screen, Tty};
use cryptun_server::AuthMode;
use cryptun_testkit::{Origin, TempDir, TestServer, Visitor};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use tokio::task::block_in_place;

/// `host:port` of a public URL.
fn host_of(url: &str) -> &str {
    url.strip_prefix("http://").unwrap()
}

/// Waits for the view and returns its public URL.
fn public_url(tty: &mut Tty) -> String {
    public_url_to(tty, "built-in hello page")
}

/// Waits for the view of a tunnel to `target` and returns its public URL.
fn public_url_to(tty: &mut Tty, target: &str) -> String {
    let screen = tty.wait_for("the status view", |s| {
        s.alternate && s.line("Forwarding").is_some()
    });
    let line = screen.line("Forwarding").unwrap();
    let url = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(url.starts_with("http://tunnel-"), "{screen}");
    assert!(line.ends_with(&format!("{url} -> {target}")), "{line}");
    url
}

/// The last byte offset of `needle` in `raw`.
fn last(raw: &[u8], needle: &str) -> Option<usize> {
    raw.windows(needle.len())
        .rposition(|w| w == needle.as_bytes())
}

/// The terminal was given back: the alternate screen left and the cursor
/// shown, after they were last taken.
fn assert_restored(tty: &Tty) {
    let screen = tty.screen();
    assert!(!screen.alternate && screen.cursor_visible, "{screen}");
    let raw = &tty.raw;
    assert!(last(raw, "\x1b[?1049l") > last(raw, "\x1b[?1049h"));
    assert!(last(raw, "\x1b[?25h") > last(raw, "\x1b[?25l"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_view_shows_the_url_and_each_request_and_ctrl_c_restores_it() {
    let server = TestServer::start().await;
    let server_url = server.url();
    let args = [
        "http",
        "--hello",
        "--server",
        &server_url,
        "--inspect=127.0.0.1:0",
    ];
    let mut tty = Tty::cryptun(&args, 100, 30);
    let url = block_in_place(|| public_url(&mut tty));
    let screen = tty.screen();
    let online = "Session Status    online";
    assert_eq!(screen.line("Session Status").as_deref(), Some(online));
    let server_line = format!("Server            {server_url}");
    assert_eq!(screen.line("Server").as_deref(), Some(&*server_line));
    let inspector = screen.line("Web Interface").unwrap();
    assert!(inspector.contains("http://127.0.0.1:"), "{screen}");

    let reply = Visitor::new(server.addr)
        .get(host_of(&url), "/status-e2e?x=1")
        .await;
    assert_eq!(reply.status, 200);
    let is_request = |l: &String| l.contains(" GET     /status-e2e?x=1  200 ");
    let screen = block_in_place(|| {
        tty.wait_for("the request's line", |s: &Screen| {
            s.lines().iter().any(is_request)
        })
    });
    let line = screen.lines().into_iter().find(is_request).unwrap();
    assert!(line.ends_with("ms"), "{line}");
    let counts_now = counts(&screen);
    assert_eq!(counts_now, Some(("1".into(), "0".into())), "{screen}");
    // A hundred columns: no row is wider.
    assert!(screen.lines().iter().all(|l| l.chars().count() <= 100));

    tty.type_keys(b"\x03");
    let status = block_in_place(|| tty.wait_exit());
    assert!(status.success(), "{status}: {}", tty.screen());
    assert_restored(&tty);
    // The last frame stays on the normal screen, the session offline.
    let screen = tty.screen();
    let session = screen
        .line("Session Status")
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(session.contains("offline"), "{screen}");
    assert!(
        screen.lines().iter().any(|l| l.contains("/status-e2e?x=1")),
        "{screen}"
    );
}

/// The two counts (`ttl`, `opn`) on the statistics row.
fn counts(screen: &Screen) -> Option<(String, String)> {
    let lines = screen.lines();
    let at = lines.iter().position(|l| l.starts_with("Connections"))?;
    let mut values = lines.get(at + 1)?.split_whitespace();
    Some((values.next()?.to_owned(), values.next()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_counts_as_open_until_its_visitor_leaves() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let target = origin.addr.to_string();
    let mut tty = Tty::cryptun(&["http", &target, "--server", &server.url()], 100, 30);
    let url = block_in_place(|| public_url_to(&mut tty, &format!("http://{target}")));

    let mut visitor = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /hang HTTP/1.1\r\nHost: {}\r\n\r\n", host_of(&url));
    visitor.write_all(head.as_bytes()).await.unwrap();
    let open = Some(("0".to_owned(), "1".to_owned()));
    block_in_place(|| tty.wait_for("one request open", |s| counts(s) == open));

    drop(visitor);
    let ended = Some(("1".to_owned(), "0".to_owned()));
    let screen = block_in_place(|| tty.wait_for("the request ended", |s| counts(s) == ended));
    // Status `---`: the visitor left before any answer.
    let line = screen
        .lines()
        .into_iter()
        .find(|l| l.contains(" /hang "))
        .unwrap();
    assert!(line.contains(" GET     /hang  ---  "), "{screen}");
    assert!(
        line.ends_with("cancelled: the visitor went away"),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_view_draws_nothing_and_a_resize_redraws_it_to_the_new_size() {
    let server = TestServer::start().await;
    let mut tty = Tty::cryptun(&["http", "--hello", "--server", &server.url()], 100, 30);
    block_in_place(|| {
        public_url(&mut tty);
        // The frame's last sequence (clear below it) is out...
        tty.wait_for_end("\x1b[J");
        // ...and past two ticks of the redraw loop: nothing changed, nothing drawn.
        tty.assert_quiet_for(Duration::from_millis(2500));
    });
    tty.resize(60, 12);
    // The title row is now 60 wide, and what does not fit is cut.
    let title = format!("cryptun{}(Ctrl+C to quit)", " ".repeat(60 - 7 - 16));
    block_in_place(|| tty.wait_for_text(&title));
    let screen = tty.screen();
    let forwarding = screen.line("Forwarding").unwrap();
    assert_eq!(forwarding.chars().count(), 60, "{screen}");
    assert!(forwarding.ends_with('…'), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_shows_on_the_view_and_a_final_error_restores_the_terminal() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut tty = Tty::cryptun(&["http", "--hello", "--server", &server.url()], 100, 30);
    block_in_place(|| public_url(&mut tty));

    server.stop().await;
    block_in_place(|| {
        tty.wait_for("reconnecting", |s| {
            s.line("Session Status")
                .is_some_and(|l| l.contains("reconnecting (attempt"))
        })
    });
    // The server comes back wanting API keys, which this client lacks:
    // the reconnect is refused for good and the client exits.
    let dir = TempDir::new();
    let _strict =
        TestServer::start_on(addr, TestServer::auth_config(&dir.path, AuthMode::Required)).await;
    let status = block_in_place(|| tty.wait_exit());
    assert!(!status.success(), "{}", tty.screen());
    assert_restored(&tty);
    // The error is on the normal screen, after the view is gone.
    let screen = tty.screen();
    let error = screen.line("error:").unwrap_or_else(|| panic!("{screen}"));
    assert!(error.contains("refused"), "{error}");
    let session = screen
        .line("Session Status")
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(session.contains("offline"), "{screen}");
}

/// Log lines (here the client's debug line when the server goes away) are
/// not drawn over the view, where they would stay until it changed and
/// then vanish: they come out on the normal screen once it is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_wait_for_the_view_to_end() {
    let server = TestServer::start().await;
    let args = ["http", "--hello", "--server", &server.url()];
    let env = [("RUST_LOG", "cryptun_client=debug")];
    let mut tty = Tty::cryptun_with_env(&args, &env, 100, 30);
    block_in_place(|| public_url(&mut tty));
    server.stop().await;
    let screen = block_in_place(|| {
        tty.wait_for("reconnecting", |s| {
            s.line("Session Status")
                .is_some_and(|l| l.contains("reconnecting (attempt"))
        })
    });
    // The debug line's field, which the view itself never shows.
    assert!(!tty.text().contains("reconnect_after_ms"), "{screen}");
    tty.type_keys(b"\x03");
    let status = block_in_place(|| tty.wait_exit());
    assert!(status.success(), "{status}: {}", tty.screen());
    assert_restored(&tty);
    let screen = tty.screen();
    assert!(
        screen
            .lines()
            .iter()
            .any(|l| l.contains("the server is going away")),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_on_a_terminal_stays_json_lines() {
    let server = TestServer::start().await;
    let args = ["http", "--hello", "--json", "--server", &server.url()];
    let mut tty = Tty::cryptun(&args, 100, 30);
    let line = block_in_place(|| tty.wait_for_line("tunnel_created"));
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["type"], "tunnel_created");
    assert!(!tty.text().contains("\x1b[?1049h"), "{:?}", tty.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_the_output_stays_plain_lines() {
    let server = TestServer::start().await;
    let client = cryptun(&["http", "--hello", "--server", &server.url()]);
    let first = block_in_place(|| client.line());
    let url = first
        .strip_prefix("Forwarding  ")
        .and_then(|rest| rest.strip_suffix(" -> built-in hello page"))
        .unwrap_or_else(|| panic!("{first:?}"));
    let on = block_in_place(|| client.line());
    assert_eq!(on, format!("Server      {}", server.url()));
    let reply = Visitor::new(server.addr).get(host_of(url), "/plain").await;
    assert_eq!(reply.status, 200);
    let line = block_in_place(|| client.line());
    assert!(line.starts_with("GET     /plain "), "{line:?}");
    assert!(line.contains(" 200 "), "{line:?}");
    assert!(!first.contains('\x1b') && !line.contains('\x1b'));
}
