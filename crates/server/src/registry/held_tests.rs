//! Tests of `held`, kept apart from the code they test.

use super::*;

const GRACE: Duration = Duration::from_secs(30);

impl Holds {
    /// Holds `name` for `owner`, counted against the owner itself.
    fn put(&mut self, name: String, owner: Owner, until: Instant, now: Instant) {
        let holder = Holder::restored(&owner);
        self.hold(name, owner, holder, until, now).unwrap();
    }
}

#[test]
fn a_revoked_key_releases_only_its_own_holds() {
    let mut holds = Holds::new(10, 10);
    let t = Instant::now();
    holds.put("a".into(), Owner::Key("k1".into()), t + GRACE, t);
    holds.put("b".into(), Owner::Key("k1".into()), t + GRACE, t);
    holds.put("c".into(), Owner::Key("k2".into()), t + GRACE, t);
    assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 2);
    assert_eq!(holds.len(), 1);
    assert_eq!(holds.remaining("a", t), None);
    assert_eq!(holds.remaining("c", t), Some(GRACE));
    assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 0);
}

#[test]
fn only_the_owner_takes_a_held_name_back() {
    let mut holds = Holds::new(10, 10);
    let t = Instant::now();
    let secret = Secret::new("s3cret");
    holds.put("app".into(), Owner::secret(&secret), t + GRACE, t);
    holds.put("keyed".into(), Owner::Key("k1".into()), t + GRACE, t);
    assert_eq!(holds.remaining("app", t), Some(GRACE));

    let nobody = Claim::default();
    assert_eq!(holds.claim("app", nobody, t), Err(HeldBy::Other(GRACE)));
    let wrong = Secret::new("guess");
    let guess = Claim {
        key: None,
        secret: Some(&wrong),
    };
    assert_eq!(
        holds.claim("app", guess, t),
        Err(HeldBy::WrongSecret(GRACE))
    );
    let other_key = Claim {
        key: Some("k2"),
        secret: Some(&wrong),
    };
    assert_eq!(
        holds.claim("keyed", other_key, t),
        Err(HeldBy::Other(GRACE))
    );

    let owner = Claim {
        key: None,
        secret: Some(&secret),
    };
    assert_eq!(holds.claim("app", owner, t), Ok(()));
    assert_eq!(holds.remaining("app", t), None);
    let key = Claim {
        key: Some("k1"),
        secret: None,
    };
    assert_eq!(holds.claim("keyed", key, t), Ok(()));
    assert_eq!(holds.len(), 0);
}

#[test]
fn holds_end_with_the_grace() {
    let mut holds = Holds::new(10, 10);
    let t = Instant::now();
    holds.put("app".into(), Owner::Key("k".into()), t + GRACE, t);
    let after = t + GRACE;
    assert_eq!(holds.remaining("app", after), None);
    assert_eq!(holds.claim("app", Claim::default(), after), Ok(()));
    assert_eq!(holds.len(), 0);
}

#[test]
fn a_name_held_again_is_not_released_by_its_old_hold() {
    let mut holds = Holds::new(10, 10);
    let t = Instant::now();
    let owner = Owner::Key("k".into());
    holds.put("app".into(), owner.clone(), t + GRACE, t);
    let key = Claim {
        key: Some("k"),
        secret: None,
    };
    holds.claim("app", key, t).unwrap();
    let t2 = t + Duration::from_secs(10);
    holds.put("app".into(), owner, t2 + GRACE, t2);
    // The first hold's time passes; the second is still in force.
    let t3 = t + GRACE;
    assert_eq!(
        holds.claim("app", Claim::default(), t3),
        Err(HeldBy::Other(Duration::from_secs(10)))
    );
}

#[test]
fn saved_holds_are_restored_with_what_was_left_of_them() {
    let t = Instant::now();
    let mut before = Holds::new(10, 10);
    let secret = Secret::new("s3cret");
    before.put("anon".into(), Owner::secret(&secret), t + GRACE, t);
    let t1 = t + Duration::from_secs(5);
    before.put("keyed".into(), Owner::Key("k".into()), t1 + GRACE, t1);
    let mut saved = before.saved(t1);
    saved.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(saved[0].left, GRACE - Duration::from_secs(5));
    assert_eq!(saved[1].left, GRACE);

    // A later start: the keyed name is already held afresh there; a
    // hold longer than this run's grace is cut to it.
    let mut after = Holds::new(10, 10);
    let t2 = t1 + Duration::from_secs(60);
    after.put("keyed".into(), Owner::Key("other".into()), t2 + GRACE, t2);
    let short = Duration::from_secs(10);
    after.restore(saved, short, t2);
    assert_eq!(after.remaining("anon", t2), Some(short));
    assert_eq!(after.remaining("keyed", t2), Some(GRACE));
    let owner = Claim {
        key: None,
        secret: Some(&secret),
    };
    assert_eq!(
        after.claim("anon", Claim::default(), t2),
        Err(HeldBy::Other(short))
    );
    assert_eq!(after.claim("anon", owner, t2), Ok(()));
}

