//! Tests of [`super`]: messages as the seed and our peers write them.

use super::*;

#[test]
fn seed_create_tunnel_parses_with_defaults() {
    let msg: ClientMessage = decode(r#"{"type":"create_tunnel"}"#, CLIENT_TYPES).unwrap();
    assert_eq!(msg, ClientMessage::CreateTunnel(CreateTunnel::default()));
}

#[test]
fn unknown_type_is_told_apart_from_garbage() {
    let unknown = decode::<ClientMessage>(r#"{"type":"teleport"}"#, CLIENT_TYPES);
    assert!(matches!(unknown, Err(DecodeError::UnknownType(t)) if t == "teleport"));
    let garbage = decode::<ClientMessage>("{not json", CLIENT_TYPES);
    assert!(matches!(garbage, Err(DecodeError::Malformed(_))));
    let bad_field =
        decode::<ClientMessage>(r#"{"type":"response","request_id":"x"}"#, CLIENT_TYPES);
    assert!(matches!(bad_field, Err(DecodeError::Malformed(_))));
}

#[test]
fn create_tunnel_carries_secrets_that_debug_hides() {
    let text = r#"{"type":"create_tunnel","subdomain":"app","token":"ck_abcdefgh_s3cr3t","reconnect_secret":"r3c0nn3ct"}"#;
    let msg: ClientMessage = decode(text, CLIENT_TYPES).unwrap();
    let ClientMessage::CreateTunnel(create) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(
        create.token.as_ref().unwrap().expose(),
        "ck_abcdefgh_s3cr3t"
    );
    assert_eq!(
        create.reconnect_secret.as_ref().unwrap().expose(),
        "r3c0nn3ct"
    );
    let shown = format!("{msg:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("r3c0nn3ct"),
        "{shown}"
    );
    // And back: the fields travel as plain strings.
    assert!(encode(&msg).contains(r#""token":"ck_abcdefgh_s3cr3t""#));
}

#[test]
fn access_fields_round_trip_and_hide_the_password() {
    let text = r#"{"type":"create_tunnel","basic_auth":{"username":"u","password":"s3cret"},"allow_ips":["10.0.0.0/8"],"deny_ips":["10.0.0.7"],"max_body_size":1000}"#;
    let ClientMessage::CreateTunnel(create) = decode(text, CLIENT_TYPES).unwrap() else {
        panic!("not create_tunnel");
    };
    assert_eq!(create.allow_ips, ["10.0.0.0/8"]);
    assert_eq!(create.deny_ips, ["10.0.0.7"]);
    assert_eq!(create.max_body_size, Some(1000));
    let shown = format!("{create:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(create.basic_auth.as_ref().unwrap().password, "s3cret");
    let again: ClientMessage = decode(
        &encode(&ClientMessage::CreateTunnel(create.clone())),
        CLIENT_TYPES,
    )
    .unwrap();
    assert_eq!(again, ClientMessage::CreateTunnel(create));
    let error = encode(&ServerMessage::error(ErrorCode::InvalidCidr, "x", None));
    assert!(error.contains(r#""code":"invalid_cidr""#), "{error}");
}

#[test]
fn going_away_shape() {
    let text = encode(&ServerMessage::GoingAway {
        reconnect_after_ms: 1000,
    });
    assert_eq!(text, r#"{"type":"going_away","reconnect_after_ms":1000}"#);
    let back: ServerMessage = decode(&text, SERVER_TYPES).unwrap();
    assert!(matches!(
        back,
        ServerMessage::GoingAway {
            reconnect_after_ms: 1000
        }
    ));
}

#[test]
fn error_message_shape() {
    let text = encode(&ServerMessage::error(
        ErrorCode::SubdomainTaken,
        "taken",
        None,
    ));
    assert_eq!(
        text,
        r#"{"type":"error","code":"subdomain_taken","message":"taken"}"#
    );
}

/// A request head with every field a head can carry.
fn full_request() -> ServerMessage {
    ServerMessage::Request {
        request_id: 7,
        tunnel_id: "abcdefghij".into(),
        request: RequestHead {
            method: "POST".into(),
            path: "/a?b=c".into(),
            headers: vec![
                ("host".into(), "tunnel-abcdefghij.localhost:4000".into()),
                ("x-twice".into(), "1".into()),
                ("x-twice".into(), "2".into()),
            ],
            body: crate::InlineBody::inline(b"\x00body"),
        },
    }
}

#[test]
fn requests_and_responses_as_we_write_them_read_back_the_same_both_ways() {
    let request = full_request();
    let text = encode(&request);
    assert!(text.starts_with(r#"{"type":"request","#), "{text}");
    assert_eq!(ServerMessage::decode(&text).unwrap(), request);
    assert_eq!(
        decode::<ServerMessage>(&text, SERVER_TYPES).unwrap(),
        request
    );

    let response = ClientMessage::Response {
        request_id: 7,
        response: ResponseHead {
            status: 201,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: crate::InlineBody::streamed(),
        },
    };
    let text = encode(&response);
    assert!(text.starts_with(r#"{"type":"response","#), "{text}");
    assert_eq!(ClientMessage::decode(&text).unwrap(), response);
    assert_eq!(
        decode::<ClientMessage>(&text, CLIENT_TYPES).unwrap(),
        response
    );
}

#[test]
fn a_tag_written_last_is_found_and_a_bad_field_is_malformed() {
    let late = r#"{"request_id":3,"response":{"status":204},"type":"response"}"#;
    assert!(matches!(
        ClientMessage::decode(late).unwrap(),
        ClientMessage::Response { request_id: 3, response } if response.status == 204
    ));
    let bad = r#"{"type":"response","request_id":"three","response":{"status":204}}"#;
    assert!(matches!(
        ClientMessage::decode(bad),
        Err(DecodeError::Malformed(_))
    ));
    let twice = r#"{"type":"response","type":"ping","request_id":3,"response":{"status":204}}"#;
    assert!(matches!(
        ClientMessage::decode(twice),
        Err(DecodeError::Malformed(_))
    ));
    let other = r#"{"type":"ping"}"#;
    assert_eq!(ClientMessage::decode(other).unwrap(), ClientMessage::Ping);
    let unknown = r#"{"type":"teleport","request_id":1}"#;
    assert!(matches!(
        ServerMessage::decode(unknown),
        Err(DecodeError::UnknownType(t)) if t == "teleport"
    ));
}

#[test]
fn headers_as_an_object_keep_their_order_repeats_and_non_string_values() {
    let want: Vec<(String, String)> = [("x-b", "1"), ("x-a", "2"), ("x-b", "3")]
        .iter()
        .map(|(n, v)| ((*n).into(), (*v).into()))
        .collect();
    let head = r#"{"status":200,"headers":{"x-b":"1","x-a":2,"x-b":"3"}}"#;
    // Tag first (read in one pass) and tag last (the tag found first).
    for text in [
        format!(r#"{{"type":"response","request_id":1,"response":{head}}}"#),
        format!(r#"{{"request_id":1,"response":{head},"type":"response"}}"#),
    ] {
        let ClientMessage::Response { response, .. } = ClientMessage::decode(&text).unwrap() else {
            panic!("not a response: {text}");
        };
        assert_eq!(response.headers, want, "{text}");
    }
}

#[test]
fn every_message_decodes_as_serde_s_tagged_enum_would_read_it() {
    let head = ResponseHead {
        status: 200,
        headers: vec![("x-a".into(), "1".into())],
        body: crate::InlineBody::streamed(),
    };
    let clients = [
        ClientMessage::CreateTunnel(CreateTunnel::default()),
        ClientMessage::CreateTunnel(CreateTunnel {
            version: Some(1),
            subdomain: Some("app".into()),
            binary_streams: true,
            capabilities: crate::Capabilities::of(&[
                crate::Capability::BinaryStreams,
                crate::Capability::Trailers,
            ]),
            request_timeout_ms: Some(5000),
            token: Some(crate::Secret::new("ck_abc_def")),
            reconnect_secret: Some(crate::Secret::new("r3c")),
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                password: "p".into(),
            }),
            allow_ips: vec!["10.0.0.0/8".into()],
            deny_ips: vec!["10.0.0.7".into()],
            max_body_size: Some(1000),
            protocol: crate::TunnelProtocol::Tcp,
            remote_port: Some(2222),
            pool: true,
            pool_secret: Some(crate::Secret::new("pool-secret-0123456789")),
        }),
        ClientMessage::CreateTunnel(CreateTunnel {
            capabilities: crate::Capabilities::of(&[crate::Capability::BinaryStreams]),
            ..CreateTunnel::default()
        }),
        ClientMessage::Response {
            request_id: 9,
            response: head,
        },
        ClientMessage::Cancel {
            request_id: 4,
            reason: None,
        },
        ClientMessage::Cancel {
            request_id: 5,
            reason: Some(crate::CancelReason::Shutdown),
        },
        ClientMessage::Ping,
        ClientMessage::Pong,
        ClientMessage::CloseTunnel {
            tunnel_id: "abc".into(),
        },
    ];
    let servers = [
        ServerMessage::TunnelCreated(TunnelCreated {
            version: 1,
            tunnel_id: "abc".into(),
            subdomain: "app".into(),
            public_url: "http://app.localhost".into(),
            binary_streams: true,
            capabilities: Default::default(),
            request_timeout_ms: 60_000,
            limits: crate::Limits::default().announce(std::time::Duration::from_secs(10)),
            reconnect_secret: Some(crate::Secret::new("r3c")),
            max_body_size: Some(1000),
            protocol: crate::TunnelProtocol::Http,
            remote_port: None,
            pool: false,
        }),
        ServerMessage::TunnelCreated(TunnelCreated {
            version: 1,
            tunnel_id: "abc".into(),
            subdomain: "app".into(),
            public_url: "http://app.localhost".into(),
            binary_streams: false,
            capabilities: Default::default(),
            request_timeout_ms: 60_000,
            limits: crate::Limits::default().announce(std::time::Duration::from_secs(10)),
            reconnect_secret: None,
            max_body_size: None,
            protocol: crate::TunnelProtocol::Tcp,
            remote_port: Some(20022),
            pool: false,
        }),
        ServerMessage::TunnelClosed {
            tunnel_id: "abc".into(),
        },
        ServerMessage::TunnelCreated(TunnelCreated {
            version: 1,
            tunnel_id: "abc".into(),
            subdomain: "app".into(),
            public_url: "http://app.localhost".into(),
            binary_streams: true,
            capabilities: crate::Capabilities::of(&[crate::Capability::CloseTunnel]),
            request_timeout_ms: 60_000,
            limits: crate::Limits::default().announce(std::time::Duration::from_secs(10)),
            reconnect_secret: None,
            max_body_size: None,
            protocol: crate::TunnelProtocol::Http,
            remote_port: None,
            pool: false,
        }),
        ServerMessage::Error(ErrorMessage {
            code: ErrorCode::SubdomainHeld,
            message: "held".into(),
            request_id: None,
            retry_after_ms: Some(12_000),
        }),
        ServerMessage::Error(ErrorMessage {
            code: ErrorCode::TooManyAttempts,
            message: "later".into(),
            request_id: None,
            retry_after_ms: Some(1500),
        }),
        ServerMessage::Request {
            request_id: 1,
            tunnel_id: "t".into(),
            request: RequestHead {
                method: "GET".into(),
                path: "/".into(),
                headers: vec![],
                body: crate::InlineBody::default(),
            },
        },
        ServerMessage::Cancel {
            request_id: 2,
            reason: None,
        },
        ServerMessage::Cancel {
            request_id: 3,
            reason: Some(crate::CancelReason::Timeout),
        },
        ServerMessage::Pong,
        ServerMessage::error(ErrorCode::NoTunnel, "no", Some(3)),
        ServerMessage::GoingAway {
            reconnect_after_ms: 500,
        },
    ];
    /// The same object with its `type` moved to the end.
    fn tag_last(text: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut map = value.as_object().unwrap().clone();
        let tag = map.remove("type").unwrap();
        let mut text = serde_json::to_string(&map).unwrap();
        text.pop();
        let sep = if map.is_empty() { "" } else { "," };
        format!(r#"{text}{sep}"type":{tag}}}"#)
    }
    for msg in clients {
        let text = encode(&msg);
        for text in [text.clone(), tag_last(&text)] {
            assert_eq!(ClientMessage::decode(&text).unwrap(), msg, "{text}");
            assert_eq!(decode::<ClientMessage>(&text, CLIENT_TYPES).unwrap(), msg);
        }
    }
    for msg in servers {
        let text = encode(&msg);
        for text in [text.clone(), tag_last(&text)] {
            assert_eq!(ServerMessage::decode(&text).unwrap(), msg, "{text}");
            assert_eq!(decode::<ServerMessage>(&text, SERVER_TYPES).unwrap(), msg);
        }
    }
    // Every type a side knows has its arm (a variant added to the enum and
    // its list of types but not to `decode` would read as unknown).
    for ty in CLIENT_TYPES {
        let decoded = ClientMessage::decode(&format!(r#"{{"type":"{ty}"}}"#));
        assert!(!matches!(decoded, Err(DecodeError::UnknownType(_))), "{ty}");
    }
    for ty in SERVER_TYPES {
        let decoded = ServerMessage::decode(&format!(r#"{{"type":"{ty}"}}"#));
        assert!(!matches!(decoded, Err(DecodeError::UnknownType(_))), "{ty}");
    }
}

#[test]
fn a_response_with_a_bad_head_names_its_request() {
    for head in [
        r#"{"status":200,"headers":{"x":[1,2]}}"#,
        r#"{"status":200,"headers":{"x":{"y":1}}}"#,
        r#"{"status":"ok"}"#,
    ] {
        let text = format!(r#"{{"type":"response","request_id":9,"response":{head}}}"#);
        let err = ClientMessage::decode(&text).unwrap_err();
        assert!(
            matches!(&err, DecodeError::BadResponse { request_id: 9, .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::BadResponse);
        assert_eq!(err.request_id(), Some(9));
    }
    // No readable id: malformed, as before.
    let no_id = r#"{"type":"response","request_id":"nine","response":{"status":200}}"#;
    assert!(matches!(
        ClientMessage::decode(no_id),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_message_is_an_object() {
    for text in [r#"["ping"]"#, r#"["cancel",5]"#, "5", r#""ping""#] {
        assert!(
            matches!(ClientMessage::decode(text), Err(DecodeError::Malformed(_))),
            "{text}"
        );
        assert!(matches!(
            ServerMessage::decode(text),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn capabilities_are_offered_by_list_or_by_the_older_field() {
    use crate::{Capabilities, Capability};
    let streams = Capabilities::of(&[Capability::BinaryStreams]);
    let offered = |text: &str| match ClientMessage::decode(text).unwrap() {
        ClientMessage::CreateTunnel(create) => create.offered(),
        other => panic!("{other:?}"),
    };
    // The seed's client states nothing.
    assert_eq!(offered(r#"{"type":"create_tunnel"}"#), Capabilities::NONE);
    assert_eq!(
        offered(r#"{"type":"create_tunnel","binary_streams":false}"#),
        Capabilities::NONE
    );
    // Older clients ask through the boolean, newer ones through the list.
    assert_eq!(
        offered(r#"{"type":"create_tunnel","binary_streams":true}"#),
        streams
    );
    assert_eq!(
        offered(r#"{"capabilities":["binary_streams","from_the_future"],"type":"create_tunnel"}"#),
        streams
    );
    assert_eq!(
        offered(r#"{"type":"create_tunnel","capabilities":[]}"#),
        Capabilities::NONE
    );
    // A list that breaks the bounds is a malformed message.
    let long = format!(
        r#"{{"type":"create_tunnel","capabilities":[{}]}}"#,
        vec![r#""x""#; crate::limits::MAX_CAPABILITIES + 1].join(",")
    );
    assert!(matches!(
        ClientMessage::decode(&long),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        ClientMessage::decode(r#"{"type":"create_tunnel","capabilities":"binary_streams"}"#),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn tunnel_created_states_the_accepted_capabilities_only_when_there_are_some() {
    let created = |binary_streams| TunnelCreated {
        version: 1,
        tunnel_id: "abc".into(),
        subdomain: "tunnel-abc".into(),
        public_url: "http://tunnel-abc.localhost".into(),
        binary_streams,
        capabilities: Default::default(),
        request_timeout_ms: 60_000,
        limits: crate::Limits::default().announce(std::time::Duration::from_secs(10)),
        reconnect_secret: None,
        max_body_size: None,
        protocol: crate::TunnelProtocol::Http,
        remote_port: None,
        pool: false,
    };
    // What the seed's client gets: exactly the fields it always had.
    let seed: serde_json::Value =
        serde_json::from_str(&encode(&ServerMessage::TunnelCreated(created(false)))).unwrap();
    let keys: Vec<&str> = seed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = [
        "type",
        "version",
        "tunnel_id",
        "subdomain",
        "public_url",
        "binary_streams",
        "request_timeout_ms",
        "limits",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    let binary = encode(&ServerMessage::TunnelCreated(created(true)));
    assert!(
        binary.contains(r#""binary_streams":true,"capabilities":["binary_streams"],"#),
        "{binary}"
    );
    assert_eq!(
        created(true).capabilities(),
        crate::Capabilities::of(&[crate::Capability::BinaryStreams])
    );
    // The field as the derive would write it otherwise.
    let with_secret = TunnelCreated {
        reconnect_secret: Some(crate::Secret::new("r3c")),
        max_body_size: Some(5),
        ..created(false)
    };
    let text = encode(&with_secret);
    assert!(
        text.ends_with(r#""reconnect_secret":"r3c","max_body_size":5}"#),
        "{text}"
    );
}

#[test]
fn close_tunnel_and_its_answer_read_as_written_and_the_list_names_binary_streams_too() {
    assert_eq!(
        ClientMessage::decode(r#"{"tunnel_id":"k6fg","type":"close_tunnel"}"#).unwrap(),
        ClientMessage::CloseTunnel {
            tunnel_id: "k6fg".into()
        }
    );
    assert!(matches!(
        ClientMessage::decode(r#"{"type":"close_tunnel"}"#),
        Err(DecodeError::Malformed(_))
    ));
    let text = encode(&ServerMessage::TunnelClosed {
        tunnel_id: "k6fg".into(),
    });
    assert_eq!(text, r#"{"type":"tunnel_closed","tunnel_id":"k6fg"}"#);
    // A server that states binary_streams only in the list: the boolean is
    // read from it, and the list keeps the others.
    let created = r#"{"type":"tunnel_created","version":1,"tunnel_id":"a","subdomain":"s",
        "public_url":"http://s.localhost","capabilities":["binary_streams","close_tunnel"],
        "request_timeout_ms":1,"limits":{"max_message_bytes":1,"max_frame_payload":1,
        "stream_window":1,"max_inline_body":1,"max_streams":1,"heartbeat_interval_ms":1}}"#;
    let Ok(ServerMessage::TunnelCreated(created)) = ServerMessage::decode(created) else {
        panic!("a tunnel_created");
    };
    assert!(created.binary_streams);
    assert_eq!(
        created.capabilities(),
        crate::Capabilities::of(&[
            crate::Capability::BinaryStreams,
            crate::Capability::CloseTunnel
        ])
    );
}

#[test]
fn a_cancel_reason_is_optional_and_an_unknown_one_is_none() {
    let old = ServerMessage::decode(r#"{"type":"cancel","request_id":7}"#).unwrap();
    assert_eq!(
        old,
        ServerMessage::Cancel {
            request_id: 7,
            reason: None
        }
    );
    let timeout = r#"{"type":"cancel","request_id":7,"reason":"timeout"}"#;
    assert_eq!(
        ServerMessage::decode(timeout).unwrap(),
        ServerMessage::Cancel {
            request_id: 7,
            reason: Some(crate::CancelReason::Timeout)
        }
    );
    let newer = r#"{"type":"cancel","request_id":7,"reason":"moon_phase"}"#;
    assert_eq!(
        ClientMessage::decode(newer).unwrap(),
        ClientMessage::Cancel {
            request_id: 7,
            reason: None
        }
    );
    let gone = ClientMessage::Cancel {
        request_id: 1,
        reason: Some(crate::CancelReason::VisitorGone),
    };
    assert_eq!(
        encode(&gone),
        r#"{"type":"cancel","request_id":1,"reason":"visitor_gone"}"#
    );
}
