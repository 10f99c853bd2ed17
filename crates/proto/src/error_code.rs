//! Error codes: why the server refused something, and what each refusal
//! does to the connection.
//!
//! The code's half of the error-code table in `docs/PROTOCOL.md` §3.6: the
//! codes this version sends, whether a refusal closes the connection (and
//! with which close code), whether it carries `retry_after_ms`, and the
//! names reserved for work still to come. A test checks that the table and
//! this module say the same.

use serde::{Deserialize, Serialize};

use crate::close_code;

/// Why the server refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame was not valid JSON or lacked required fields.
    BadMessage,
    /// The `type` is not one this version knows. The message was ignored.
    UnknownType,
    /// `create_tunnel` asked for a protocol version the server does not speak.
    UnsupportedVersion,
    /// The requested subdomain is not a valid DNS label (or is reserved).
    InvalidSubdomain,
    /// The requested subdomain is held by another live tunnel.
    SubdomainTaken,
    /// The session holds as many tunnels as it may.
    TooManyTunnels,
    /// A `response` was not a valid HTTP response head (status, header name
    /// or value, size); the visitor got a 502.
    BadResponse,
    /// A message arrived before the first `create_tunnel`.
    NoTunnel,
    /// The API key is missing (where the server requires one), unknown or
    /// revoked.
    Unauthorized,
    /// Too many failed handshakes from this address: refused without
    /// checking until `retry_after_ms` has passed.
    TooManyAttempts,
    /// The requested subdomain is reserved for another API key.
    SubdomainReserved,
    /// The server failed (its database, say); not the client's fault.
    Internal,
    /// An entry of `allow_ips` or `deny_ips` is not an IP address or CIDR
    /// block (or there are too many).
    InvalidCidr,
    /// `basic_auth` has an empty or invalid user name or password.
    InvalidBasicAuth,
    /// The API key this session authenticated with was revoked while it
    /// was connected: the session is closed (1008) and its tunnels are gone.
    /// Final: reconnecting with the same key is refused.
    KeyRevoked,
    /// Over a per-identity quota (an API key's, or for anonymous clients
    /// their address's): sessions or live tunnels. `retry_after_ms` says
    /// when to try again.
    QuotaExceeded,
    /// The server cannot admit new tunnels now: it is a cluster member and
    /// its cluster's shared store is unreachable. Not the client's fault;
    /// `retry_after_ms` says when to try again (here or on another node).
    Unavailable,
    /// The requested subdomain is held for its previous client to
    /// reconnect (apart from [`ErrorCode::SubdomainTaken`], a live
    /// tunnel's): `retry_after_ms` says when the hold ends.
    SubdomainHeld,
    /// A TCP tunnel was asked of a server that opens no TCP ports (none
    /// configured with `--tcp-ports`), or of a session without
    /// `raw_streams`.
    TcpDisabled,
    /// The `remote_port` asked for is in use, outside the server's ranges,
    /// or cannot be opened.
    PortUnavailable,
    /// Every port of the server's ranges is in use.
    PortsExhausted,
    /// A TLS passthrough tunnel was asked of a server without an HTTPS
    /// listener, or of a session without `raw_streams`.
    TlsDisabled,
    /// A pool was asked for a name a single tunnel serves, or a single
    /// tunnel for a pool's name; or a pool's member differs from the pool
    /// in what it carries.
    PoolConflict,
}