#[test]
fn a_shorter_hold_taken_back_ends_on_time_behind_a_longer_one() {
    let t = Instant::now();
    let mut holds = Holds::new(10, 10);
    holds.put("new".into(), Owner::Key("k".into()), t + GRACE, t);
    let short = Duration::from_secs(5);
    let saved = |name: &str, left| SavedHold {
        name: name.into(),
        owner: Owner::Key("old".into()),
        left,
    };
    holds.restore(vec![saved("old", short)], GRACE, t);
    let later = t + short;
    assert_eq!(holds.remaining("old", later), None);
    // The next hold's purge finds it ended, though it came in last.
    holds.put("next".into(), Owner::Key("k".into()), later + GRACE, later);
    assert_eq!(holds.len(), 2, "the ended hold left the map");
    assert_eq!(holds.claim("old", Claim::default(), later), Ok(()));
    assert_eq!(holds.remaining("new", later), Some(GRACE - short));

    // More saved than the bound holds: those ending last are kept.
    let mut small = Holds::new(2, 10);
    let many = (1..=5)
        .map(|i| saved(&format!("n{i}"), Duration::from_secs(i)))
        .collect();
    small.restore(many, GRACE, t);
    assert_eq!(small.len(), 2);
    assert!(small.remaining("n5", t).is_some() && small.remaining("n4", t).is_some());
}

#[test]
fn a_full_table_refuses_new_holds_and_never_ends_one_early() {
    let mut holds = Holds::new(3, 10);
    let t = Instant::now();
    let (victim, secret) = (Owner::Key("victim".into()), Owner::Key("k".into()));
    holds.put("held".into(), victim, t + GRACE, t);
    for i in 0..100u64 {
        let now = t + Duration::from_millis(i);
        let holder = Holder::Key("k".into());
        let _ = holds.hold(format!("n{i}"), secret.clone(), holder, now + GRACE, now);
        assert!(holds.len() <= 3 && holds.order.len() <= 6);
    }
    let now = t + Duration::from_millis(100);
    assert!(
        holds.remaining("held", now).is_some(),
        "the first hold stays"
    );
    assert_eq!(
        holds.hold(
            "late".into(),
            Owner::Key("x".into()),
            Holder::Key("x".into()),
            now + GRACE,
            now
        ),
        Err(NotHeld::Full)
    );
}

#[test]
fn a_holder_over_its_share_holds_no_more_and_costs_nobody_else() {
    let mut holds = Holds::new(1000, 2);
    let t = Instant::now();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let anon = |n: u8| Owner::Secret([n; 32]);
    let attacker = Holder::of(&anon(1), ip("2001:db8:0:1::1"));
    let victim = Holder::of(&anon(9), ip("198.51.100.7"));
    holds
        .hold("mine".into(), anon(9), victim, t + GRACE, t)
        .unwrap();
    // Another address of the same /64 is the same holder.
    let same = Holder::of(&anon(2), ip("2001:db8:0:1::ffff"));
    assert_eq!(same, attacker);
    holds
        .hold("a1".into(), anon(1), attacker.clone(), t + GRACE, t)
        .unwrap();
    holds
        .hold("a2".into(), anon(2), same, t + GRACE, t)
        .unwrap();
    for i in 3..=255u8 {
        let refused = holds.hold(format!("a{i}"), anon(i), attacker.clone(), t + GRACE, t);
        assert_eq!(refused, Err(NotHeld::Quota));
    }
    assert_eq!(holds.len(), 3);
    assert_eq!(
        holds.claim("mine", Claim::default(), t),
        Err(HeldBy::Other(GRACE))
    );
    // Taken back, a hold frees its share.
    let secret = Secret::new("s");
    let back = Claim {
        key: None,
        secret: Some(&secret),
    };
    holds.map.get_mut("a1").unwrap().owner = Owner::secret(&secret);
    holds.claim("a1", back, t).unwrap();
    holds
        .hold("a3".into(), anon(3), attacker, t + GRACE, t)
        .unwrap();
}
