//! Tests of [`super`]: heads on the wire and their conversions.

use super::*;

#[test]
fn any_header_bytes_round_trip() {
    let mut map = HeaderMap::new();
    map.append("x-a", HeaderValue::from_static("one"));
    map.append("x-bin", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
    map.append(
        "x-utf8",
        HeaderValue::from_bytes("naïve".as_bytes()).unwrap(),
    );
    map.append("x-a", HeaderValue::from_static("two"));
    let wire = headers_to_wire(&map);
    let json = serde_json::to_string(&wire).unwrap();
    let back: Vec<(String, String)> = serde_json::from_str(&json).unwrap();
    assert_eq!(headers_from_wire(&back, 100, 1 << 16).unwrap(), map);
}

#[test]
fn control_characters_are_refused() {
    for bad in ["a\r\nb", "a\nb", "a\0b"] {
        let list = vec![("x-evil".to_owned(), bad.to_owned())];
        assert!(matches!(
            headers_from_wire(&list, 100, 1 << 16),
            Err(HeadError::Header(_))
        ));
    }
    let list = vec![("bad name".to_owned(), "v".to_owned())];
    assert!(headers_from_wire(&list, 100, 1 << 16).is_err());
}

#[test]
fn header_limits() {
    let list: Vec<_> = (0..11)
        .map(|i| (format!("x-{i}"), "v".to_owned()))
        .collect();
    assert!(matches!(
        headers_from_wire(&list, 10, 1 << 16),
        Err(HeadError::TooLarge { .. })
    ));
    assert!(headers_from_wire(&list[..10], 10, 1 << 16).is_ok());
}

#[test]
fn seed_style_response_with_map_and_text_body() {
    let head: ResponseHead = serde_json::from_str(
        r#"{"status":200,"headers":{"content-type":"text/plain"},"body":"hi"}"#,
    )
    .unwrap();
    assert_eq!(
        head.headers,
        vec![("content-type".into(), "text/plain".into())]
    );
    assert_eq!(head.body.decode().unwrap(), Bytes::from_static(b"hi"));
}

#[test]
fn upgrade_needs_both_headers() {
    let mut map = HeaderMap::new();
    map.insert("upgrade", HeaderValue::from_static("websocket"));
    assert_eq!(upgrade_protocol(&map), None);
    map.insert(
        "connection",
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    assert_eq!(
        upgrade_protocol(&map),
        Some(HeaderValue::from_static("websocket"))
    );
    keep_upgrade(&mut map, HeaderValue::from_static("websocket"));
    assert_eq!(map["connection"], "upgrade");
    assert_eq!(map["upgrade"], "websocket");
}

#[test]
fn hop_by_hop_and_connection_named_headers_go() {
    let mut map = HeaderMap::new();
    map.insert("connection", HeaderValue::from_static("close, x-secret"));
    map.insert("x-secret", HeaderValue::from_static("1"));
    map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    map.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    map.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut map);
    assert_eq!(map.len(), 1);
    assert!(map.contains_key("x-kept"));
}

#[test]
fn a_head_with_more_headers_than_the_wire_allows_is_refused_as_it_is_read() {
    let list = |n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!(r#"["x-{i}","v"]"#)).collect();
        format!("[{}]", pairs.join(","))
    };
    let object = |n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!(r#""x-{i}":"v""#)).collect();
        format!("{{{}}}", pairs.join(","))
    };
    for headers in [list, object] {
        let response = |n| {
            format!(
                r#"{{"type":"response","request_id":1,"response":{{"status":200,"headers":{}}}}}"#,
                headers(n)
            )
        };
        let at_most = crate::ClientMessage::decode(&response(MAX_WIRE_HEADERS));
        assert!(at_most.is_ok(), "{at_most:?}");
        let over = crate::ClientMessage::decode(&response(MAX_WIRE_HEADERS + 1)).unwrap_err();
        assert!(over.to_string().contains("at most 1024 headers"), "{over}");
        // The type not first (found by a first pass) refuses it the same way.
        let late_type = format!(
            r#"{{"request_id":1,"response":{{"status":200,"headers":{}}},"type":"response"}}"#,
            headers(MAX_WIRE_HEADERS + 1)
        );
        let over = crate::ClientMessage::decode(&late_type).unwrap_err();
        assert!(over.to_string().contains("at most 1024 headers"), "{over}");
    }
}

#[test]
fn header_values_in_an_object_are_scalars() {
    let head: ResponseHead = serde_json::from_str(
        r#"{"status":200,"headers":{"a":"s","b":2,"c":-3,"d":1.5,"e":true,"f":null}}"#,
    )
    .unwrap();
    let values: Vec<&str> = head.headers.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["s", "2", "-3", "1.5", "true", "null"]);
    for nested in [r#"[1,2]"#, r#"{"x":"y"}"#] {
        let text = format!(r#"{{"status":200,"headers":{{"a":{nested}}}}}"#);
        let err = serde_json::from_str::<ResponseHead>(&text).unwrap_err();
        assert!(err.to_string().contains("a header value"), "{err}");
    }
}

#[test]
fn a_raw_body_goes_into_json_as_base64_and_reads_back() {
    let head = ResponseHead {
        status: 200,
        headers: vec![],
        body: InlineBody::raw(Bytes::from_static(&[0, 0xff, b'a'])),
    };
    let json = serde_json::to_value(&head).unwrap();
    assert_eq!(json["body"], "AP9h");
    assert_eq!(json["body_encoding"], "base64");
    assert!(json.get("body_stream").is_none(), "{json}");
    let read: ResponseHead = serde_json::from_value(json).unwrap();
    assert_eq!(read.body.decode().unwrap(), &[0, 0xff, b'a'][..]);
    // An empty one writes no body at all, as an empty inline one does.
    let empty = ResponseHead {
        body: InlineBody::raw(Bytes::new()),
        ..head
    };
    assert_eq!(
        serde_json::to_value(&empty).unwrap(),
        serde_json::json!({"status": 200, "headers": []})
    );
}

/// `forwardable_to_wire` keeps what stripping keeps, in one pass, and in
/// the order received (stripping a `HeaderMap` moves its last header into
/// each removed one's place): checked on maps built from hop-by-hop names,
/// names that `Connection` lists (in any case, with spaces), dropped names,
/// repeats and ordinary headers, in many orders.
#[test]
fn one_pass_forwarding_lists_what_stripping_then_converting_does() {
    let lines: [(&str, &str); 10] = [
        ("connection", "close, X-Secret , upgrade"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("x-kept", "a"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-kept", "b\u{e9}"),
        ("te", "trailers"),
        ("host", "demo.localhost"),
        ("connection", "x-other"),
    ];
    for start in 0..lines.len() {
        for len in 0..=lines.len() - start {
            let mut map = HeaderMap::new();
            for (name, value) in lines[start..start + len].iter().rev().chain(&lines) {
                let value = HeaderValue::from_bytes(&string_to_latin1(value)).unwrap();
                map.append(HeaderName::from_static(name), value);
            }
            let drop = ["x-forwarded-for"];
            let mut stripped = map.clone();
            strip_hop_by_hop(&mut stripped);
            stripped.remove("x-forwarded-for");
            let kept: Vec<(String, String)> = headers_to_wire(&map)
                .into_iter()
                .filter(|(name, _)| stripped.contains_key(name.as_str()))
                .collect();
            assert_eq!(forwardable_to_wire(&map, &drop), kept, "{map:?}");
            assert_eq!(kept.len(), stripped.len(), "{map:?}");
        }
    }
}

#[test]
fn te_says_whether_trailers_are_taken_and_trailer_travels_end_to_end() {
    let map = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    };
    assert!(accepts_trailers(&map(&[("te", "trailers")])));
    assert!(accepts_trailers(&map(&[("te", "gzip;q=0.5, Trailers")])));
    assert!(accepts_trailers(&map(&[
        ("te", "gzip"),
        ("te", "trailers")
    ])));
    assert!(!accepts_trailers(&map(&[("te", "gzip")])));
    assert!(!accepts_trailers(&map(&[("te", "trailersx")])));
    assert!(!accepts_trailers(&map(&[])));
    let mut announced = map(&[("trailer", "grpc-status"), ("te", "trailers")]);
    strip_hop_by_hop(&mut announced);
    assert_eq!(announced.len(), 1);
    assert_eq!(announced["trailer"], "grpc-status");
}
