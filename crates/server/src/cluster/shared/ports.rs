//! TCP tunnels' public ports in Redis: one hash for the whole cluster,
//! `cryptun:1:{ports}`, a field per port given,
//! `PORT` → `UNTIL_MS NAME TOKEN STATE OWNER`: the name of the tunnel it is
//! given to, the claim's random token, until when it is that name's
//! (Redis's own milliseconds) without renewal, `live` (its tunnel is) or
//! `held` (for its client to come back), and who may take it back (as a
//! name's route record writes owners). A port is taken from another claim,
//! live or held, only for the same name by the same owner (its client
//! come back, maybe on another node); a claim whose tunnel was not
//! registered after all puts back what it replaced. A port's claim lives as its tunnel's
//! name does: the lease and the reconnect grace, renewed while the tunnel
//! is live; when it ends, it is held for the name for the grace. A claim
//! whose time has passed is free; the scripts take such fields off as they
//! meet them.
//!
//! One hash, so that finding a free port of a range is one atomic step (on
//! a Redis Cluster, one slot): ports are claimed when tunnels open, rarely,
//! and looked up through each node's cache.

use std::time::Duration;

use redis::Script;

use super::{PREFIX, Shared, SharedError, millis};

/// What claiming a port found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortClaimed {
    /// The port is the name's now; what the claim replaced (`""`: none),
    /// to be put back if its tunnel is not registered.
    Yes(u16, String),
    /// Another name's live tunnel's.
    Live(u16),
    /// Held for another name's reconnection, this much longer.
    Held(u16, Duration),
    /// Every port offered is taken.
    Exhausted,
}

/// One claim on a port, as written in the ports' hash.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// The port.
    pub port: u16,
    /// The name of the tunnel it is given to.
    pub name: String,
    /// The claim's random token.
    pub token: String,
    /// Who may take it back, encoded as a route record's owner.
    pub owner: String,
}

/// The scripts on the ports' hash.
pub(super) struct PortScripts {
    claim: Script,
    renew: Script,
    release: Script,
    resolve: Script,
}

impl PortScripts {
    pub(super) fn new() -> Self {
        PortScripts {
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            resolve: Script::new(RESOLVE),
        }
    }
}

fn ports_key() -> String {
    format!("{PREFIX}:{{ports}}")
}

impl Shared {
    /// Claims a port for `name` with `token`, owned by `owner`, for
    /// `ttl`: `asked`, if it is free, or `name`'s already and one of
    /// `proofs` its owner; else the first free one of `offered`, in their
    /// order (a port held for a name is given only to that name, asking
    /// for it).
    pub async fn claim_port(
        &self,
        PortEntry {
            name, token, owner, ..
        }: &PortEntry,
        proofs: [&str; 2],
        (asked, offered): (Option<u16>, &[u16]),
        ttl: Duration,
    ) -> Result<PortClaimed, SharedError> {
        let (kind, port, left, replaced): (String, u16, u64, String) = self
            .run(|mut conn| {
                let mut call = self.port_scripts.claim.key(ports_key());
                call.arg(name)
                    .arg(token)
                    .arg(millis(ttl))
                    .arg(asked.unwrap_or(0))
                    .arg(owner)
                    .arg(proofs[0])
                    .arg(proofs[1]);
                for port in offered {
                    call.arg(*port);
                }
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        Ok(match kind.as_str() {
            "ok" => PortClaimed::Yes(port, replaced),
            "live" => PortClaimed::Live(port),
            "held" => PortClaimed::Held(port, Duration::from_millis(left)),
            "exhausted" => PortClaimed::Exhausted,
            other => return Err(SharedError::Unexpected(other.into())),
        })
    }

    /// Renews each claim of `claims` for `ttl`, writing back any that is
    /// gone; the ports whose claim another has taken are returned.
    pub async fn renew_ports(
        &self,
        claims: &[PortEntry],
        ttl: Duration,
    ) -> Result<Vec<u16>, SharedError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|mut conn| {
            let mut call = self.port_scripts.renew.key(ports_key());
            call.arg(millis(ttl));
            for claim in claims {
                call.arg(claim.port)
                    .arg(&claim.name)
                    .arg(&claim.token)
                    .arg(&claim.owner);
            }
            async move { Ok(call.invoke_async(&mut conn).await?) }
        })
        .await
    }

