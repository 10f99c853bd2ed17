//! Request and response heads as they travel in `request` and `response`
//! messages, and their checked conversion to and from `http` types.
//!
//! Header values are byte strings in HTTP but JSON strings here. Each byte of a
//! value travels as the character of the same number (ISO-8859-1), so any
//! value, valid UTF-8 or not, crosses the tunnel unchanged. A value received
//! with characters above U+00FF (only a hand-written client sends those) is
//! taken as UTF-8 instead.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::MAX_WIRE_HEADERS;

/// Method, target and headers of a visitor's request. Read through
/// [`RequestWire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RequestWire")]
pub struct RequestHead {
    /// The method, byte for byte (`GET`, `PROPFIND`, ...).
    pub method: String,
    /// Path and query exactly as the visitor sent them.
    pub path: String,
    /// Headers in the order received, repeated names kept apart.
    pub headers: Vec<(String, String)>,
    /// The whole body inline (sessions without binary streams).
    #[serde(flatten)]
    pub body: InlineBody,
}

/// Status, headers and optionally the body of the local service's answer.
/// Read through [`ResponseWire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ResponseWire")]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order; a JSON object `{"name":"value"}` is accepted too.
    pub headers: Vec<(String, String)>,
    /// The body inline, or a promise of binary frames.
    #[serde(flatten)]
    pub body: InlineBody,
}

/// A request head as read off the wire. The body's fields are read in
/// place: `#[serde(flatten)]` would have serde buffer the whole head into
/// its generic `Content` first, on the message every request brings.
#[derive(Deserialize)]
struct RequestWire {
    method: String,
    path: String,
    #[serde(default, deserialize_with = "header_list")]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_encoding: Option<String>,
    #[serde(default)]
    body_stream: bool,
}

/// A response head as read off the wire (see [`RequestWire`]).
#[derive(Deserialize)]
struct ResponseWire {
    status: u16,
    #[serde(default, deserialize_with = "header_list")]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_encoding: Option<String>,
    #[serde(default)]
    body_stream: bool,
}

impl From<RequestWire> for RequestHead {
    fn from(wire: RequestWire) -> Self {
        RequestHead {
            method: wire.method,
            path: wire.path,
            headers: wire.headers,
            body: InlineBody {
                body: wire.body,
                body_encoding: wire.body_encoding,
                body_stream: wire.body_stream,
                raw: None,
            },
        }
    }
}

impl From<ResponseWire> for ResponseHead {
    fn from(wire: ResponseWire) -> Self {
        ResponseHead {
            status: wire.status,
            headers: wire.headers,
            body: InlineBody {
                body: wire.body,
                body_encoding: wire.body_encoding,
                body_stream: wire.body_stream,
                raw: None,
            },
        }
    }
}

/// How a body travels with its head: as bytes, inline in the JSON head
/// (`body`, `body_encoding`), or after the head (`body_stream`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InlineBody {
    /// The body itself, encoded as `body_encoding` says. Absent means empty
    /// (or, with `body_stream`, carried by binary frames).
    #[serde(default)]
    pub body: Option<String>,
    /// `"base64"`, or `"text"` (the default) for a UTF-8 body written as is.
    #[serde(default)]
    pub body_encoding: Option<String>,
    /// The body follows as binary data frames on this request's stream.
    #[serde(default)]
    pub body_stream: bool,
    /// The body as bytes, as a HEAD frame carries it ([`InlineBody::raw`]);
    /// written to JSON as base64, only if a head built so is sent as JSON.
    #[serde(skip)]
    pub raw: Option<Bytes>,
}

/// Written as its JSON fields; a [raw](InlineBody::raw) body as base64.
impl Serialize for InlineBody {
    fn serialize<S: serde::Serializer>(&self, to: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = to.serialize_map(None)?;
        match &self.raw {
            Some(raw) if !raw.is_empty() => {
                map.serialize_entry("body", &BASE64.encode(raw))?;
                map.serialize_entry("body_encoding", "base64")?;
            }
            Some(_) => {}
            None => {
                if let Some(body) = &self.body {
                    map.serialize_entry("body", body)?;
                }
                if let Some(encoding) = &self.body_encoding {
                    map.serialize_entry("body_encoding", encoding)?;
                }
            }
        }
        if self.body_stream {
            map.serialize_entry("body_stream", &true)?;
        }
        map.end()
    }
}

