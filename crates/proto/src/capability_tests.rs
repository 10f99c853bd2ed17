//! Tests of [`super`]: names, sets, negotiation and hostile lists.

use super::*;

fn decode(json: &str) -> Result<Capabilities, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn every_name_reads_back_and_names_are_distinct() {
    for c in Capability::ALL {
        assert_eq!(Capability::from_wire_name(c.wire_name()), Some(c));
        assert!(c.wire_name().len() <= MAX_CAPABILITY_NAME);
    }
    let set: Capabilities = Capability::ALL.into_iter().collect();
    assert_eq!(set.iter().count(), Capability::ALL.len());
    assert_eq!(Capability::from_wire_name("teleport"), None);
}

#[test]
fn this_build_supports_exactly_the_current_capabilities() {
    for c in Capability::ALL {
        let current = matches!(c.status(), Status::Current { .. });
        assert_eq!(Capabilities::SUPPORTED.contains(c), current, "{c}");
    }
}

#[test]
fn the_server_accepts_what_both_speak() {
    let heads = Capabilities::of(&[Capability::BinaryStreams, Capability::BinaryHeads]);
    let streams = Capabilities::of(&[Capability::BinaryStreams]);
    assert_eq!(negotiate(heads, streams), streams);
    assert_eq!(negotiate(streams, heads), streams);
    // A client that states nothing gets nothing: the seed's protocol.
    assert_eq!(negotiate(Capabilities::NONE, heads), Capabilities::NONE);
    // A server that supports nothing (JSON only) accepts nothing.
    assert_eq!(negotiate(heads, Capabilities::NONE), Capabilities::NONE);
    // Reserved capabilities offered today are not accepted by this build.
    let all: Capabilities = Capability::ALL.into_iter().collect();
    let current = heads
        .with(Capability::CloseTunnel)
        .with(Capability::RawStreams)
        .with(Capability::Pools)
        .with(Capability::Trailers);
    assert_eq!(negotiate(all, Capabilities::SUPPORTED), current);
    // Binary heads, raw streams and trailers are binary frames: never
    // without binary streams.
    let without_streams = Capabilities::of(&[
        Capability::BinaryHeads,
        Capability::RawStreams,
        Capability::Trailers,
        Capability::CloseTunnel,
    ]);
    assert_eq!(
        negotiate(without_streams, Capabilities::SUPPORTED),
        Capabilities::of(&[Capability::CloseTunnel])
    );
}

#[test]
fn sets_travel_as_lists_of_names_and_unknown_names_are_dropped() {
    let set = Capabilities::of(&[Capability::Trailers, Capability::BinaryStreams]);
    let text = serde_json::to_string(&set).unwrap();
    assert_eq!(text, r#"["binary_streams","trailers"]"#);
    assert_eq!(decode(&text).unwrap(), set);
    assert_eq!(
        decode(r#"["teleport","binary_streams","binary_streams","x"]"#).unwrap(),
        Capabilities::of(&[Capability::BinaryStreams])
    );
    assert_eq!(decode("[]").unwrap(), Capabilities::NONE);
    // Escaped names are names too.
    assert_eq!(
        decode(r#"["binary\u005fstreams"]"#).unwrap(),
        Capabilities::of(&[Capability::BinaryStreams])
    );
    assert_eq!(format!("{set:?}"), "{BinaryStreams, Trailers}");
}

#[test]
fn hostile_lists_are_refused() {
    let names = |n: usize| format!("[{}]", vec![r#""x""#; n].join(","));
    assert!(decode(&names(MAX_CAPABILITIES)).is_ok());
    assert!(decode(&names(MAX_CAPABILITIES + 1)).is_err());
    let long = |n: usize| format!(r#"["{}"]"#, "a".repeat(n));
    assert!(decode(&long(MAX_CAPABILITY_NAME)).is_ok());
    assert!(decode(&long(MAX_CAPABILITY_NAME + 1)).is_err());
    for shape in [
        r#""binary_streams""#,
        "[1]",
        r#"[["binary_streams"]]"#,
        "null",
        "{}",
    ] {
        assert!(decode(shape).is_err(), "{shape}");
    }
}
