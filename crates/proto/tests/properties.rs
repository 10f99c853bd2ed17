//! Property tests of everything in this crate that reads a peer's bytes:
//! control messages, binary frames, header lists, CIDR blocks and tunnel
//! names. Each decoder is fed arbitrary input (it never panics, and refuses
//! with a typed error) and valid values drawn from strategies (they read
//! back as what was written).
//!
//! `cargo test` runs proptest's default number of cases; a long run sets
//! `PROPTEST_CASES` (see docs/SECURITY.md, "Property tests and fuzzing").
//! A failing case is kept in `proptest-regressions/` and replayed first on
//! every later run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use cryptun_proto::capability::{Capabilities, Capability};
use cryptun_proto::frame::HEADER_LEN;
use cryptun_proto::head::{headers_from_wire, headers_to_wire};
use cryptun_proto::message::{
    self, BasicAuth, CreateTunnel, DecodeError, ErrorMessage, SessionLimits, TunnelCreated,
};
use cryptun_proto::net::Cidr;
use cryptun_proto::{
    ClientMessage, ErrorCode, Frame, FrameError, FrameKind, InlineBody, RequestHead, ResponseHead,
    Secret, ServerMessage, Subdomain, TunnelProtocol,
};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---- control messages: arbitrary input -------------------------------

mod json;
use json::{json_message, json_value};

/// The `type` of `text` if it is a JSON object whose `type` is a string.
fn tag_of(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("type")?.as_str().map(str::to_owned)
}

/// A refusal carries a code, and `unknown_type` only for an object whose
/// `type` is a string the decoder does not know.
fn check_refusal(text: &str, err: &DecodeError, known: &[&str]) -> Result<(), TestCaseError> {
    match err {
        DecodeError::UnknownType(tag) => {
            prop_assert_eq!(err.code(), ErrorCode::UnknownType);
            prop_assert!(!known.contains(&tag.as_str()), "{tag} is known");
            if let Some(parsed) = tag_of(text) {
                prop_assert_eq!(&parsed, tag);
            }
        }
        DecodeError::Malformed(_) => prop_assert_eq!(err.code(), ErrorCode::BadMessage),
        // Only a `response` whose id reads: its request fails, not the session.
        DecodeError::BadResponse { request_id, .. } => {
            prop_assert_eq!(err.code(), ErrorCode::BadResponse);
            let tag = tag_of(text);
            prop_assert_eq!(tag.as_deref(), Some("response"));
            prop_assert_eq!(err.request_id(), Some(*request_id));
        }
    }
    Ok(())
}

fn check_decoders(text: &str) -> Result<(), TestCaseError> {
    match ClientMessage::decode(text) {
        Ok(msg) => {
            // What was accepted is a message of the type it said it was.
            prop_assert!(
                text.trim_start().starts_with('{'),
                "not an object: {}",
                text
            );
            let again = ClientMessage::decode(&message::encode(&msg));
            prop_assert_eq!(again.ok(), Some(msg));
        }
        Err(err) => check_refusal(text, &err, message::CLIENT_TYPES)?,
    }
    match ServerMessage::decode(text) {
        Ok(msg) => {
            prop_assert!(
                text.trim_start().starts_with('{'),
                "not an object: {}",
                text
            );
            let again = ServerMessage::decode(&message::encode(&msg));
            prop_assert_eq!(again.ok(), Some(msg));
        }
        Err(err) => check_refusal(text, &err, message::SERVER_TYPES)?,
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_decoded_or_refused_with_a_code(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decoders(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_strings_are_decoded_or_refused_with_a_code(text in ".{0,200}") {
        check_decoders(&text)?;
    }

    #[test]
    fn arbitrary_json_is_decoded_or_refused_with_a_code(text in json_message()) {
        check_decoders(&text)?;
    }

    #[test]
    fn any_json_value_is_decoded_or_refused_with_a_code(value in json_value()) {
        check_decoders(&value.to_string())?;
    }

    /// A valid message cut anywhere is refused, never half-read.
    #[test]
    fn truncated_messages_are_refused(msg in client_message(), cut in any::<prop::sample::Index>()) {
        let text = message::encode(&msg);
        let cut = cut.index(text.len());
        if let Some(prefix) = text.get(..cut) {
            prop_assert!(ClientMessage::decode(prefix).is_err(), "{prefix}");
        }
    }
}

// ---- control messages: valid ones read back --------------------------

fn text() -> impl Strategy<Value = String> {
    ".{0,16}"
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..6)
}

fn inline_body() -> impl Strategy<Value = InlineBody> {
    prop_oneof![
        Just(InlineBody::default()),
        Just(InlineBody::streamed()),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| InlineBody::inline(&b)),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            any::<bool>()
        )
            .prop_map(|(body, body_encoding, body_stream)| InlineBody {
                body,
                body_encoding,
                body_stream,
                raw: None,
            }),
    ]
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    prop::sample::subsequence(Capability::ALL.to_vec(), 0..=Capability::ALL.len())
        .prop_map(|list| list.into_iter().collect())
}

