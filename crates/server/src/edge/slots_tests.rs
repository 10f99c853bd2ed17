//! Tests of `slots`, kept apart from the code they test.

use super::*;

#[test]
fn one_address_gets_its_share_and_clients_the_kept_slots() {
    let held = |all, kept| Held { all, kept };
    // Over its share: refused, free slots or not; a trusted proxy never.
    let over = decide(held(8, 0), 8, false, true, true);
    assert_eq!(over, Decision::Refused(Refusal::PerAddress));
    assert_eq!(decide(held(8, 0), 8, true, true, true), Decision::Open);
    assert_eq!(decide(held(7, 0), 8, false, true, true), Decision::Open);
    // Open slots gone: only a kept one, for clients, a few per address.
    let kept = decide(held(0, 0), 8, false, false, true);
    assert_eq!(kept, Decision::ClientsOnly);
    let many = decide(held(20, KEPT_PER_ADDRESS), 100, false, false, true);
    assert_eq!(many, Decision::Refused(Refusal::Full));
    let full = decide(held(0, 0), 8, false, false, false);
    assert_eq!(full, Decision::Refused(Refusal::Full));
}

#[tokio::test]
async fn slots_are_counted_by_address_group_and_given_back() {
    let slots = Slots::new(20, 2, vec!["10.0.0.0/8".parse().unwrap()]);
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    let a = slots.admit(at("[2001:db8::1]:1")).unwrap();
    let b = slots.admit(at("[2001:db8::2]:2")).unwrap();
    // The same /64.
    assert_eq!(
        slots.admit(at("[2001:db8::3]:3")).err(),
        Some(Refusal::PerAddress)
    );
    let other = slots.admit(at("[2001:db8:0:1::1]:1")).unwrap();
    drop(a);
    let again = slots.admit(at("[2001:db8::3]:3")).unwrap();
    // A trusted proxy is not counted.
    let proxied: Vec<_> = (0..10)
        .map(|i| slots.admit(at(&format!("10.0.0.1:{i}"))).unwrap())
        .collect();
    assert!(proxied.iter().all(|s| !s.clients_only));
    drop((b, other, again, proxied));
    assert!(slots.counts().is_empty());
}

#[tokio::test]
async fn a_proxied_connection_counts_against_the_visitor_its_header_names() {
    let slots = Slots::new(20, 2, vec!["10.0.0.0/8".parse().unwrap()]);
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    let proxied = || slots.admit(at("10.0.0.1:1")).unwrap();
    let (mut a, mut b, mut c) = (proxied(), proxied(), proxied());
    slots.assign(&mut a, at("192.0.2.1:1")).unwrap();
    slots.assign(&mut b, at("192.0.2.1:2")).unwrap();
    let over = slots.assign(&mut c, at("192.0.2.1:3"));
    assert_eq!(over, Err(Refusal::PerAddress));
    slots.assign(&mut c, at("192.0.2.2:3")).unwrap();
    // A proxy named by a header (a chain of them) is exempt too.
    let mut d = proxied();
    slots.assign(&mut d, at("10.9.9.9:1")).unwrap();
    assert!(d.address.is_none());
    assert_eq!(slots.counts().get(&at("192.0.2.1:0").ip()).unwrap().all, 2);
    drop(a);
    slots.assign(&mut d, at("192.0.2.1:4")).unwrap();
    drop((b, c, d));
    assert!(slots.counts().is_empty());
}

#[tokio::test]
async fn when_the_open_slots_are_taken_the_kept_ones_are_for_clients() {
    let slots = Slots::new(10, 100, vec![]);
    let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], u16::try_from(i).unwrap()));
    let open: Vec<_> = (0..9).map(|i| slots.admit(at(i)).unwrap()).collect();
    assert!(open.iter().all(|s| !s.clients_only));
    let kept = slots.admit(at(9)).unwrap();
    assert!(kept.clients_only);
    assert_eq!(slots.admit(at(10)).err(), Some(Refusal::Full));
    drop(open);
    assert!(!slots.admit(at(11)).unwrap().clients_only);
}

#[test]
fn refusals_are_logged_once_per_interval_with_their_count() {
    let mut registry = prometheus_client::registry::Registry::default();
    let refusals = Refusals::new(Metrics::register(&mut registry));
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let t = Instant::now();
    refusals.note(peer, Refusal::Full, t);
    for i in 1..=500 {
        refusals.note(peer, Refusal::Full, t + Duration::from_millis(i));
    }
    assert_eq!(refusals.log.lock().unwrap().1, 500, "counted, not logged");
    refusals.note(peer, Refusal::Full, t + LOG_EVERY);
    assert_eq!(*refusals.log.lock().unwrap(), (Some(t + LOG_EVERY), 0));
}
