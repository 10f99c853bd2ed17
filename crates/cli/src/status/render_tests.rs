//! Tests of the renderer: the layout, widths and heights, many requests,
//! the reconnecting state, several tunnels, and hostile text.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptun_client::{Event, RequestDone};

use super::render::{duration, fit, render};
use super::state_tests::{request, state};

/// 12:03:21 UTC on some day.
fn noon() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 12 * 3600 + 3 * 60 + 21)
}

fn find<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {lines:#?}"))
}

#[test]
fn shows_status_version_server_inspector_forwarding_and_stats() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    for ms in [2, 4, 40] {
        s.apply(request("/hello", 200, ms), t0, noon());
    }
    let lines = render(&s, t0 + Duration::from_secs(1), 100, 40);
    assert!(lines[0].starts_with("cryptun") && lines[0].ends_with("(Ctrl+C to quit)"));
    assert_eq!(lines[0].chars().count(), 100);
    assert_eq!(find(&lines, "Session Status"), "Session Status    online");
    let version = format!("Version           {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(find(&lines, "Version"), version);
    assert_eq!(
        find(&lines, "Server"),
        "Server            http://127.0.0.1:4000"
    );
    assert_eq!(
        find(&lines, "Web Interface"),
        "Web Interface     http://127.0.0.1:4040"
    );
    assert_eq!(
        find(&lines, "Forwarding"),
        "Forwarding        http://tunnel-a.localhost:4000 -> http://127.0.0.1:3000"
    );
    let stats = lines
        .iter()
        .position(|l| l.starts_with("Connections"))
        .unwrap();
    assert_eq!(
        lines[stats],
        "Connections       ttl     opn     rt1     rt5     p50     p90"
    );
    assert_eq!(
        lines[stats + 1],
        "                  3       0       0.05    0.01    4.0ms   40.0ms"
    );
    let n = lines.len();
    assert_eq!(lines[n - 3], "12:03:21  GET     /hello  200    40.0ms");
    assert_eq!(lines[n - 1], "12:03:21  GET     /hello  200     2.0ms");
}

#[test]
fn no_inspector_line_when_it_is_off_and_dashes_before_any_request() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    s.header.inspector = None;
    let lines = render(&s, t0, 80, 24);
    assert!(!lines.iter().any(|l| l.starts_with("Web Interface")));
    let stats = lines
        .iter()
        .position(|l| l.starts_with("Connections"))
        .unwrap();
    assert!(lines[stats + 1].ends_with("0.00    0.00    -       -"));
    assert!(lines.last().unwrap().starts_with("------"));
}

#[test]
fn every_line_fits_any_width_and_height() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(Some("web"), "tunnel-a"), (Some("api"), "tunnel-b")]);
    for i in 0..30 {
        let path = format!("/{}", "segment/".repeat(i));
        s.apply(request(&path, 200, i as u64), t0, noon());
    }
    for width in [1, 2, 10, 20, 33, 40, 80, 132, 300] {
        for height in [1, 2, 5, 12, 24, 50, 200] {
            let lines = render(&s, t0, width, height);
            assert!(
                lines.len() <= height,
                "{width}x{height}: {} lines",
                lines.len()
            );
            for line in &lines {
                let n = line.chars().count();
                assert!(n <= width, "{width}x{height}: {n} chars in {line:?}");
            }
        }
    }
    assert!(render(&s, t0, 0, 24).is_empty());
    assert!(render(&s, t0, 80, 0).is_empty());
}

#[test]
fn many_requests_fill_the_height_newest_first() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    for i in 0..500 {
        s.apply(request(&format!("/r{i}"), 200, 1), t0, noon());
    }
    let header = render(&s, t0, 80, 1000)
        .iter()
        .position(|l| l.starts_with("12:03:21"))
        .unwrap();
    let lines = render(&s, t0, 80, 30);
    assert_eq!(lines.len(), 30);
    let shown: Vec<&str> = lines[header..]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    let expected: Vec<String> = (0..30 - header).map(|i| format!("/r{}", 499 - i)).collect();
    assert_eq!(shown, expected);
    // A tall terminal shows the whole ring, no more.
    let all = render(&s, t0, 80, 1000);
    assert_eq!(all.len() - header, super::state::RECENT);
}

#[test]
fn a_short_terminal_cuts_from_the_bottom() {
    let t0 = Instant::now();
    let s = state(t0, &[(None, "tunnel-a")]);
    let lines = render(&s, t0, 80, 4);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2], "Session Status    online");
}