fn create_tunnel() -> impl Strategy<Value = CreateTunnel> {
    (
        (
            prop::option::of(any::<u32>()),
            prop::option::of(text()),
            any::<bool>(),
            capabilities(),
            prop::option::of(any::<u64>()),
        ),
        (
            prop::option::of(text().prop_map(Secret::new)),
            prop::option::of(text().prop_map(Secret::new)),
            prop::option::of(
                (text(), text()).prop_map(|(username, password)| BasicAuth { username, password }),
            ),
            prop::collection::vec(text(), 0..3),
            prop::collection::vec(text(), 0..3),
            prop::option::of(any::<u64>()),
        ),
        (
            any::<bool>(),
            prop::option::of(text().prop_map(Secret::new)),
        ),
    )
        .prop_map(
            |(
                (version, subdomain, binary_streams, capabilities, request_timeout_ms),
                (token, reconnect_secret, basic_auth, allow_ips, deny_ips, max_body_size),
                (pool, pool_secret),
            )| CreateTunnel {
                version,
                subdomain,
                binary_streams,
                capabilities,
                request_timeout_ms,
                token,
                reconnect_secret,
                basic_auth,
                allow_ips,
                deny_ips,
                max_body_size,
                protocol: cryptun_proto::TunnelProtocol::Http,
                remote_port: None,
                pool,
                pool_secret,
            },
        )
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        create_tunnel().prop_map(ClientMessage::CreateTunnel),
        (any::<u32>(), any::<u16>(), headers(), inline_body()).prop_map(
            |(request_id, status, headers, body)| ClientMessage::Response {
                request_id,
                response: ResponseHead {
                    status,
                    headers,
                    body
                },
            }
        ),
        (any::<u32>(), cancel_reason())
            .prop_map(|(request_id, reason)| ClientMessage::Cancel { request_id, reason }),
        Just(ClientMessage::Ping),
        Just(ClientMessage::Pong),
    ]
}

fn cancel_reason() -> impl Strategy<Value = Option<cryptun_proto::CancelReason>> {
    prop::option::of(prop::sample::select(
        cryptun_proto::CancelReason::ALL.to_vec(),
    ))
}

fn session_limits() -> impl Strategy<Value = SessionLimits> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(a, b, stream_window, c, d, heartbeat_interval_ms)| SessionLimits {
                max_message_bytes: a as usize,
                max_frame_payload: b as usize,
                stream_window,
                max_inline_body: c as usize,
                max_streams: d as usize,
                heartbeat_interval_ms,
            },
        )
}

