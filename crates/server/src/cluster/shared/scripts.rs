//! The atomic steps on a name's route record, as Lua scripts Redis runs
//! whole (each touches one key, so one slot of a Redis Cluster), and the
//! reading of their answers.

use std::time::Duration;

use cryptun_proto::TunnelProtocol;
use redis::Script;

use super::{Found, Member, SharedError};

/// The scripts, loaded once per connection by their digests.
pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) renew: Script,
    pub(super) release: Script,
    pub(super) resolve: Script,
    pub(super) node: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            resolve: Script::new(RESOLVE),
            node: Script::new(NODE),
        }
    }
}

/// Reads [`RESOLVE`]'s answer.
pub(super) fn parse_found(reply: &[String]) -> Result<Found, SharedError> {
    let bad = || SharedError::Unexpected(format!("{reply:?}"));
    match reply.first().map(String::as_str) {
        Some("free") => Ok(Found::Free),
        Some("held") => {
            let left = reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Ok(Found::Held(Duration::from_millis(left)))
        }
        Some("members") => reply[1..]
            .chunks(5)
            .map(|m| match m {
                [token, left, node, hop, protocol] => Ok(Member {
                    node: node.clone(),
                    hop: hop.parse().map_err(|_| bad())?,
                    token: token.clone(),
                    lease_left: Duration::from_millis(left.parse().map_err(|_| bad())?),
                    protocol: match protocol.as_str() {
                        "tcp" => TunnelProtocol::Tcp,
                        "tls" => TunnelProtocol::Tls,
                        _ => TunnelProtocol::Http,
                    },
                }),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()
            .map(Found::Members),
        _ => Err(bad()),
    }
}

// KEYS[1] route; ARGV: proof_key, proof_secret, owner, token, member,
// epoch, lease_ms, grace_ms, pool ('1' or '0'). Same owner (either proof)
// takes the name over, live member or not; anyone else only when no lease
// is live and no hold. A pool's member (same owner) joins its live members
// instead; a pool and a single tunnel never share a name while either is
// live ('pool_conflict').
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function lease_of(v) return tonumber(string.match(v, '^(%d+)')) end
local lease = tonumber(ARGV[7])
local asking = ARGV[9] == '1'
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local live = nil
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'm:' then
      local until_ms = lease_of(all[i + 1])
      if until_ms and until_ms > now then live = math.max(live or 0, until_ms - now) end
    end
  end
  local pooled = redis.call('HGET', KEYS[1], 'pool') == '1'
  if live and pooled ~= asking then return {'pool_conflict', live} end
  local same = (ARGV[1] ~= '' and owner == ARGV[1]) or (ARGV[2] ~= '' and owner == ARGV[2])
  if not same then
    if live then return {'live', live} end
    local left = redis.call('PTTL', KEYS[1])
    if left < 0 then left = 0 end
    if string.sub(owner, 1, 2) == 's:' and ARGV[2] ~= '' then return {'wrong_secret', left} end
    return {'held', left}
  end
  if live and asking then
    redis.call('HSET', KEYS[1], 'm:' .. ARGV[4], (now + lease) .. ' ' .. ARGV[5])
    redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[8]))
    return {'ok', 0}
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'epoch', ARGV[6], 'm:' .. ARGV[4], (now + lease) .. ' ' .. ARGV[5])
if asking then redis.call('HSET', KEYS[1], 'pool', '1') end
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[8]))
return {'ok', 0}
";

// KEYS[1] route; ARGV: token, lease_ms, grace_ms, owner, epoch, member,
// pool ('1' or '0'). A pool's member missing from its pool's record (of
// the same owner) is written back into it.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local field = 'm:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], field) == 1 then
  redis.call('HSET', KEYS[1], field, (now + lease) .. ' ' .. ARGV[6])
  redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
  return 'ok'
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pooled = redis.call('HGET', KEYS[1], 'pool') == '1'
  if not (pooled and ARGV[7] == '1' and redis.call('HGET', KEYS[1], 'owner') == ARGV[4]) then
    return 'lost'
  end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'epoch', ARGV[5], field, (now + lease) .. ' ' .. ARGV[6])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'pool', '1') end
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
return 'reasserted'
";

// KEYS[1] route; ARGV: token, hold_ms. The member goes; with no member
// left the record stays as the owner's hold for hold_ms, or goes.
const RELEASE: &str = r"
if redis.call('HDEL', KEYS[1], 'm:' .. ARGV[1]) == 0 then return 0 end
local all = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(all) do
  if string.sub(f, 1, 2) == 'm:' then return 1 end
end
local hold = tonumber(ARGV[2])
if hold > 0 then redis.call('PEXPIRE', KEYS[1], hold) else redis.call('DEL', KEYS[1]) end
return 1
";

// KEYS[1] route. {'members', token, left, node, hop, protocol, ...} |
// {'held', left} | {'free'}; a member written without a protocol (an
// earlier version's) is 'http'.
const RESOLVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {'free'} end
local out = {'members'}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'm:' then
    local lease, node, hop = string.match(all[i + 1], '^(%d+) (%S+) (%S+)')
    local protocol = string.match(all[i + 1], '^%d+ %S+ %S+ %S+ (%S+)') or 'http'
    lease = tonumber(lease)
    if lease and lease > now then
      table.insert(out, string.sub(all[i], 3))
      table.insert(out, tostring(lease - now))
      table.insert(out, node)
      table.insert(out, hop)
      table.insert(out, protocol)
    end
  end
end
if #out > 1 then return out end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 0 end
return {'held', tostring(left)}
";

// KEYS[1] node; ARGV: token, hop, lease_ms. 1 if the name is (now) this
// process's, 0 if another live process has it.
const NODE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(%S+)') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[3]))
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_answers_are_read() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_found(&s(&["free"])).unwrap(), Found::Free);
        assert_eq!(
            parse_found(&s(&["held", "1500"])).unwrap(),
            Found::Held(Duration::from_millis(1500))
        );
        let found = parse_found(&s(&["members", "tok", "900", "a", "127.0.0.1:9", "tls"])).unwrap();
        assert_eq!(
            found,
            Found::Members(vec![Member {
                node: "a".into(),
                hop: "127.0.0.1:9".parse().unwrap(),
                token: "tok".into(),
                lease_left: Duration::from_millis(900),
                protocol: TunnelProtocol::Tls,
            }])
        );
        assert!(parse_found(&s(&["members", "tok"])).is_err());
        assert!(parse_found(&s(&["what"])).is_err());
    }
}
