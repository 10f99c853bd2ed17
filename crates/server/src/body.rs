//! The body of every response the server writes, and the error type bodies
//! and boxed errors carry across crate boundaries.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors as they cross crate boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway writes.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