fn tunnel_created() -> impl Strategy<Value = TunnelCreated> {
    (
        (any::<u32>(), text(), text(), text(), any::<bool>()),
        (
            any::<u64>(),
            session_limits(),
            prop::option::of(text().prop_map(Secret::new)),
            prop::option::of(any::<u64>()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (version, tunnel_id, subdomain, public_url, binary_streams),
                (request_timeout_ms, limits, reconnect_secret, max_body_size, pool),
            )| TunnelCreated {
                version,
                tunnel_id,
                subdomain,
                public_url,
                binary_streams,
                capabilities: Default::default(),
                request_timeout_ms,
                limits,
                reconnect_secret,
                max_body_size,
                protocol: TunnelProtocol::Http,
                remote_port: None,
                pool,
            },
        )
        .prop_flat_map(|created| {
            // Some are TCP tunnels, with their port.
            prop_oneof![
                Just(created.clone()),
                (1u16..).prop_map(move |port| TunnelCreated {
                    protocol: TunnelProtocol::Tcp,
                    remote_port: Some(port),
                    ..created.clone()
                }),
            ]
        })
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        tunnel_created().prop_map(ServerMessage::TunnelCreated),
        (
            any::<u32>(),
            text(),
            text(),
            text(),
            headers(),
            inline_body()
        )
            .prop_map(|(request_id, tunnel_id, method, path, headers, body)| {
                ServerMessage::Request {
                    request_id,
                    tunnel_id,
                    request: RequestHead {
                        method,
                        path,
                        headers,
                        body,
                    },
                }
            }),
        (any::<u32>(), cancel_reason())
            .prop_map(|(request_id, reason)| ServerMessage::Cancel { request_id, reason }),
        Just(ServerMessage::Pong),
        (
            prop::sample::select(ErrorCode::ALL.to_vec()),
            text(),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(code, message, request_id, retry_after_ms)| {
                ServerMessage::Error(ErrorMessage {
                    code,
                    message,
                    request_id,
                    retry_after_ms,
                })
            }),
        any::<u64>().prop_map(|reconnect_after_ms| ServerMessage::GoingAway { reconnect_after_ms }),
    ]
}

/// `value` written with its `type` moved last (a hand-written peer's
/// order, which takes the decoders' slower path).
fn type_last(text: &str) -> String {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return text.to_owned();
    };
    let tag = map.remove("type").unwrap_or(Value::Null);
    let mut out = serde_json::to_string(&Value::Object(map)).unwrap_or_default();
    out.pop();
    if out.len() > 1 {
        out.push(',');
    }
    out.push_str(&format!(r#""type":{}}}"#, json!(tag)));
    out
}

proptest! {
    #[test]
    fn client_messages_read_back(msg in client_message()) {
        let text = message::encode(&msg);
        prop_assert_eq!(ClientMessage::decode(&text).ok(), Some(msg.clone()), "{}", text);
        prop_assert_eq!(ClientMessage::decode(&type_last(&text)).ok(), Some(msg.clone()));
        let generic: Result<ClientMessage, _> = message::decode(&text, message::CLIENT_TYPES);
        prop_assert_eq!(generic.ok(), Some(msg));
    }

    #[test]
    fn server_messages_read_back(msg in server_message()) {
        let text = message::encode(&msg);
        prop_assert_eq!(ServerMessage::decode(&text).ok(), Some(msg.clone()), "{}", text);
        prop_assert_eq!(ServerMessage::decode(&type_last(&text)).ok(), Some(msg.clone()));
        let generic: Result<ServerMessage, _> = message::decode(&text, message::SERVER_TYPES);
        prop_assert_eq!(generic.ok(), Some(msg));
    }

    #[test]
    fn inline_bodies_read_back(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(InlineBody::inline(&bytes).decode().ok(), Some(Bytes::from(bytes)));
    }

    #[test]
    fn any_inline_body_decodes_or_is_refused(body in inline_body()) {
        let _ = body.decode();
    }
}

// ---- binary frames -----------------------------------------------------

fn frame_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(FrameKind::ALL.to_vec())
}

