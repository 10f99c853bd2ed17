//! Capabilities: what a session speaks beyond the seed's JSON protocol.
//!
//! A client lists what it speaks in `create_tunnel` (`"capabilities":
//! ["binary_streams", ...]`); the server answers, in `tunnel_created`, the
//! ones it will use on the session: [`negotiate`], the intersection with
//! what it supports. Names a side does not know are ignored, so the list can
//! grow without a new protocol version; a client that states nothing gets
//! the seed's protocol. `binary_streams`, the first capability, predates the
//! list and keeps its own boolean field both ways.
//!
//! Every capability, current or reserved for work still to come, is a row
//! of the table in `docs/PROTOCOL.md` §2.3; a test checks that the two list
//! the same names.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::limits::{MAX_CAPABILITIES, MAX_CAPABILITY_NAME};

/// One thing a session may speak beyond the seed's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Bodies travel as binary frames with per-stream credit (`frame`).
    BinaryStreams,
    /// Request and response heads as binary frames (HEAD, see
    /// [`crate::binary_head`]), not JSON messages; only with
    /// `binary_streams`.
    BinaryHeads,
    /// HTTP trailers end a body (TRAILERS frames: gRPC's status travels
    /// so); only with `binary_streams`.
    Trailers,
    /// Raw byte streams, one per visitor connection, for TCP tunnels (OPEN
    /// frames; END is a half-close); only with `binary_streams`.
    RawStreams,
    /// `close_tunnel`, answered by `tunnel_closed`, releases a tunnel's
    /// name without holding it (a client stopping on purpose).
    CloseTunnel,
    /// Several clients serve one name together (`create_tunnel.pool`).
    Pools,
    /// Reserved for a later change to the reasons old peers could not
    /// ignore: today `cancel` and RESET say why (`timeout`, `visitor_gone`,
    /// `shutdown`) without it, the reason being optional and ignored by
    /// peers that predate it.
    CancelReason,
}

/// Whether a capability is spoken today or only has its name kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Spoken since this protocol version.
    Current {
        /// The protocol version that introduced it.
        since: u32,
    },
    /// Named so that nothing else takes the name; not spoken yet. A server
    /// never accepts it.
    Reserved,
}

impl Capability {
    /// Every capability, in the order of the table and of [`Capabilities`]'
    /// bits (append only: the order is not on the wire, but keeping it
    /// keeps the table readable).
    pub const ALL: [Capability; 7] = [
        Capability::BinaryStreams,
        Capability::BinaryHeads,
        Capability::Trailers,
        Capability::RawStreams,
        Capability::CloseTunnel,
        Capability::CancelReason,
        Capability::Pools,
    ];

    /// The name on the wire.
    pub const fn wire_name(self) -> &'static str {
        match self {
            Capability::BinaryStreams => "binary_streams",
            Capability::BinaryHeads => "binary_heads",
            Capability::Trailers => "trailers",
            Capability::RawStreams => "raw_streams",
            Capability::CloseTunnel => "close_tunnel",
            Capability::CancelReason => "cancel_reason",
            Capability::Pools => "pools",
        }
    }

    /// The capability with this wire name, if this version knows it.
    pub fn from_wire_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.wire_name() == name)
    }

    /// Spoken today, or reserved.
    pub const fn status(self) -> Status {
        match self {
            Capability::BinaryStreams
            | Capability::CloseTunnel
            | Capability::BinaryHeads
            | Capability::RawStreams
            | Capability::Pools
            | Capability::Trailers => Status::Current { since: 1 },
            Capability::CancelReason => Status::Reserved,
        }
    }

    /// Its bit in a [`Capabilities`].
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// A set of capabilities: on the wire, a JSON array of their names.
///
/// Decoding ignores names this version does not know and refuses a list of
/// more than [`MAX_CAPABILITIES`] entries or a name longer than
/// [`MAX_CAPABILITY_NAME`] bytes, without holding any of them.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability: the seed's protocol.
    pub const NONE: Capabilities = Capabilities(0);

    /// What this build speaks: every current capability. The server passes
    /// it to [`negotiate`]; the client offers it.
    pub const SUPPORTED: Capabilities = Capabilities::of(&[
        Capability::BinaryStreams,
        Capability::BinaryHeads,
        Capability::CloseTunnel,
        Capability::RawStreams,
        Capability::Pools,
        Capability::Trailers,
    ]);

    /// The set of `list`.
    pub const fn of(list: &[Capability]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Capabilities(bits)
    }

    /// This set and `capability`.
    #[must_use]
    pub const fn with(self, capability: Capability) -> Self {
        Capabilities(self.0 | capability.bit())
    }

    /// This set without `capability`.
    #[must_use]
    pub const fn without(self, capability: Capability) -> Self {
        Capabilities(self.0 & !capability.bit())
    }

    /// Whether `capability` is in the set.
    pub const fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// What both sets hold.
    #[must_use]
    pub const fn intersection(self, other: Capabilities) -> Self {
        Capabilities(self.0 & other.0)
    }

    /// What either set holds.
    #[must_use]
    pub const fn union(self, other: Capabilities) -> Self {
        Capabilities(self.0 | other.0)
    }

    /// The capabilities in the set, in [`Capability::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

/// What the server will use on a session: what the client `offered` that
/// the server `supports`, but `binary_heads`, `raw_streams` and `trailers`
/// only with `binary_streams` (their frames are binary frames). Pure, so that the rule is tested here
/// and the server only calls it.
pub fn negotiate(offered: Capabilities, supports: Capabilities) -> Capabilities {
    let both = offered.intersection(supports);
    if both.contains(Capability::BinaryStreams) {
        both
    } else {
        both.without(Capability::BinaryHeads)
            .without(Capability::RawStreams)
            .without(Capability::Trailers)
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Capabilities::NONE, Capabilities::with)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Capabilities {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for capability in self.iter() {
            seq.serialize_element(capability.wire_name())?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Capabilities {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// Reads the array one name at a time, keeping only known ones.
struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Capabilities;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of at most {MAX_CAPABILITIES} capability names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Capabilities, A::Error> {
        let mut set = Capabilities::NONE;
        let mut count = 0;
        while let Some(Name(known)) = seq.next_element()? {
            count += 1;
            if count > MAX_CAPABILITIES {
                return Err(de::Error::invalid_length(count, &self));
            }
            if let Some(capability) = known {
                set = set.with(capability);
            }
        }
        Ok(set)
    }
}

/// One entry of the array: the capability it names, `None` for a name this
/// version does not know. Read from the text as it stands (borrowed, or the
/// parser's scratch space for an escaped string), never copied.
struct Name(Option<Capability>);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a capability name of at most {MAX_CAPABILITY_NAME} bytes"
                )
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name, E> {
                if name.len() > MAX_CAPABILITY_NAME {
                    return Err(E::invalid_length(name.len(), &self));
                }
                Ok(Name(Capability::from_wire_name(name)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
#[path = "capability_tests.rs"]
mod tests;
