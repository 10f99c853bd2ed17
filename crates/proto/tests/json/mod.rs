//! Strategies for arbitrary JSON shaped like control messages, shared by
//! the property tests (`properties.rs`) and the allocation bound
//! (`decode_memory_properties.rs`).

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the decoders know, so that generated objects reach past
/// the first missing field.
const FIELDS: &[&str] = &[
    "type",
    "request_id",
    "response",
    "request",
    "status",
    "headers",
    "method",
    "path",
    "body",
    "body_encoding",
    "body_stream",
    "version",
    "subdomain",
    "binary_streams",
    "capabilities",
    "token",
    "reconnect_secret",
    "basic_auth",
    "allow_ips",
    "deny_ips",
    "max_body_size",
    "request_timeout_ms",
    "tunnel_id",
    "code",
    "message",
    "reconnect_after_ms",
    "limits",
];

/// `type` values: every known one of both directions, and a stranger.
const TYPES: &[&str] = &[
    "create_tunnel",
    "response",
    "cancel",
    "ping",
    "pong",
    "tunnel_created",
    "request",
    "error",
    "going_away",
    "teleport",
];

/// Any JSON value, nested a few levels, its object keys mostly real
/// field names.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        prop::sample::select(TYPES).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// A JSON object with a `type`, sometimes first as our peers write it,
/// sometimes last, and fields of arbitrary shape.
pub fn json_message() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((key(), json_value()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(tag, fields, tag_first)| {
            let mut text = String::from("{");
            let tag = format!(r#""type":"{tag}""#);
            let mut parts: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                .collect();
            if tag_first {
                parts.insert(0, tag);
            } else {
                parts.push(tag);
            }
            text.push_str(&parts.join(","));
            text.push('}');
            text
        })
}
