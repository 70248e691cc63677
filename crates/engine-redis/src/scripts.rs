//! The engine's Lua scripts (streams and presence) and how they run: by SHA-1 with a reload when
//! Redis does not know them, with TTL arguments in milliseconds. Streams ([`crate::history`]) and
//! presence ([`crate::presence`]) both sit above this module.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use switchboard_engine::EngineError;

use crate::Shard;

// Streams (crate::history).
/// KEYS: stream, meta, result. ARGV: publication, history size (0: none), history ttl ms, meta ttl
/// ms, epoch for a new stream, pub/sub channel, `publish` or `spublish`, result ttl ms (0: no
/// idempotency key). Returns `offset:epoch`.
const PUBLISH: &str = r"
local result_ttl = tonumber(ARGV[8])
if result_ttl > 0 then
  local done = redis.call('get', KEYS[3])
  if done then return done end
end
local offset = 0
local epoch = ''
local size = tonumber(ARGV[2])
if size > 0 then
  if redis.call('hsetnx', KEYS[2], 'e', ARGV[5]) == 1 then
    redis.call('del', KEYS[1])
  end
  offset = redis.call('hincrby', KEYS[2], 's', 1)
  epoch = redis.call('hget', KEYS[2], 'e')
  redis.call('xadd', KEYS[1], 'MAXLEN', size, '*', 'o', string.format('%d', offset), 'd', ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[3])
  redis.call('pexpire', KEYS[2], ARGV[4])
end
local result = string.format('%d', offset) .. ':' .. epoch
redis.call(ARGV[7], ARGV[6], 'p' .. result .. ':' .. ARGV[1])
if result_ttl > 0 then
  redis.call('set', KEYS[3], result, 'PX', result_ttl)
end
return result
";

/// KEYS: stream, meta. ARGV: epoch for a new stream, meta ttl ms, history ttl ms, `1` to read the
/// publications. Returns epoch, offset, then offset and body of each publication kept.
const READ: &str = r"
if redis.call('hsetnx', KEYS[2], 'e', ARGV[1]) == 1 then
  redis.call('hset', KEYS[2], 's', 0)
  redis.call('del', KEYS[1])
  redis.call('pexpire', KEYS[2], ARGV[2])
end
local meta = redis.call('hmget', KEYS[2], 'e', 's')
local out = {meta[1], meta[2] or '0'}
if ARGV[4] == '1' then
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local min = now - tonumber(ARGV[3]) + 1
  if min < 0 then min = 0 end
  local entries = redis.call('xrange', KEYS[1], string.format('%d', min), '+')
  for _, e in ipairs(entries) do
    local f = e[2]
    out[#out + 1] = f[2]
    out[#out + 1] = f[4]
  end
end
return out
";

// Presence (crate::presence).
/// KEYS: presence, expiry. ARGV: ttl ms, then client id and info pairs.
const PRESENCE_ADD: &str = r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], string.format('%d', now + ttl), ARGV[i])
end
redis.call('pexpire', KEYS[1], ARGV[1])
redis.call('pexpire', KEYS[2], ARGV[1])
return 1
";

/// KEYS: presence, expiry. ARGV: client id.
const PRESENCE_REMOVE: &str = r"
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
";

/// KEYS: presence, expiry. Drops expired entries; returns the rest as id, info pairs.
const PRESENCE_GET: &str = r"
local t = redis.call('time')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for _, client in ipairs(expired) do
  redis.call('hdel', KEYS[1], client)
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
return redis.call('hgetall', KEYS[1])
";

/// The engine's Lua scripts, with their SHA-1 for EVALSHA.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) read: Script,
    pub(crate) presence_add: Script,
    pub(crate) presence_remove: Script,
    pub(crate) presence_get: Script,
}

impl Scripts {
    /// Every script, its SHA-1 computed once (loaded into Redis on first use).
    pub(crate) fn new() -> Self {
        Self {
            publish: Script::from_lua(PUBLISH),
            read: Script::from_lua(READ),
            presence_add: Script::from_lua(PRESENCE_ADD),
            presence_remove: Script::from_lua(PRESENCE_REMOVE),
            presence_get: Script::from_lua(PRESENCE_GET),
        }
    }
}

/// Runs `script` on `shard` (loading it first if Redis does not know it, e.g. after a restart).
pub(crate) async fn run<R: FromValue>(
    shard: &Shard,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, EngineError> {
    let client = shard.commands()?;
    script
        .evalsha_with_reload(client, keys, args)
        .await
        .map_err(|e| shard.error(&e))
}

/// Milliseconds for a TTL argument: at least 1 (0 would delete the key at once).
pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().clamp(1, u128::from(u64::MAX)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_never_zero_milliseconds() {
        assert_eq!(millis(Duration::ZERO), "1");
        assert_eq!(millis(Duration::from_secs(2)), "2000");
    }
}