proptest! {
    /// Decoding agrees with a reference reading of the table, and what is
    /// accepted encodes back to the same bytes.
    #[test]
    fn arbitrary_frames_match_the_table(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        max in 0usize..64,
    ) {
        let decoded = Frame::decode(Bytes::from(bytes.clone()), max);
        let expected = if bytes.len() < HEADER_LEN {
            Err(FrameError::Short(bytes.len()))
        } else if bytes[0] > 6 {
            Err(FrameError::UnknownKind(bytes[0]))
        } else if bytes.len() - HEADER_LEN > max && !(4..=6).contains(&bytes[0]) {
            Err(FrameError::TooLarge { len: bytes.len() - HEADER_LEN, max })
        } else if bytes[0] == 2 && bytes.len() != HEADER_LEN + 4 {
            Err(FrameError::BadWindow(bytes.len() - HEADER_LEN))
        } else {
            Ok(())
        };
        match decoded {
            Ok(frame) => {
                prop_assert_eq!(expected, Ok(()));
                let again = Frame::encode(frame.kind, frame.stream, &frame.payload);
                prop_assert_eq!(&again[..], &bytes[..]);
            }
            Err(err) => prop_assert_eq!(expected, Err(err)),
        }
    }

    #[test]
    fn valid_frames_read_back(
        kind in frame_kind(),
        stream in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        credit in any::<u32>(),
    ) {
        let payload = if kind == FrameKind::Window { credit.to_be_bytes().to_vec() } else { payload };
        let frame = Frame::decode(Frame::encode(kind, stream, &payload), 64).ok();
        let frame = frame.ok_or_else(|| TestCaseError::fail("refused"))?;
        prop_assert_eq!(frame.kind, kind);
        prop_assert_eq!(frame.stream, stream);
        prop_assert_eq!(&frame.payload[..], &payload[..]);
        if kind == FrameKind::Window {
            prop_assert_eq!(frame.credit(), credit);
            prop_assert_eq!(Frame::decode(Frame::window(stream, credit), 4).ok(), Some(frame));
        }
    }
}

// ---- header lists --------------------------------------------------------

/// Names and values that are mostly near-valid: tokens with a stray
/// control, space, colon or non-ASCII character now and then.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{0,12}",
        1 => "[ -~\t\r\n\0\u{80}-\u{ff}é€]{0,12}",
        1 => ".{0,12}",
    ]
}

proptest! {
    /// Arbitrary lists are converted or refused; what is converted holds
    /// every line, within the limits, and reads back as written (names
    /// lowercased), for values whose characters are all Latin-1.
    #[test]
    fn header_lists_convert_or_are_refused(
        list in prop::collection::vec((header_text(), header_text()), 0..12),
        max_count in 0usize..16,
        max_bytes in 0usize..256,
    ) {
        let Ok(map) = headers_from_wire(&list, max_count, max_bytes) else {
            return Ok(());
        };
        prop_assert!(list.len() <= max_count);
        prop_assert!(list.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= max_bytes);
        prop_assert_eq!(map.len(), list.len());
        if list.iter().all(|(_, v)| v.chars().all(|c| u32::from(c) <= 0xFF)) {
            let mut want: Vec<(String, String)> = list
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            let mut got = headers_to_wire(&map);
            // A map groups repeated names; their order among themselves holds.
            want.sort_by(|a, b| a.0.cmp(&b.0));
            got.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(got, want);
        }
    }

    /// Any header map crosses the wire unchanged (any byte of a value).
    #[test]
    fn header_maps_read_back(
        list in prop::collection::vec(
            ("[a-z0-9-]{1,12}", prop::collection::vec(any::<u8>(), 0..16)),
            0..8,
        ),
    ) {
        let mut map = http::HeaderMap::new();
        for (name, value) in &list {
            let Ok(value) = http::HeaderValue::from_bytes(value) else { continue };
            let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else { continue };
            map.append(name, value);
        }
        let wire = headers_to_wire(&map);
        let back = headers_from_wire(&wire, usize::MAX, usize::MAX);
        prop_assert_eq!(back.ok(), Some(map));
    }
}

// ---- CIDR blocks -----------------------------------------------------------

/// An address as bits, with its family's width.
fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// Whether the first `prefix` bits of `a` and `b` agree, computed
/// directly.
fn same_prefix(a: u128, b: u128, prefix: u32, width: u32) -> bool {
    (0..prefix).all(|i| {
        let bit = width - 1 - i;
        (a >> bit) & 1 == (b >> bit) & 1
    })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
    ]
}