    /// Ends claim `token` on `port`: held for its name for `hold`; with
    /// none, what it `replaced` is put back (`""`: the port is free).
    /// Another's claim on the port is left alone.
    pub async fn release_port(
        &self,
        (port, token): (u16, &str),
        hold: Duration,
        replaced: &str,
    ) -> Result<(), SharedError> {
        let _: i64 = self
            .run(|mut conn| {
                let mut call = self.port_scripts.release.key(ports_key());
                call.arg(port).arg(token).arg(millis(hold)).arg(replaced);
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        Ok(())
    }

    /// The name `port` is given to now, if any.
    pub async fn port_name(&self, port: u16) -> Result<Option<String>, SharedError> {
        self.run(|mut conn| {
            let mut call = self.port_scripts.resolve.key(ports_key());
            call.arg(port);
            async move { Ok(call.invoke_async(&mut conn).await?) }
        })
        .await
    }
}

// Shared by the scripts: Redis's time, and a field's parts.
macro_rules! now {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parts(v)
  if not v then return nil end
  local until_ms, name, token, state, owner = string.match(v, '^(%d+) (%S+) (%S+) ?(%S*) ?(%S*)')
  return tonumber(until_ms), name, token, state, owner
end
"
    };
}

// KEYS[1] ports; ARGV: name, token, ttl_ms, asked (0: any), owner,
// proof_key, proof_secret, offered...
// {'ok', port, 0, replaced} | {'live' or 'held', port, left_ms, ''} |
// {'exhausted', 0, 0, ''}
const CLAIM: &str = concat!(
    now!(),
    r"
local name, token, ttl, asked, owner = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local function take(port, replaced)
  redis.call('HSET', KEYS[1], port, (now + ttl) .. ' ' .. name .. ' ' .. token .. ' live ' .. owner)
  return {'ok', tonumber(port), 0, replaced or ''}
end
if asked ~= '0' then
  local v = redis.call('HGET', KEYS[1], asked)
  local until_ms, held_for, _, state, held_by = parts(v)
  if not until_ms or until_ms <= now then return take(asked) end
  local proven = held_by ~= '' and (held_by == ARGV[6] or held_by == ARGV[7])
  if held_for == name and proven then return take(asked, v) end
  if state == 'held' then return {'held', tonumber(asked), until_ms - now, ''} end
  return {'live', tonumber(asked), until_ms - now, ''}
end
for i = 8, #ARGV do
  local until_ms = parts(redis.call('HGET', KEYS[1], ARGV[i]))
  if not until_ms or until_ms <= now then return take(ARGV[i]) end
end
return {'exhausted', 0, 0, ''}
"
);

// KEYS[1] ports; ARGV: ttl_ms, then port, name, token, owner for each
// claim. A port another claim of the same name has (a pool's member on
// another node) is renewed too: the pool's; one another name has is lost.
// The ports whose claim another token has.
const RENEW: &str = concat!(
    now!(),
    r"
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 4 do
  local port, name, token, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local until_ms, held_for, held = parts(redis.call('HGET', KEYS[1], port))
  if held and held ~= token and held_for ~= name and until_ms > now then
    table.insert(lost, tonumber(port))
  else
    redis.call('HSET', KEYS[1], port, (now + ttl) .. ' ' .. name .. ' ' .. token .. ' live ' .. owner)
  end
end
return lost
"
);

// KEYS[1] ports; ARGV: port, token, hold_ms, replaced.
const RELEASE: &str = concat!(
    now!(),
    r"
local _, name, token, _, owner = parts(redis.call('HGET', KEYS[1], ARGV[1]))
if token ~= ARGV[2] then return 0 end
local hold = tonumber(ARGV[3])
if hold > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], (now + hold) .. ' ' .. name .. ' ' .. token .. ' held ' .. owner)
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"
);

// KEYS[1] ports; ARGV: port. The name, or nil (a claim past its time is
// taken off).
const RESOLVE: &str = concat!(
    now!(),
    r"
local until_ms, name = parts(redis.call('HGET', KEYS[1], ARGV[1]))
if not until_ms then return false end
if until_ms <= now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
return name
"
);
