//! Tests of [`super`]: the exposition text and the label sets.

use super::*;

#[test]
fn every_family_is_exposed_under_the_cryptun_prefix() {
    let mut registry = Registry::default();
    let m = Metrics::register(&mut registry);
    m.refused("max_streams");
    m.handshake_refused(ErrorCode::SubdomainTaken);
    m.request_done(
        Outcome {
            class: "5xx",
            reason: "timeout",
        },
        Duration::from_millis(30),
    );
    m.bytes_in.inc_by(10);
    m.refused_request(Refused::Misdirected);
    m.own_route("healthz", 200);
    let text = encode(&registry);
    for line in [
        "# TYPE cryptun_tunnels gauge",
        "# TYPE cryptun_sessions gauge",
        "cryptun_requests_total{class=\"5xx\",reason=\"timeout\"} 1",
        "cryptun_request_duration_seconds_count 1",
        "cryptun_request_duration_seconds_bucket{le=\"0.05\"} 1",
        "cryptun_requests_in_flight 0",
        "cryptun_idle_connections 0",
        "cryptun_body_bytes_total{direction=\"in\"} 10",
        "cryptun_body_bytes_total{direction=\"out\"} 0",
        "cryptun_handshake_failures_total{reason=\"subdomain_taken\"} 1",
        "cryptun_refusals_total{reason=\"max_streams\"} 1",
        "cryptun_refused_requests_total{reason=\"misdirected\"} 1",
        "cryptun_refused_requests_total{reason=\"bad_host\"} 0",
        "cryptun_own_route_requests_total{route=\"healthz\",class=\"2xx\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn each_refusal_reason_has_its_own_counter() {
    let m = Metrics::register(&mut Registry::default());
    for (i, reason) in Refused::ALL.into_iter().enumerate() {
        for _ in 0..=i {
            m.refused_request(reason);
        }
    }
    let counts: Vec<u64> = m.refused_requests.iter().map(Counter::get).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn classes() {
    assert_eq!(class_of(101), "1xx");
    assert_eq!(class_of(204), "2xx");
    assert_eq!(class_of(404), "4xx");
    assert_eq!(class_of(504), "5xx");
    assert_eq!(class_of(0), "none");
    assert_eq!(class_of(999), "none");
}

#[test]
fn the_session_gauge_follows_its_guards() {
    let m = Metrics::register(&mut Registry::default());
    let a = m.session_started();
    let b = m.session_started();
    assert_eq!(m.sessions.get(), 2);
    drop(a);
    drop(b);
    assert_eq!(m.sessions.get(), 0);
}
