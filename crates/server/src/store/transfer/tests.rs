//! The document read strictly, the plan's rules one by one, and a round
//! trip between two databases.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::store::holds::{SavedHold, now_ms};
use crate::store::tests::TempDir;
use crate::store::{Store, StoreError};

fn key(id: &str, hash: u8) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("key {id}"),
        token_sha256: Sha256([hash; 32]),
        created_at: 1_700_000_000,
        revoked_at: None,
    }
}

fn reservation(name: &str, key_id: &str) -> ReservationRecord {
    ReservationRecord {
        name: name.into(),
        key_id: key_id.into(),
        created_at: Some(1_700_000_100),
    }
}

fn hold(name: &str, owner: &Owner, until_ms: i64) -> HoldRecord {
    HoldRecord::new(name.into(), owner, until_ms)
}

const NOW: i64 = 1_700_000_000_000;

fn doc(
    keys: Vec<KeyRecord>,
    reservations: Vec<ReservationRecord>,
    holds: Vec<HoldRecord>,
) -> Document {
    Document::new(keys, reservations, holds)
}

#[test]
fn a_document_reads_back_as_written() {
    let owner = Owner::Secret([9; 32]);
    let written = doc(
        vec![key("aaaaaaaa", 1), key("bbbbbbbb", 2)],
        vec![reservation("myapp", "aaaaaaaa")],
        vec![
            hold("notes", &owner, NOW),
            hold("tunnel-abc", &Owner::Key("bbbbbbbb".into()), NOW),
        ],
    );
    let text = serde_json::to_string(&written).unwrap();
    assert!(
        text.contains(r#""format":"cryptun-keys","version":1"#),
        "{text}"
    );
    assert!(text.contains(&"09".repeat(32)), "hashes in hex: {text}");
    assert_eq!(Document::parse(&text).unwrap(), written);
}

#[test]
fn other_formats_versions_and_fields_are_refused_by_name() {
    let good = serde_json::to_value(doc(vec![key("aaaaaaaa", 1)], vec![], vec![])).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[field] = value;
        Document::parse(&v.to_string()).unwrap_err()
    };
    let err = with("format", "something-else".into());
    assert!(matches!(err, TransferError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("something-else"), "{err}");
    let err = with("version", 2.into());
    assert!(
        matches!(err, TransferError::UnsupportedVersion { found: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade cryptun"), "{err}");
    let err = with("quotas", serde_json::json!([]));
    assert!(err.to_string().contains("unknown field `quotas`"), "{err}");
    for text in [
        "[]",
        "not json",
        r#"{"version": 1}"#,
        r#"{"format":"cryptun-keys"}"#,
    ] {
        assert!(Document::parse(text).is_err(), "{text}");
    }
}

#[test]
fn entries_no_store_could_hold_are_refused() {
    let secret = Owner::Secret([1; 32]);
    let mut two_owners = hold("notes", &secret, NOW);
    two_owners.key_id = Some("aaaaaaaa".into());
    let mut no_owner = hold("notes", &secret, NOW);
    no_owner.secret_sha256 = None;
    let bad = [
        doc(vec![key("short", 1)], vec![], vec![]),
        doc(vec![key("AAAAAAAA", 1)], vec![], vec![]),
        doc(vec![key("aaaaaaaa", 1), key("aaaaaaaa", 2)], vec![], vec![]),
        doc(
            vec![KeyRecord {
                name: " x".into(),
                ..key("aaaaaaaa", 1)
            }],
            vec![],
            vec![],
        ),
        doc(
            vec![key("aaaaaaaa", 1)],
            vec![reservation("MyApp", "aaaaaaaa")],
            vec![],
        ),
        doc(
            vec![key("aaaaaaaa", 1)],
            vec![reservation("tunnel-abc", "aaaaaaaa")],
            vec![],
        ),
        doc(
            vec![key("aaaaaaaa", 1)],
            vec![reservation("app", "bbbbbbbb")],
            vec![],
        ),
        doc(vec![], vec![], vec![hold("a.b", &secret, NOW)]),
        doc(vec![], vec![], vec![two_owners]),
        doc(vec![], vec![], vec![no_owner]),
        doc(
            vec![],
            vec![],
            vec![hold("x", &secret, NOW), hold("x", &secret, NOW)],
        ),
    ];
    for document in bad {
        let text = serde_json::to_string(&document).unwrap();
        let err = Document::parse(&text).unwrap_err();
        assert!(matches!(err, TransferError::Invalid(_)), "{err}: {text}");
    }
}

#[test]
fn what_is_there_is_left_and_what_is_not_is_added() {
    let target = doc(
        vec![key("aaaaaaaa", 1)],
        vec![reservation("app", "aaaaaaaa")],
        vec![],
    );
    let incoming = doc(
        vec![key("aaaaaaaa", 1), key("bbbbbbbb", 2)],
        vec![
            reservation("app", "aaaaaaaa"),
            reservation("web", "bbbbbbbb"),
        ],
        vec![hold("notes", &Owner::Key("bbbbbbbb".into()), NOW + 1)],
    );
    let plan = plan(&target, &HashSet::new(), &incoming, false, NOW).unwrap();
    let actions: Vec<_> = plan.keys.iter().map(|(_, a)| *a).collect();
    assert_eq!(actions, [Action::Unchanged, Action::Add]);
    let summary = plan.summary();
    assert_eq!(
        (summary.reservations.added, summary.reservations.unchanged),
        (1, 1)
    );
    assert_eq!(summary.holds.added, 1);
    assert!(summary.changed());
    // Against itself: nothing to do.
    let again = super::plan(&incoming, &HashSet::new(), &incoming, false, NOW).unwrap();
    assert!(!again.summary().changed(), "{again:?}");
}

#[test]
fn a_revocation_is_carried_and_never_undone() {
    let live = key("aaaaaaaa", 1);
    let revoked = KeyRecord {
        revoked_at: Some(1_700_000_500),
        ..live.clone()
    };
    let none = HashSet::new();
    let carried = plan(
        &doc(vec![live.clone()], vec![], vec![]),
        &none,
        &doc(vec![revoked.clone()], vec![], vec![]),
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(carried.keys, [(revoked.clone(), Action::Revoke)]);
    // Revoked here, live in the document: stays revoked, replace or not.
    let target = doc(vec![revoked.clone()], vec![], vec![]);
    let kept = plan(
        &target,
        &none,
        &doc(vec![live.clone()], vec![], vec![]),
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(kept.keys, [(revoked.clone(), Action::Unchanged)]);
    let other_hash = key("aaaaaaaa", 7);
    let replaced = plan(
        &target,
        &none,
        &doc(vec![other_hash.clone()], vec![], vec![]),
        true,
        NOW,
    )
    .unwrap();
    assert_eq!(replaced.keys[0].0.revoked_at, revoked.revoked_at);
    assert_eq!(replaced.keys[0].0.token_sha256, other_hash.token_sha256);
}

#[test]
fn conflicts_are_named_and_replace_takes_the_documents() {
    let a = Owner::Key("aaaaaaaa".into());
    let b = Owner::Key("bbbbbbbb".into());
    let target = doc(
        vec![key("aaaaaaaa", 1), key("bbbbbbbb", 2)],
        vec![reservation("app", "aaaaaaaa")],
        vec![hold("notes", &a, NOW + 10), hold("live", &a, NOW + 10)],
    );
    let incoming = doc(
        vec![key("aaaaaaaa", 9), key("bbbbbbbb", 2)],
        vec![reservation("app", "bbbbbbbb")],
        vec![hold("notes", &b, NOW + 10), hold("live", &b, NOW + 10)],
    );
    let live: HashSet<String> = ["live".to_owned()].into();
    let conflicts = plan(&target, &live, &incoming, false, NOW).unwrap_err();
    assert_eq!(
        conflicts,
        [
            Conflict::KeyHash {
                id: "aaaaaaaa".into()
            },
            Conflict::Reserved {
                name: "app".into(),
                here: "aaaaaaaa".into(),
                document: "bbbbbbbb".into()
            },
            Conflict::Live {
                name: "live".into()
            },
            Conflict::Held {
                name: "notes".into()
            },
        ]
    );
    let message = TransferError::Conflicts(conflicts).to_string();
    assert!(
        message.contains("key aaaaaaaa has another token hash"),
        "{message}"
    );
    assert!(
        message.contains("app is reserved for key aaaaaaaa here, for key bbbbbbbb"),
        "{message}"
    );
    assert!(message.contains("--replace"), "{message}");
    // With replace, all but the live tunnel's name.
    let conflicts = plan(&target, &live, &incoming, true, NOW).unwrap_err();
    assert_eq!(
        conflicts,
        [Conflict::Live {
            name: "live".into()
        }]
    );
    let plan = plan(&target, &HashSet::new(), &incoming, true, NOW).unwrap();
    let summary = plan.summary();
    assert_eq!(
        (
            summary.keys.updated,
            summary.reservations.updated,
            summary.holds.updated
        ),
        (1, 1, 2)
    );
}

#[test]
fn a_hold_whose_time_is_up_is_not_written() {
    let owner = Owner::Secret([3; 32]);
    let incoming = doc(vec![], vec![], vec![hold("over", &owner, NOW)]);
    let plan = plan(
        &doc(vec![], vec![], vec![]),
        &HashSet::new(),
        &incoming,
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(plan.summary().holds.ended, 1);
    assert!(!plan.summary().changed());
}

#[test]
fn a_database_moves_whole_into_another_and_twice_changes_nothing() {
    let (from_dir, to_dir) = (TempDir::new(), TempDir::new());
    let from = Store::open(&from_dir.0).unwrap();
    let live = from.create_key("live").unwrap();
    let leaked = from.create_key("leaked").unwrap();
    from.reserve(&live.info.id, "myapp").unwrap();
    from.reserve(&leaked.info.id, "old").unwrap();
    from.revoke_key(&leaked.info.id).unwrap();
    let secret = Owner::Secret([5; 32]);
    let held = |name: &str, owner: Owner| SavedHold {
        name: name.into(),
        owner,
        left: Duration::from_secs(60),
    };
    // The revoked key's hold is not exported: nobody may take it back,
    // and written into a cluster it would keep the name from everyone.
    from.save_holds(&[
        held("notes", Owner::Key(live.info.id.clone())),
        held("tunnel-xyz", secret),
        held("gone", Owner::Key(leaked.info.id.clone())),
    ])
    .unwrap();
    let document = from.export().unwrap();
    assert_eq!(
        (
            document.keys.len(),
            document.reservations.len(),
            document.holds.len()
        ),
        (2, 2, 2)
    );
    assert!(document.holds.iter().all(|h| h.until_ms > now_ms()));

    let to = Store::open(&to_dir.0).unwrap();
    let summary = to.import(&document, false).unwrap();
    assert_eq!(
        (
            summary.keys.added,
            summary.reservations.added,
            summary.holds.added
        ),
        (2, 2, 2)
    );
    assert_eq!(to.export().unwrap(), document);
    assert_eq!(to.list_keys().unwrap(), from.list_keys().unwrap());
    // The tokens made in one open the other; the revoked one does not.
    assert_eq!(to.verify(&live.token).unwrap(), Some(live.info.id.clone()));
    assert_eq!(to.verify(&leaked.token).unwrap(), None);
    assert_eq!(
        to.reserved_for("old").unwrap(),
        Some(leaked.info.id.clone())
    );
    let again = to.import(&document, false).unwrap();
    assert!(!again.changed(), "{again:?}");
    assert_eq!(again.keys.unchanged, 2);
    let taken: Vec<_> = to
        .saved_holds()
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(taken.len(), 2, "{taken:?}");
}

#[test]
fn a_conflict_writes_nothing() {
    let dir = TempDir::new();
    let store = Store::open(&dir.0).unwrap();
    let a = store.create_key("a").unwrap().info.id;
    let b = store.create_key("b").unwrap().info.id;
    store.reserve(&a, "app").unwrap();
    let mut document = store.export().unwrap();
    document.reservations[0].key_id = b.clone();
    let other = Store::in_memory().unwrap();
    let c = other.create_key("c").unwrap();
    document.keys.push(KeyRecord {
        id: c.info.id.clone(),
        name: "c".into(),
        token_sha256: Sha256([0; 32]),
        created_at: 0,
        revoked_at: None,
    });
    let before = store.export().unwrap();
    let err = store.import(&document, false).unwrap_err();
    assert!(
        matches!(&err, TransferError::Conflicts(c) if c.len() == 1),
        "{err}"
    );
    assert_eq!(
        store.export().unwrap(),
        before,
        "the new key was not written either"
    );
    store.import(&document, true).unwrap();
    assert_eq!(store.reserved_for("app").unwrap(), Some(b));
    assert!(matches!(
        store.revoke_key(&c.info.id),
        Ok(()) | Err(StoreError::Revoked(_))
    ));
}