impl InlineBody {
    /// A body carried in the message, base64-encoded.
    pub fn inline(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self::default();
        }
        InlineBody {
            body: Some(BASE64.encode(bytes)),
            body_encoding: Some("base64".into()),
            body_stream: false,
            raw: None,
        }
    }

    /// A body that ends with its head, kept as the bytes it is: a HEAD
    /// frame carries it so, and a JSON head as base64, encoded as it is
    /// written rather than now.
    pub fn raw(bytes: Bytes) -> Self {
        InlineBody {
            raw: Some(bytes),
            ..Self::default()
        }
    }

    /// A body that follows in binary frames.
    pub fn streamed() -> Self {
        InlineBody {
            body_stream: true,
            ..Self::default()
        }
    }

    /// Decodes the inline body (empty when absent).
    pub fn decode(&self) -> Result<Bytes, HeadError> {
        if let Some(raw) = &self.raw {
            return Ok(raw.clone());
        }
        let Some(body) = &self.body else {
            return Ok(Bytes::new());
        };
        if self.body_stream {
            return Err(HeadError::Body(
                "both an inline body and body_stream".into(),
            ));
        }
        match self.body_encoding.as_deref() {
            None | Some("text") => Ok(Bytes::copy_from_slice(body.as_bytes())),
            Some("base64") => BASE64
                .decode(body)
                .map(Bytes::from)
                .map_err(|e| HeadError::Body(format!("invalid base64: {e}"))),
            Some(other) => Err(HeadError::Body(format!("unknown body_encoding {other:?}"))),
        }
    }
}

/// A head that cannot become a valid HTTP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Status outside 100..=999 (or 101, which only an upgrade may use).
    #[error("invalid status code {0}")]
    Status(u16),
    /// Method that is not an HTTP token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// Path that is not an origin-form request target.
    #[error("invalid path {0:?}")]
    Path(String),
    /// Header name that is not a token, or value with CR, LF, NUL or other controls.
    #[error("invalid header {0:?}")]
    Header(String),
    /// More headers, or more header bytes, than allowed.
    #[error("header block too large ({count} headers, {bytes} bytes)")]
    TooLarge {
        /// Number of header lines.
        count: usize,
        /// Bytes of names and values.
        bytes: usize,
    },
    /// The inline body could not be decoded.
    #[error("invalid body: {0}")]
    Body(String),
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are
/// never forwarded. (`Trailer` is not one: it announces a message's trailer
/// fields end to end, and an HTTP/1.1 sender needs it to send them. `TE` is,
/// and whether the visitor takes trailers is carried apart:
/// [`accepts_trailers`].)
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Whether a request's `TE` says its sender takes trailer fields (the
/// `trailers` token, in any case, among others): gRPC clients send
/// `te: trailers`, and gRPC servers refuse a request without it.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            let token = token.split(';').next().unwrap_or_default();
            token.trim().eq_ignore_ascii_case("trailers")
        })
}

/// Removes hop-by-hop headers, those named in `Connection`, and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The protocol a request asks to switch to: its `Upgrade` value, when
/// `Connection` also names `upgrade` (without that token an `Upgrade` header
/// is only a hop-by-hop leftover and is ignored).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut values = headers.get_all(header::UPGRADE).iter();
    match (asks, values.next(), values.next()) {
        (true, Some(value), None) => Some(value.clone()),
        _ => None,
    }
}

/// Strips hop-by-hop headers but keeps what a protocol switch needs:
/// `Connection: upgrade` and the given `Upgrade`.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    strip_hop_by_hop(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Converts a header map to the wire list, keeping order.
pub fn headers_to_wire(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value_to_wire(value)))
        .collect()
}

