//! Tests of the view's state: counters, rates, percentiles, the ring of
//! recent requests, and the connection's ups and downs.

use std::time::{Duration, Instant, SystemTime};

use cryptun_client::{Event, RequestDone, TunnelCreated};

use super::state::{Connection, DURATION_WINDOW, Header, RECENT, State, Tunnel};

pub(super) fn created(subdomain: &str) -> TunnelCreated {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "tunnel_id": subdomain.trim_start_matches("tunnel-"),
        "subdomain": subdomain,
        "public_url": format!("http://{subdomain}.localhost:4000"),
        "binary_streams": true,
        "request_timeout_ms": 60_000,
        "limits": {
            "max_message_bytes": 1, "max_frame_payload": 1, "stream_window": 1,
            "max_inline_body": 1, "max_streams": 1, "heartbeat_interval_ms": 1,
        },
    }))
    .expect("a tunnel_created message")
}

pub(super) fn state(t0: Instant, tunnels: &[(Option<&str>, &str)]) -> State {
    let header = Header::new("http://127.0.0.1:4000", Some("http://127.0.0.1:4040"));
    let tunnels = tunnels
        .iter()
        .map(|(name, sub)| {
            Tunnel::new(
                name.map(str::to_owned),
                &created(sub),
                "http://127.0.0.1:3000",
            )
        })
        .collect();
    State::new(header, tunnels, t0)
}

pub(super) fn request(path: &str, status: u16, ms: u64) -> Event {
    Event::Request(RequestDone {
        tunnel: "tunnel-a".into(),
        method: "GET".into(),
        path: path.into(),
        status,
        duration: Duration::from_millis(ms),
        error: None,
    })
}

fn started() -> Event {
    Event::RequestStarted
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn open_counts_started_minus_ended_and_never_goes_negative() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    s.apply(started(), t0, wall);
    s.apply(started(), t0, wall);
    assert_eq!((s.stats.open(), s.stats.total()), (2, 0));
    s.apply(request("/a", 200, 5), t0, wall);
    assert_eq!((s.stats.open(), s.stats.total()), (1, 1));
    s.apply(request("/b", 200, 5), t0, wall);
    // One more end than starts: a request begun before the view was.
    s.apply(request("/c", 200, 5), t0, wall);
    assert_eq!((s.stats.open(), s.stats.total()), (0, 3));
}

#[test]
fn rates_average_over_one_and_five_minutes_and_slide() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    // 120 requests in the first two seconds.
    for i in 0..120 {
        s.apply(
            request("/", 200, 1),
            t0 + Duration::from_millis(i * 15),
            wall,
        );
    }
    let at = t0 + secs(2);
    assert_eq!(s.stats.rate1(at), 2.0);
    assert_eq!(s.stats.rate5(at), 0.4);
    // A minute later they have left the one-minute window, not the five.
    let later = t0 + secs(61);
    assert_eq!(s.stats.rate1(later), 0.0);
    assert_eq!(s.stats.rate5(later), 0.4);
    // Five minutes on, both are empty.
    assert_eq!(s.stats.rate5(t0 + secs(301)), 0.0);
}

#[test]
fn rate_counters_are_reused_after_a_quiet_spell() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    for _ in 0..30 {
        s.apply(request("/", 200, 1), t0, wall);
    }
    // Exactly five minutes later the same counter slot comes round again:
    // it must start from zero, not from the old thirty.
    let back = t0 + secs(300);
    s.apply(request("/", 200, 1), back, wall);
    assert_eq!(s.stats.rate5(back), 1.0 / 300.0);
    // Much later (many laps) too.
    let much_later = t0 + secs(10_000);
    s.apply(request("/", 200, 1), much_later, wall);
    assert_eq!(s.stats.rate1(much_later), 1.0 / 60.0);
}

#[test]
fn percentiles_by_nearest_rank_over_the_last_window() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    assert_eq!(s.stats.percentiles([0.5]), [None]);
    for ms in 1..=10 {
        s.apply(request("/", 200, ms), t0, wall);
    }
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(s.stats.percentiles([0.5, 0.9]), [ms(5), ms(9)]);
    // The window keeps only the last DURATION_WINDOW: slow ones, now.
    for _ in 0..DURATION_WINDOW {
        s.apply(request("/", 200, 1000), t0, wall);
    }
    assert_eq!(s.stats.percentiles([0.5, 0.0]), [Some(secs(1)); 2]);
}

#[test]
fn recent_keeps_the_newest_first_and_is_bounded() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    for i in 0..(RECENT + 50) {
        s.apply(request(&format!("/{i}"), 200, 1), t0, wall);
    }
    assert_eq!(s.recent.len(), RECENT);
    assert_eq!(s.recent[0].done.path, format!("/{}", RECENT + 49));
    assert_eq!(s.recent[RECENT - 1].done.path, "/50");
    assert_eq!(s.stats.total(), (RECENT + 50) as u64);
}

#[test]
fn disconnected_then_reconnected() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(None, "tunnel-a")]);
    let wall = SystemTime::now();
    let lost = Event::Disconnected {
        error: "connection reset".into(),
        retry_in: secs(4),
        attempt: 2,
    };
    s.apply(lost, t0 + secs(1), wall);
    assert_eq!(
        s.connection,
        Connection::Reconnecting {
            attempt: 2,
            retry_at: t0 + secs(5),
            error: "connection reset".into()
        }
    );
    // The server gave another name this time (the old one's grace ran out).
    let back = Event::Reconnected {
        tunnel: created("tunnel-b"),
    };
    s.apply(back, t0 + secs(6), wall);
    assert_eq!(s.connection, Connection::Online);
    assert_eq!(s.tunnels[0].public_url, "http://tunnel-b.localhost:4000");
}

#[test]
fn a_reconnect_updates_only_the_tunnel_with_that_name() {
    let t0 = Instant::now();
    let mut s = state(t0, &[(Some("web"), "tunnel-a"), (Some("api"), "tunnel-b")]);
    let before = s.tunnels.clone();
    let mut again = created("tunnel-b");
    again.public_url = "https://tunnel-b.example.com".into();
    s.apply(Event::Reconnected { tunnel: again }, t0, SystemTime::now());
    assert_eq!(s.tunnels[0], before[0]);
    assert_eq!(s.tunnels[1].public_url, "https://tunnel-b.example.com");
    // A name no tunnel has, with several tunnels: which one it is cannot
    // be told, so none changes.
    s.apply(
        Event::Reconnected {
            tunnel: created("tunnel-z"),
        },
        t0,
        SystemTime::now(),
    );
    assert_eq!(s.tunnels[0], before[0]);
    assert_eq!(s.tunnels[1].subdomain, "tunnel-b");
}

#[test]
fn offline_says_why() {
    let mut s = state(Instant::now(), &[(None, "tunnel-a")]);
    s.offline("the server refused the tunnel: name taken");
    assert_eq!(
        s.connection,
        Connection::Offline {
            why: "the server refused the tunnel: name taken".into()
        }
    );
}
