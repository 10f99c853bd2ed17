//! Why a stream was abandoned: the `reason` of a JSON `cancel` and the
//! payload of a binary RESET frame, one small vocabulary for both.
//!
//! A reason is optional on the wire (peers that predate it send none, and
//! a RESET may carry any text), and a word this build does not know is
//! read as no reason: a newer peer's reason never breaks an older one.

use serde::{Deserialize, Serialize};

/// Why the sender gave up on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The request timeout passed without a response head: the local
    /// service did not answer in time.
    Timeout,
    /// The visitor closed their connection (or the client's end gave up
    /// on the exchange).
    VisitorGone,
    /// The sender is shutting down.
    Shutdown,
}

impl CancelReason {
    /// Every reason, in the order PROTOCOL.md lists them.
    pub const ALL: [CancelReason; 3] = [
        CancelReason::Timeout,
        CancelReason::VisitorGone,
        CancelReason::Shutdown,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Timeout => "timeout",
            CancelReason::VisitorGone => "visitor_gone",
            CancelReason::Shutdown => "shutdown",
        }
    }

    /// The reason `word` names, if this build knows it.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// The reason a RESET frame's payload names, if any: the payload is
    /// the word alone (other text, which older peers may send, is none).
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        std::str::from_utf8(payload).ok().and_then(Self::parse)
    }
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CancelReason;

    #[test]
    fn words_round_trip_and_unknown_ones_are_none() {
        for reason in CancelReason::ALL {
            assert_eq!(CancelReason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                CancelReason::from_payload(reason.as_str().as_bytes()),
                Some(reason)
            );
            let json = serde_json::to_string(&reason).unwrap_or_default();
            assert_eq!(json, format!("\"{reason}\""));
        }
        assert_eq!(CancelReason::parse("bored"), None);
        assert_eq!(CancelReason::from_payload(b""), None);
        assert_eq!(CancelReason::from_payload(&[0xff, 0xfe]), None);
    }
}