/// Strings near the shape of a CIDR block.
fn cidr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (ip(), "/?[0-9+ -]{0,4}").prop_map(|(ip, suffix)| format!("{ip}{suffix}")),
        (ip(), 0u32..140).prop_map(|(ip, p)| format!("{ip}/{p}")),
        "[0-9a-fA-F:./]{0,24}",
        ".{0,24}",
    ]
}

proptest! {
    /// Parsing never panics; what parses prints as a block that parses
    /// back to itself, and prints the same again.
    #[test]
    fn cidrs_parse_and_print_back(text in cidr_text()) {
        if let Ok(cidr) = text.parse::<Cidr>() {
            let shown = cidr.to_string();
            prop_assert_eq!(shown.parse::<Cidr>().ok(), Some(cidr), "{} -> {}", text, shown);
            prop_assert_eq!(shown.parse::<Cidr>().map(|c| c.to_string()).ok(), Some(shown));
        }
    }

    /// `contains` agrees with comparing the prefix bit by bit, the IPv4-mapped
    /// addresses and rules taken as IPv4.
    #[test]
    fn contains_agrees_with_a_bitwise_reference(
        rule in ip(),
        prefix in 0u32..=128,
        near in any::<u128>(),
        probe in ip(),
        use_near in any::<bool>(),
    ) {
        let (_, width) = bits(rule);
        let prefix = prefix.min(width);
        let Ok(cidr) = format!("{rule}/{prefix}").parse::<Cidr>() else {
            return Err(TestCaseError::fail(format!("{rule}/{prefix} refused")));
        };
        // The rule and the probe, IPv4-mapped ones as IPv4.
        let (rule_bits, rule_width, rule_prefix) = match rule {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (u128::from(v6) & 0xFFFF_FFFF, 32, prefix - 96)
            }
            _ => (bits(rule).0, width, prefix),
        };
        let probe = if use_near {
            // An address sharing the rule's prefix, with random host bits
            // (so inside it): `contains` is true often enough to test.
            let host_bits = rule_width - rule_prefix;
            let host_mask = match host_bits {
                0 => 0,
                128 => u128::MAX,
                n => (1u128 << n) - 1,
            };
            let addr = (rule_bits & !host_mask) | (near & host_mask);
            if rule_width == 32 {
                IpAddr::V4(Ipv4Addr::from(addr as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(addr))
            }
        } else {
            probe
        };
        let (probe_bits, probe_width) = match probe {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u128::from(u32::from(v4)), 32),
                None => (u128::from(v6), 128),
            },
            v4 => bits(v4),
        };
        let expected = probe_width == rule_width
            && same_prefix(probe_bits, rule_bits, rule_prefix, rule_width);
        prop_assert_eq!(cidr.contains(probe), expected, "{} contains {}", cidr, probe);
        // An IPv6 rule's block may hold IPv4-mapped addresses (`::/0`
        // does), but those count as IPv4 peers, which no IPv6 rule holds.
        if use_near && probe_width == rule_width {
            prop_assert!(expected, "{} should hold {}", cidr, probe);
        }
    }
}

// ---- tunnel names ----------------------------------------------------------

proptest! {
    /// Names are accepted exactly when they are one DNS label, and kept
    /// lowercase.
    #[test]
    fn subdomains_are_lowercase_dns_labels(
        name in prop_oneof!["[a-zA-Z0-9-]{0,70}", "[a-zA-Z0-9._ -]{0,10}", ".{0,10}"],
    ) {
        let label = name.len() <= 63
            && !name.is_empty()
            && !name.starts_with('-')
            && !name.ends_with('-')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match Subdomain::parse(&name) {
            Ok(parsed) => {
                prop_assert!(label, "{:?} accepted", name);
                prop_assert_eq!(parsed.as_str(), name.to_ascii_lowercase());
                prop_assert!(!parsed.as_str().bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert_eq!(Subdomain::parse(parsed.as_str()).ok(), Some(parsed.clone()));
            }
            Err(_) => prop_assert!(!label, "{:?} refused", name),
        }
    }
}