impl ErrorCode {
    /// Every code this version sends, in the table's order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidSubdomain,
        ErrorCode::SubdomainTaken,
        ErrorCode::TooManyTunnels,
        ErrorCode::BadResponse,
        ErrorCode::NoTunnel,
        ErrorCode::Unauthorized,
        ErrorCode::TooManyAttempts,
        ErrorCode::SubdomainReserved,
        ErrorCode::Internal,
        ErrorCode::InvalidCidr,
        ErrorCode::InvalidBasicAuth,
        ErrorCode::KeyRevoked,
        ErrorCode::QuotaExceeded,
        ErrorCode::Unavailable,
        ErrorCode::SubdomainHeld,
        ErrorCode::TcpDisabled,
        ErrorCode::PortUnavailable,
        ErrorCode::PortsExhausted,
        ErrorCode::TlsDisabled,
        ErrorCode::PoolConflict,
    ];

    /// The name on the wire (the `code` of an `error` message).
    pub const fn wire_name(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidSubdomain => "invalid_subdomain",
            ErrorCode::SubdomainTaken => "subdomain_taken",
            ErrorCode::TooManyTunnels => "too_many_tunnels",
            ErrorCode::BadResponse => "bad_response",
            ErrorCode::NoTunnel => "no_tunnel",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::SubdomainReserved => "subdomain_reserved",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidCidr => "invalid_cidr",
            ErrorCode::InvalidBasicAuth => "invalid_basic_auth",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SubdomainHeld => "subdomain_held",
            ErrorCode::TcpDisabled => "tcp_disabled",
            ErrorCode::PortUnavailable => "port_unavailable",
            ErrorCode::PortsExhausted => "ports_exhausted",
            ErrorCode::TlsDisabled => "tls_disabled",
            ErrorCode::PoolConflict => "pool_conflict",
        }
    }

    /// What an `error` with this code does to the connection.
    pub const fn closes(self) -> Closes {
        match self {
            // Sent only on an open session: one message refused.
            ErrorCode::TooManyTunnels | ErrorCode::BadResponse => Closes::No,
            ErrorCode::Internal | ErrorCode::Unavailable => Closes::IfFirst(close_code::INTERNAL),
            ErrorCode::KeyRevoked => Closes::Always(close_code::POLICY),
            ErrorCode::BadMessage
            | ErrorCode::UnknownType
            | ErrorCode::UnsupportedVersion
            | ErrorCode::InvalidSubdomain
            | ErrorCode::SubdomainTaken
            | ErrorCode::SubdomainHeld
            | ErrorCode::NoTunnel
            | ErrorCode::Unauthorized
            | ErrorCode::TooManyAttempts
            | ErrorCode::SubdomainReserved
            | ErrorCode::InvalidCidr
            | ErrorCode::InvalidBasicAuth
            | ErrorCode::QuotaExceeded
            | ErrorCode::TcpDisabled
            | ErrorCode::PortUnavailable
            | ErrorCode::PortsExhausted
            | ErrorCode::TlsDisabled
            | ErrorCode::PoolConflict => Closes::IfFirst(close_code::POLICY),
        }
    }

    /// The close code that follows when this code refuses a connection's
    /// first message: 1011 when the server is at fault, 1008 otherwise.
    pub const fn handshake_close_code(self) -> u16 {
        match self.closes() {
            Closes::IfFirst(code) | Closes::Always(code) => code,
            Closes::No => close_code::POLICY,
        }
    }

    /// Whether an `error` with this code carries `retry_after_ms`.
    pub const fn carries_retry_after(self) -> bool {
        matches!(
            self,
            ErrorCode::TooManyAttempts
                | ErrorCode::QuotaExceeded
                | ErrorCode::Unavailable
                | ErrorCode::SubdomainHeld
        )
    }
}

/// What an `error` does to the connection: the "closes" column of the
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closes {
    /// Nothing: one message is refused and the session goes on.
    No,
    /// When it answers the connection's first message (its first
    /// `create_tunnel`, or what came instead), the server then closes with
    /// this code; on an open session, nothing.
    IfFirst(u16),
    /// The server then closes with this code, whenever it is sent.
    Always(u16),
}

impl std::fmt::Display for Closes {
    /// As the table writes it: `no`, `first: 1008`, `always: 1008`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closes::No => f.write_str("no"),
            Closes::IfFirst(code) => write!(f, "first: {code}"),
            Closes::Always(code) => write!(f, "always: {code}"),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// An error code named for work still to come: not sent by this version,
/// kept in the table so that nothing else takes the name and its shape is
/// agreed on before it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedCode {
    /// The name it will have on the wire.
    pub name: &'static str,
    /// What it will do to the connection.
    pub closes: Closes,
    /// Whether its `error` will carry `retry_after_ms`.
    pub retry_after: bool,
}

/// The reserved error codes, in the table's order. Each will refuse a
/// `create_tunnel`: the connection's first one closes it (1008), a later
/// one does not.
pub const RESERVED_ERROR_CODES: &[ReservedCode] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_serde_s_and_distinct_from_the_reserved_ones() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.wire_name(), "{code:?}");
            let back: ErrorCode = serde_json::from_value(json).unwrap();
            assert_eq!(back, code);
            assert!(
                RESERVED_ERROR_CODES
                    .iter()
                    .all(|r| r.name != code.wire_name()),
                "{code} is both current and reserved"
            );
        }
        // A reserved name is not one this version decodes.
        for reserved in RESERVED_ERROR_CODES {
            assert!(serde_json::from_value::<ErrorCode>(reserved.name.into()).is_err());
        }
    }

    #[test]
    fn refusals_close_as_the_protocol_says() {
        assert_eq!(ErrorCode::Internal.handshake_close_code(), 1011);
        assert_eq!(ErrorCode::Unauthorized.handshake_close_code(), 1008);
        assert_eq!(ErrorCode::KeyRevoked.closes(), Closes::Always(1008));
        assert_eq!(ErrorCode::SubdomainTaken.closes(), Closes::IfFirst(1008));
        assert_eq!(ErrorCode::BadResponse.closes(), Closes::No);
        assert_eq!(ErrorCode::Internal.closes().to_string(), "first: 1011");
        assert!(ErrorCode::TooManyAttempts.carries_retry_after());
        assert!(!ErrorCode::SubdomainTaken.carries_retry_after());
        assert!(ErrorCode::SubdomainHeld.carries_retry_after());
        assert_eq!(ErrorCode::SubdomainHeld.closes(), Closes::IfFirst(1008));
    }
}