#[test]
fn reconnecting_counts_down_then_says_trying() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let lost = Event::Disconnected {
        error: "disconnected from the server: connection reset".into(),
        retry_in: Duration::from_millis(3500),
        attempt: 2,
    };
    s.apply(lost, t0, noon());
    let status = |s: &super::state::State, at| render(s, at, 200, 40)[2..4].join("\n");
    assert_eq!(
        status(&s, t0),
        "Session Status    reconnecting (attempt 2, next try in 4s)\n                  disconnected from the server: connection reset"
    );
    assert!(status(&s, t0 + Duration::from_secs(3)).contains("next try in 1s)"));
    assert!(status(&s, t0 + Duration::from_secs(4)).contains("(attempt 2, trying now)"));
    s.offline("the server refused the tunnel: name taken");
    assert_eq!(
        status(&s, t0),
        "Session Status    offline\n                  the server refused the tunnel: name taken"
    );
}

#[test]
fn several_tunnels_each_get_a_line_with_aligned_names() {
    let t0 = Instant::now();
    let mut s = state(
        t0,
        &[
            (Some("web"), "tunnel-a"),
            (Some("backend"), "tunnel-b"),
            (None, "tunnel-c"),
        ],
    );
    let lines = render(&s, t0, 120, 40);
    let forwarding: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("Forwarding"))
        .collect();
    assert_eq!(
        forwarding,
        [
            "Forwarding        web      http://tunnel-a.localhost:4000 -> http://127.0.0.1:3000",
            "Forwarding        backend  http://tunnel-b.localhost:4000 -> http://127.0.0.1:3000",
            "Forwarding                 http://tunnel-c.localhost:4000 -> http://127.0.0.1:3000",
        ]
    );
    // Each request line names the tunnel that served it.
    let served_by = |tunnel: &str| {
        Event::Request(RequestDone {
            tunnel: tunnel.into(),
            method: "GET".into(),
            path: "/x".into(),
            status: 200,
            duration: Duration::from_millis(2),
            error: None,
        })
    };
    s.apply(served_by("backend"), t0, noon());
    s.apply(served_by("tunnel-c"), t0, noon());
    let lines = render(&s, t0, 120, 40);
    let last = &lines[lines.len() - 2..];
    assert_eq!(last[0], "12:03:21  tunnel-c  GET     /x    200     2.0ms");
    assert_eq!(last[1], "12:03:21  backend   GET     /x    200     2.0ms");
}

#[test]
fn long_paths_are_cut_and_errors_follow_the_duration() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let long = format!("/{}", "a".repeat(200));
    s.apply(request(&long, 200, 3), t0, noon());
    let gone = Event::Request(RequestDone {
        tunnel: "tunnel-a".into(),
        method: "POST".into(),
        path: "/upload".into(),
        status: 0,
        duration: Duration::from_millis(1500),
        error: Some("cancelled: the visitor went away".into()),
    });
    s.apply(gone, t0, noon());
    let lines = render(&s, t0, 60, 40);
    let n = lines.len();
    // Path column: 60 - 33 fixed = 27 characters, the last an ellipsis;
    // no room for the error.
    let path = format!("{:<27}", "/upload");
    assert_eq!(
        lines[n - 2],
        format!("12:03:21  POST    {path}  ---     1.50s")
    );
    assert_eq!(lines[n - 1].chars().count(), 60);
    assert!(lines[n - 1].contains(&format!(" /{}…  200", "a".repeat(25))));
    // Wider: the error follows the duration, cut to what is left.
    let lines = render(&s, t0, 300, 40);
    let path = format!("{:<201}", "/upload");
    let error = "cancelled: the visitor went away";
    let wide = format!("12:03:21  POST    {path}  ---     1.50s  {error}");
    assert_eq!(lines[lines.len() - 2], wide);
    let lines = render(&s, t0, 250, 40);
    assert!(lines[lines.len() - 2].ends_with("1.50s  cancelled: th…"));
}

#[test]
fn control_characters_cannot_reach_the_terminal() {
    assert_eq!(fit("a\x1b[2Jb\nc\u{9b}d", 80), "a?[2Jb?c?d");
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    s.offline("bad \x1b]0;title\x07 server");
    let lines = render(&s, t0, 80, 24);
    assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
}

#[test]
fn durations_in_a_few_characters() {
    let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
    assert_eq!(duration(ms(0.42)), "0.42ms");
    assert_eq!(duration(ms(12.34)), "12.3ms");
    assert_eq!(duration(ms(1250.0)), "1.25s");
    assert_eq!(duration(ms(130_000.0)), "130s");
    assert_eq!(fit("abcdef", 4), "abc…");
    assert_eq!(fit("abcdef", 0), "");
}