/// The wire list of `headers` as a proxy forwards them, in one pass over
/// the map and without changing it: what [`strip_hop_by_hop`] removes is
/// left out, and so is every header named in `drop` (lowercase). What
/// stripping and then converting keeps, in the order received (a removal
/// from a `HeaderMap` moves its last header into the gap), without a hash
/// lookup and a removal per name.
pub fn forwardable_to_wire(headers: &HeaderMap, drop: &[&str]) -> Vec<(String, String)> {
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut wire = Vec::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        let text = name.as_str();
        let hop = HOP_BY_HOP.contains(name) || name == header::UPGRADE;
        if hop || drop.contains(&text) || named.iter().any(|n| n.eq_ignore_ascii_case(text)) {
            continue;
        }
        wire.push((text.to_owned(), value_to_wire(value)));
    }
    wire
}

/// A header value as it travels: each byte the character of that number.
pub fn value_to_wire(value: &HeaderValue) -> String {
    latin1_to_string(value.as_bytes())
}

/// Converts the wire list to a header map, refusing invalid names or values
/// and blocks over `max_count` lines or `max_bytes` bytes.
pub fn headers_from_wire(
    list: &[(String, String)],
    max_count: usize,
    max_bytes: usize,
) -> Result<HeaderMap, HeadError> {
    let bytes: usize = list.iter().map(|(n, v)| n.len() + v.len()).sum();
    if list.len() > max_count || bytes > max_bytes {
        return Err(HeadError::TooLarge {
            count: list.len(),
            bytes,
        });
    }
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeadError::Header(name.clone()))?;
        // ASCII, by far the most common, is its own byte string: one copy.
        let header_value = if value.is_ascii() {
            HeaderValue::from_str(value)
        } else {
            HeaderValue::from_bytes(&string_to_latin1(value))
        }
        .map_err(|_| HeadError::Header(format!("{name}: {value}")))?;
        map.append(header_name, header_value);
    }
    Ok(map)
}

fn latin1_to_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => s.to_owned(),
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

fn string_to_latin1(s: &str) -> Vec<u8> {
    if s.chars().all(|c| u32::from(c) <= 0xFF) {
        s.chars().map(|c| u32::from(c) as u8).collect()
    } else {
        s.as_bytes().to_vec()
    }
}

/// Headers as a list of `[name, value]` pairs (what we send), or an object
/// of names to values (what a hand-written client may send; see
/// [`Scalar`]), read as they come.
fn header_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Headers;
    impl<'de> Visitor<'de> for Headers {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [name, value] pairs or an object of names to values")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(pair) = seq.next_element()? {
                push_header(&mut list, pair)?;
            }
            Ok(list)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some((name, Scalar(value))) = map.next_entry::<String, Scalar>()? {
                push_header(&mut list, (name, value))?;
            }
            Ok(list)
        }
    }
    de.deserialize_any(Headers)
}

/// A header value in an object: a string, or a number, boolean or null
/// taken as its JSON text. An array or object is refused (its tree would
/// be built whole before anything could check its size).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = String;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header value: a string, number, boolean or null")
            }
            fn visit_str<E>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
            fn visit_bool<E>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E>(self, v: f64) -> Result<String, E> {
                Ok(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| v.to_string(), |n| n.to_string()),
                )
            }
            fn visit_unit<E>(self) -> Result<String, E> {
                Ok("null".to_owned())
            }
        }
        de.deserialize_any(Text).map(Scalar)
    }
}

/// Adds a header read off the wire, refusing the head once it has more than
/// [`MAX_WIRE_HEADERS`]: the session's own, lower, limit is checked later.
fn push_header<E: serde::de::Error>(
    list: &mut Vec<(String, String)>,
    pair: (String, String),
) -> Result<(), E> {
    if list.len() == MAX_WIRE_HEADERS {
        return Err(E::custom(format_args!(
            "a head carries at most {MAX_WIRE_HEADERS} headers"
        )));
    }
    list.push(pair);
    Ok(())
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
