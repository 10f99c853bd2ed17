//! Why a peer's text message was refused, and the code it is refused
//! under: an unknown `type`, malformed input, or a `response` whose head
//! could not be read but whose request can be named (that request fails,
//! the session goes on).

use super::ErrorCode;

/// Why a text frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Valid JSON object, but a `type` this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Not JSON, not an object, no `type`, or fields of the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A `response` whose `request_id` could be read but whose head could
    /// not (a header value that is an array or an object, a field of the
    /// wrong shape): that request fails at once, the others go on.
    #[error("invalid response: {reason}")]
    BadResponse {
        /// The request it answered.
        request_id: u32,
        /// What was wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// The code to report this error under.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::Malformed(_) => ErrorCode::BadMessage,
            DecodeError::BadResponse { .. } => ErrorCode::BadResponse,
        }
    }

    /// The request the error concerns, if any.
    pub fn request_id(&self) -> Option<u32> {
        match self {
            DecodeError::BadResponse { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }
}
