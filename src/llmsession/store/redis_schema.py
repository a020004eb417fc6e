"""The Redis schema: key names, value encodings, and the one script that writes a session.

Key layout, under a prefix (``llmsession:`` by default)::

    schema               the layout version, SCHEMA_VERSION
    s:<session id>       hash: the record, version, ttl_seconds, last_activity_at,
                         and "due": where an Active session is in deadlines ('' or
                         missing for a session that is not there); "usage": the
                         sums of its gateway rounds' usage (missing: it has had
                         none, and so no turns either)
    r:<session id>       list: the rounds as JSON; seq i is at index i-1
    i:<session id>       hash: idempotency key -> the round as JSON, with the
                         session's delta_tokens and version right after it
    h:<session id>       hash: round seq -> that round's turn of the conversation
                         (MessagePack), and "<seq>:a" -> its answer as sent (the
                         body, or a stream's events); deleted when the session
                         leaves Active
    started:<tenant>     hash: idempotency key -> the session the gateway started
                         under it
    lock:<session id>    string: the token of the process holding the session's
                         turn (RedisStore.turn_lock), with a lease (PX)
    ix:all:<tenant>      sorted set: the tenant's sessions, member <created_at><id>
    ix:all:p<provider>:<tenant>, ix:all:m<model>:<tenant>
                         sorted sets: the same, for one provider or one model
                         (each a JSON string, which ends itself, so no name is
                         ambiguous whatever characters a label holds)
    ix:<state>:g<group>:<tenant>
                         sorted set: the same, for one state and one (provider,
                         model) group, written as in the counters' field names
    created              sorted set: every Created session, member <created_at><id>
    deadlines            sorted set: every Active session once, member <due><id>, due
                         at or before its deadline: a round, which moves the deadline
                         later, leaves the member; a sweep that finds it early moves it
    agg:<tenant>         hash: counters, field "<metric> <lo or hi> <group>", the group
                         being JSON [provider, model]; so its fields also name
                         every group the tenant has had a session of
    ts:<day>:<tenant>    hash: the rollup time series read (see store.rollup): the
                         hours of one UTC day (its start in epoch microseconds),
                         field "<metric> <lo or hi> <hour> <group>", the hour's
                         start in epoch microseconds; written with the round or
                         session
    tsd:<period>:<tenant>
                         hash: the same for the days of one period of 32 days
                         (from a multiple of 32 days since the epoch), field
                         "<metric> <lo or hi> <day> <group>"
    tenants              hash: tenant id -> created_at
    apikeys              hash: key id -> JSON [tenant, hash as hex, created_at]
    apikeys:revoked      hash: key id -> revoked_at
    keys:<tenant>        set: the tenant's key ids

Times are integer epoch microseconds. The sorted sets are ordered by member (all
scores 0) whose time part is fixed-width hex, so order and ranges are exact for
every Timestamp, not only up to the 2**53 a double score holds, and sessions
created in the same microsecond are ordered by id, as keyset cursors need.

The tenant id always ends a key name, so no two tenants' keys can coincide.

A session's state is listed at one level only, its group: a state change moves
it between two sorted sets, not six (all, provider, model; each per state). This
is what most of a sweep's time in Redis went to. A listing by state reads the
state's set of each group that matches its other filters (LIST_STATE) and merges
them, so every entry it reads is still a match; what it reads grows with the
number of groups the tenant has had.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

# The package has no type hints; _pack, _pack_for_lua and _unpack are its uses, typed.
import msgpack  # type: ignore[import-untyped]  # pyright: ignore[reportMissingTypeStubs]

from llmsession.errors import LLMSessionError, StoreError
from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.states import ALL_STATES, Created, SessionState, state_named
from llmsession.store.models import (
    NO_USAGE,
    KeyedRound,
    Round,
    StoredSession,
    Turn,
    TurnItems,
    UsageTotals,
)
from llmsession.store.rollup import (
    BUCKET_MICROS,
    TimeWindow,
    bucket_starts,
    round_amounts,
    session_amounts,
)
from llmsession.timestamps import Timestamp
from llmsession.usage import Usage

__all__ = [
    "ADD_KEY",
    "CAS",
    "EXTEND_LOCK",
    "FIELDS",
    "LIMB",
    "LIST_STATE",
    "METRICS",
    "READ",
    "READ_RANGE",
    "RELEASE_LOCK",
    "ROLLUP_METRICS",
    "SCHEMA_VERSION",
    "SET_SCHEMA",
    "TAKE_TURN",
    "UPGRADE_DUE",
    "UPGRADE_KEYED",
    "UPGRADE_LISTED",
    "USAGE_METRICS",
    "CasBatch",
    "Counters",
    "RedisKeys",
    "Script",
    "cas_arguments",
    "counter_group",
    "group_head",
    "group_tail",
    "keyed_round_json",
    "lex_time",
    "member",
    "member_id",
    "pack_turn",
    "parse_counters",
    "parse_keyed_round",
    "parse_rollup",
    "parse_round",
    "parse_session",
    "parse_session_values",
    "parse_time",
    "parse_turn",
    "parse_turn_items",
    "rollup_fields",
    "rollup_keys",
    "round_json",
    "split_row",
    "state_metric",
]

#: The key layout this code writes; data with a newer one is refused. Version 2
#: added the "due" field (version 1 kept every member of deadlines at the deadline
#: itself, so each round moved it); UPGRADE_DUE brings version 1 data up to it.
#: Version 3 lists states per group only (version 2 also kept them per tenant,
#: provider and model); RedisStore brings version 2 data up with UPGRADE_LISTED.
#: Version 4 keeps with each round under an idempotency key the session's
#: delta_tokens and version right after it (a replayed round's answer);
#: RedisStore brings version 3 data up with UPGRADE_KEYED.
#: Version 5 adds the gateway's keys and fields (usage, history, started-by
#: records, usage counters), all optional: version 4 data is version 5 data
#: without gateway sessions, so the upgrade only sets the number, after which an
#: older llmsession, which would refuse the usage counters, refuses the data.
#: Version 6 adds the rollup (ts: and tsd:); RedisStore back-fills it from
#: the stored sessions and rounds.
#: Version 7 keeps a turn's answer as sent (a streamed answer's whole event
#: stream) in a field of its own of the history hash ("<seq>:a"), apart from the
#: turn ("<seq>"), so that a gateway turn reads the history without it. A
#: version 6 turn holds its answer as an eighth field and is read as it is: the
#: upgrade only sets the number, after which an older llmsession, which would
#: not read the new turns, refuses the data.
SCHEMA_VERSION: Final = 7

# A member starts with a time as 16 hex digits; the offset makes every Timestamp
# (years 1 to 9999) non-negative, so text order is time order.
_LEX_OFFSET: Final = 2**62
_LEX_WIDTH: Final = 16

#: Counters are two limbs, lo in [0, LIMB) and hi: totals over many sessions
#: (each up to 2**63-1 tokens) never overflow Redis's 64-bit HINCRBY, and each
#: number the script compares stays exact in Lua's doubles.
LIMB: Final = 2**32
#: The counters of the gateway's usage, in UsageTotals order (as_tuple).
USAGE_METRICS: Final = ("u:in", "u:cached", "u:cache_write", "u:out", "u:reasoning", "u:missing")
#: What the counters of one (provider, model) group count.
METRICS: Final = (
    "rounds",
    "delta",
    "saved",
    *(f"n:{state.name}" for state in ALL_STATES),
    *USAGE_METRICS,
)

#: Counter values by (provider, model), then by metric.
Counters = dict[tuple[str, str], dict[str, int]]

#: The rollup's metrics, in store.rollup.ROLLUP_FIELDS order.
ROLLUP_METRICS: Final = ("rounds", "delta", "saved", *USAGE_METRICS, "started")
_DAY_MICROS: Final = BUCKET_MICROS["day"]
# The days of one tsd: hash: a day series of 366 days reads at most 13.
_PERIOD_MICROS: Final = 32 * _DAY_MICROS


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and the SHA1 that EVALSHA calls it by."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        """The script with its SHA1 computed here, as SCRIPT LOAD would."""
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


#: Compare-and-set of sessions, one or a batch: the only way a session is
#: inserted, changed or deleted. For each write in turn it checks the version,
#: then writes exactly what Python computed: it knows no rule of the state
#: machine, only how to store what it is given. Each write stands alone: one
#: whose version moved is skipped, the others still apply, so racing sweepers
#: expire each session exactly once.
#:
#: KEYS: none. The writes name their keys in ARGV[1]: as KEYS, each name cost the
#:       client more to send than the rest of a sweep's write of the session, and
#:       Redis Cluster, which KEYS would be for, is not supported anyway.
#: ARGV[1]: the writes as one MessagePack array (one argument, because a client
#:       spends far more on each argument than the script's C decoder does on an
#:       item; MessagePack, because both ends read and write it in C, several times
#:       faster than JSON). Counts are numbers, flags booleans, everything else
#:       text. First the number of writes, then per write: session hash; expected
#:       version ('' = the session must not exist); 'put' or 'del'; true if the
#:       write was computed from the one before it in this call (refused whenever
#:       that one is, though another writer may have stored the version it
#:       expects), else false; idempotency hash ('' if the write does not touch
#:       it); idempotency key ('' = none: if given and already in the idempotency
#:       hash, nothing is written); rounds list (or ''); round JSON ('' = none);
#:       what the idempotency hash keeps of the round under the key (see
#:       keyed_round_json; '' without a key);
#:       history hash ('' = untouched): with a turn, the round's turn goes into it
#:       under its seq (the rounds list's length once the round is in); without
#:       one, the session is leaving Active and its history is deleted (named
#:       only for a session that has had gateway rounds: a session without them
#:       ends at no cost more); turn (false = none: the packed Turn, without
#:       its answer body); started: false, or the tenant's started-by hash,
#:       followed by the key and the session id (an insert whose round started
#:       the session under that key: if the key is in the hash already, nothing
#:       is written and the write returns 2); with a turn, its answer body
#:       (bytes), stored in the history hash under "<seq>:a";
#:       unlock: false, or a session's turn lock followed by its holder's
#:       token: once the write is made, the lock is given back if it is still
#:       that holder's (as RELEASE_LOCK does), so the write that records a
#:       turn's round ends the turn in the same call;
#:       due: false to leave the session's member of deadlines as it is, else
#:       followed by the deadlines set and the session id: '' to remove the member,
#:       or the time part of the new one (the old one, found by the hash's "due"
#:       field, is removed; the new "due" is among the hash fields); n and n hash
#:       field/value pairs (only those that change); r and r pairs (sorted set,
#:       member) to remove; a and a pairs to add; m and m counter sections, each
#:       a counters hash, group, c and c triples (metric, lo increment in
#:       (-2**32, 2**32), hi increment), the fields being "<metric> lo <group>"
#:       and "<metric> hi <group>": first the tenant's counters, then the
#:       rollup's (whose group starts with the hour).
#: Returns per write 1 when written, 0 when not (version moved, or key used), 2
#: when not because the started-by key is used.
#: The items are read by position (p), not through a helper function: a Lua call
#: per item cost more than the writes themselves.
CAS: Final = Script.of("""
local a = cmsgpack.unpack(ARGV[1])
local p = 1
local results, ok = {}, true
for w = 1, a[1] do
  local session, expected, op, chained = a[p + 1], a[p + 2], a[p + 3], a[p + 4]
  local idem, idem_key, rounds, round = a[p + 5], a[p + 6], a[p + 7], a[p + 8]
  local keyed, history, turn, started = a[p + 9], a[p + 10], a[p + 11], a[p + 12]
  p = p + 12
  local start_key, start_id
  if started then
    start_key, start_id = a[p + 1], a[p + 2]
    p = p + 2
  end
  local body
  if turn then
    body = a[p + 1]
    p = p + 1
  end
  local unlock, holder = a[p + 1], nil
  p = p + 1
  if unlock then
    holder = a[p + 1]
    p = p + 1
  end
  local due = a[p + 1]
  p = p + 1
  local deadlines, id
  if due then
    deadlines, id = a[p + 1], a[p + 2]
    p = p + 2
  end
  p = p + 1
  local n = a[p]
  local stored = redis.call('HMGET', session, 'version', 'due')
  local current, was = stored[1], stored[2]
  if chained and not ok then
    -- It was computed from the refused write before it.
  elseif expected == '' then
    ok = not current
  else
    ok = current == expected
  end
  if ok and idem_key ~= '' and redis.call('HEXISTS', idem, idem_key) == 1 then ok = false end
  results[w] = ok and 1 or 0
  if ok and started and redis.call('HEXISTS', started, start_key) == 1 then
    ok = false
    results[w] = 2
  end
  if ok and due then
    -- The hash's new "due" is among its fields below ('' once it has no member).
    if was and was ~= '' then redis.call('ZREM', deadlines, was .. id) end
    if due ~= '' then redis.call('ZADD', deadlines, 0, due .. id) end
  end
  if ok then
    if op == 'del' then
      redis.call('DEL', session, rounds, idem)
    elseif n > 0 then
      redis.call('HSET', session, unpack(a, p + 1, p + 2 * n))
    end
    if round ~= '' then
      local seq = redis.call('RPUSH', rounds, round)
      if idem_key ~= '' then redis.call('HSET', idem, idem_key, keyed) end
      if turn then redis.call('HSET', history, seq, turn, seq .. ':a', body) end
    end
    if started then redis.call('HSET', started, start_key, start_id) end
    if unlock and redis.call('GET', unlock) == holder then redis.call('DEL', unlock) end
    if history ~= '' and not turn then
      -- Leaving Active: the conversation goes with it.
      redis.call('DEL', history)
    end
  end
  p = p + 2 * n + 1
  n = a[p]
  if ok then
    for j = p + 1, p + 2 * n, 2 do redis.call('ZREM', a[j], a[j + 1]) end
  end
  p = p + 2 * n + 1
  n = a[p]
  if ok then
    for j = p + 1, p + 2 * n, 2 do redis.call('ZADD', a[j], 0, a[j + 1]) end
  end
  p = p + 2 * n + 1
  for _ = 1, a[p] do
    p = p + 3
    local counters, group = a[p - 2], a[p - 1]
    n = a[p]
    if ok then
      for j = p + 1, p + 3 * n, 3 do
        local lo_field = a[j] .. ' lo ' .. group
        local hi = a[j + 2]
        local total = redis.call('HINCRBY', counters, lo_field, a[j + 1])
        -- Carry or borrow: lo was in [0, 2**32) and the increment in
        -- (-2**32, 2**32), so total is in (-2**32, 2**33).
        local carry = 0
        if total >= 4294967296 then
          carry = 1
        elseif total < 0 then
          carry = -1
        end
        if carry ~= 0 then
          redis.call('HINCRBY', counters, lo_field, -carry * 4294967296)
        end
        -- Most writes leave hi alone: its field's name is made only when it moves.
        if hi ~= '0' or carry ~= 0 then
          redis.call('HINCRBY', counters, a[j] .. ' hi ' .. group, hi + carry)
        end
      end
    end
    p = p + 3 * n
  end
end
return results
""")

#: The fields of a session hash, in the order READ is given them. All but the
#: last are required; "usage" is missing for a session without gateway rounds.
FIELDS: Final[tuple[str, ...]] = (
    "tenant",
    "provider",
    "model",
    "initial",
    "state",
    "created",
    "activated",
    "closed",
    "expired",
    "rounds",
    "delta",
    "version",
    "ttl",
    "last",
    "usage",
)
# How READ and READ_RANGE return a session: its values in FIELDS order as one
# string (see split_row), not one reply item per value. The client spent more on
# decoding fourteen reply items than on the rest of reading the session.
_ROW: Final = """
local function row(values)
  if not values[1] then return '' end
  for k = 1, #values do
    if not values[k] then values[k] = '\\30' end
  end
  return table.concat(values, '\\31')
end
"""

#: Reads sessions: KEYS the session hashes; ARGV the fields (FIELDS). Returns
#: per session its row (see split_row): '' for a missing session.
READ: Final = Script.of(
    _ROW
    + """
local rows = {}
for j = 1, #KEYS do rows[j] = row(redis.call('HMGET', KEYS[j], unpack(ARGV))) end
return rows
"""
)

#: Reads the next sessions of a global sorted set (created, deadlines) in one call,
#: so a sweep needs one round trip per batch before its compare-and-set.
#: KEYS[1]: the sorted set. ARGV: 1 low and 2 high bound (ZRANGEBYLEX syntax), 3 how
#: many, 4 the session hash name up to the id (prefix .. 's:'), then the FIELDS.
#: Returns {members, rows}: the members read, and per member the session's row
#: (see split_row; '' for a session that is gone). The session hashes are named
#: from the members, not given as KEYS: one more reason Redis Cluster is not
#: supported.
READ_RANGE: Final = Script.of(
    _ROW
    + """
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local rows = {}
for j = 1, #members do
  -- A member is the time as 16 hex digits, then the session id (see member()).
  rows[j] = row(redis.call('HMGET', ARGV[4] .. string.sub(members[j], 17), unpack(ARGV, 5)))
end
return {members, rows}
"""
)

#: Brings version 1 data up to version 2, a chunk at a time: gives each session in
#: deadlines the "due" field its member says, unless it has one (a version 2
#: writer set it since, and knows better). KEYS: 1 deadlines, 2 the schema key.
#: ARGV: 1 the low bound (ZRANGEBYLEX syntax), 2 how many, 3 the session hash name
#: up to the id. Returns the last member read; '' when none was left, and then
#: the schema key says 2 (if it still said 1).
UPGRADE_DUE: Final = Script.of("""
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
for j = 1, #members do
  local session = ARGV[3] .. string.sub(members[j], 17)
  if redis.call('EXISTS', session) == 1 then
    redis.call('HSETNX', session, 'due', string.sub(members[j], 1, 16))
  end
end
if #members == 0 then
  if redis.call('GET', KEYS[2]) == '1' then redis.call('SET', KEYS[2], '2') end
  return ''
end
return members[#members]
""")

#: The first members of one state's sets, of every group of a tenant that matches
#: the filters and has sessions in that state, read newest first: the caller merges
#: them (Lua compares strings by the server's locale, not byte by byte). Of
#: ``count`` wanted in all, each group gives its first ceil(count / groups): enough
#: unless the newest are bunched in a few groups, which the caller then reads on
#: (RedisStore._listed). KEYS[1]: the tenant's counters hash: its "n:<state>"
#: fields give the groups with sessions in that state (CAS moves a session between
#: state sets and these counts in one step, so a count of 0 is an empty set).
#: ARGV: 1 and 2 the set name before and after the group; 3 what the group must
#: start with, 4 what it must end with ('' for any); 5 high and 6 low bound
#: (ZREVRANGEBYLEX syntax), 7 count, 8 the state's metric ("n:<state>"). Returns
#: {names, lists, per}: the groups' sets, the members read of each, and how many
#: were asked of each.
LIST_STATE: Final = Script.of("""
local seen, names = {}, {}
local head, tail = ARGV[3], ARGV[4]
local lo, hi = ARGV[8] .. ' lo ', ARGV[8] .. ' hi '
local fields = redis.call('HGETALL', KEYS[1])
for j = 1, #fields, 2 do
  local field = fields[j]
  -- A group whose sessions all left the state keeps its count fields, at '0'.
  if fields[j + 1] ~= '0'
      and (string.sub(field, 1, #lo) == lo or string.sub(field, 1, #hi) == hi) then
    local group = string.sub(field, #lo + 1)
    if not seen[group] then
      seen[group] = true
      if (head == '' or string.sub(group, 1, #head) == head)
          and (tail == '' or (#group >= #tail and string.sub(group, -#tail) == tail)) then
        names[#names + 1] = ARGV[1] .. group .. ARGV[2]
      end
    end
  end
end
local per = math.max(1, math.ceil(tonumber(ARGV[7]) / math.max(1, #names)))
local lists = {}
for j = 1, #names do
  lists[j] = redis.call('ZREVRANGEBYLEX', names[j], ARGV[5], ARGV[6], 'LIMIT', 0, per)
end
return {names, lists, per}
""")

#: Lists version 2 sessions in their group's state set (version 3), each only if
#: it is still at the version it was read at: a session changed since was listed
#: by that change. KEYS: per session its hash, then the set. ARGV: per session
#: the version read, then the member.
UPGRADE_LISTED: Final = Script.of("""
for j = 1, #KEYS, 2 do
  if redis.call('HGET', KEYS[j], 'version') == ARGV[j] then
    redis.call('ZADD', KEYS[j + 1], 0, ARGV[j + 1])
  end
end
return 1
""")

#: Gives version 3 rounds under idempotency keys what version 4 keeps with them
#: (see keyed_round_json), each only if it is still as it was read: one written
#: since is a version 4 one already. KEYS: idempotency hashes. ARGV: per hash, n
#: and n triples (idempotency key, the value read, the new value).
UPGRADE_KEYED: Final = Script.of("""
local p = 0
for j = 1, #KEYS do
  local n = tonumber(ARGV[p + 1])
  for k = p + 2, p + 1 + 3 * n, 3 do
    if redis.call('HGET', KEYS[j], ARGV[k]) == ARGV[k + 1] then
      redis.call('HSET', KEYS[j], ARGV[k], ARGV[k + 2])
    end
  end
  p = p + 1 + 3 * n
end
return 1
""")

#: Sets the schema version, unless another process has set it since it was read
#: (to a newer one, say). KEYS[1]: the schema key. ARGV: 1 the version read, 2 the new one.
SET_SCHEMA: Final = Script.of("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return 1
""")

#: Adds an API key only if its id is new, and lists it under its tenant.
#: KEYS: 1 apikeys hash, 2 the tenant's key set. ARGV: 1 key id, 2 value.
ADD_KEY: Final = Script.of("""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
""")

#: Gives back a session's turn lock, only if it is still this holder's (its lease
#: may have run out and another process taken it since). KEYS[1]: the lock.
#: ARGV[1]: the holder's token. Returns 1 if it was released, else 0.
RELEASE_LOCK: Final = Script.of("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

#: Takes sessions' turn locks and reads, under each one taken, the session and its
#: history: the start of gateway turns, of one session or of many (the takes that
#: arrive while one call is in flight go together in the next). KEYS: per take,
#: the lock, the session hash and its history hash. ARGV: 1 the lease in
#: milliseconds, then per take the holder's token. Returns per take 0 if another
#: holder has the lock (nothing is read), else {row, history}: the session's row
#: (see split_row; '' for a missing session) and its history hash's turns, seq
#: and packed turn, flat, without the answer bodies ("<seq>:a", which only a
#: replay reads). The fields are in the source: sent as arguments, they would
#: cost the client more than the rest of the call.
TAKE_TURN: Final = Script.of(
    _ROW
    + "local fields = {"
    + ", ".join(f"'{name}'" for name in FIELDS)
    + "}\n"
    + """
local function turns(history)
  local seqs, flat = {}, {}
  for _, name in ipairs(redis.call('HKEYS', history)) do
    if not string.find(name, ':', 1, true) then seqs[#seqs + 1] = name end
  end
  -- HMGET in slices: unpack takes a few thousand values at most.
  for first = 1, #seqs, 1000 do
    local last = math.min(first + 999, #seqs)
    local packed = redis.call('HMGET', history, unpack(seqs, first, last))
    for i = first, last do
      flat[#flat + 1] = seqs[i]
      flat[#flat + 1] = packed[i - first + 1]
    end
  end
  return flat
end
local replies = {}
for j = 1, #KEYS, 3 do
  local k = (j + 2) / 3
  if redis.call('SET', KEYS[j], ARGV[k + 1], 'NX', 'PX', ARGV[1]) then
    replies[k] = {
      row(redis.call('HMGET', KEYS[j + 1], unpack(fields))),
      turns(KEYS[j + 2]),
    }
  else
    replies[k] = 0
  end
end
return replies
"""
)

#: Renews a turn lock's lease, only if it is still this holder's. KEYS[1]: the
#: lock. ARGV: 1 the holder's token, 2 the lease in milliseconds. Returns 1 if
#: renewed, 0 if the lock was lost.
EXTEND_LOCK: Final = Script.of("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
""")


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key names under one prefix."""

    prefix: str
    #: Every Created session, oldest first.
    created: str = field(init=False, repr=False, compare=False)
    #: Every Active session, by deadline.
    deadlines: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Named at every write: built once.
        object.__setattr__(self, "created", f"{self.prefix}created")
        object.__setattr__(self, "deadlines", f"{self.prefix}deadlines")

    def session(self, session_id: SessionId) -> str:
        """The hash of one session."""
        return _session_names(self.prefix, session_id)[1]

    @property
    def session_prefix(self) -> str:
        """The name of every session hash up to the session id."""
        return f"{self.prefix}s:"

    def rounds(self, session_id: SessionId) -> str:
        """The list of a session's rounds."""
        return _session_names(self.prefix, session_id)[2]

    def idempotency(self, session_id: SessionId) -> str:
        """A session's rounds by idempotency key."""
        return _session_names(self.prefix, session_id)[3]

    def history(self, session_id: SessionId) -> str:
        """A session's turns of the conversation, by round seq."""
        return f"{self.prefix}h:{_session_names(self.prefix, session_id)[0]}"

    def started(self, tenant_id: TenantId) -> str:
        """The sessions the gateway started for a tenant, by idempotency key."""
        return f"{self.prefix}started:{tenant_id}"

    def turn_lock(self, session_id: SessionId) -> str:
        """The lock held for a session's turn (see RedisStore.turn_lock)."""
        return f"{self.prefix}lock:{session_id}"

    def by_tenant(
        self, tenant_id: TenantId, *, provider: str | None = None, model: str | None = None
    ) -> str:
        """The sorted set of a tenant's sessions: all, or of one provider or one model
        (not both: no set is kept for the pair)."""
        if provider is not None and model is not None:
            raise ValueError("no sorted set is kept per provider and model together")
        where = "all"
        if provider is not None:
            where += ":p" + json.dumps(provider)
        elif model is not None:
            where += ":m" + json.dumps(model)
        return f"{self.prefix}ix:{where}:{tenant_id}"

    def by_state(
        self, tenant_id: TenantId, state: type[SessionState], provider: str, model: str
    ) -> str:
        """The sorted set of a tenant's sessions in one state and one (provider, model) group."""
        head, tail = self.state_set_parts(tenant_id, state)
        return head + counter_group(provider, model) + tail

    def state_set_parts(self, tenant_id: TenantId, state: type[SessionState]) -> tuple[str, str]:
        """The name of every by_state set of this tenant and state, before and after the group."""
        return f"{self.prefix}ix:{state.name}:g", f":{tenant_id}"

    def counters(self, tenant_id: TenantId) -> str:
        """The hash of a tenant's counters."""
        return _counters_name(self.prefix, tenant_id)

    def rollup(self, tenant_id: TenantId, day: int | str) -> str:
        """The hash of a tenant's rollup of the hours of one UTC day (its start, epoch
        microseconds)."""
        return f"{self.prefix}ts:{day}:{tenant_id}"

    def day_rollup(self, tenant_id: TenantId, period: int | str) -> str:
        """The hash of a tenant's rollup of the days of one 32-day period (its start,
        epoch microseconds)."""
        return f"{self.prefix}tsd:{period}:{tenant_id}"

    def tenant_keys(self, tenant_id: TenantId) -> str:
        """The set of a tenant's API key ids."""
        return f"{self.prefix}keys:{tenant_id}"

    @property
    def schema(self) -> str:
        """The layout version."""
        return f"{self.prefix}schema"

    @property
    def tenants(self) -> str:
        """Tenant id -> created_at."""
        return f"{self.prefix}tenants"

    @property
    def api_keys(self) -> str:
        """Key id -> JSON [tenant, hash as hex, created_at]."""
        return f"{self.prefix}apikeys"

    @property
    def revoked(self) -> str:
        """Key id -> revoked_at."""
        return f"{self.prefix}apikeys:revoked"


@functools.lru_cache(maxsize=16_384)
def _session_names(prefix: str, session_id: SessionId) -> tuple[str, str, str, str]:
    # A session's id as text and its three keys (RedisKeys.session, rounds,
    # idempotency): asked for at every write of it, and str() of a UUID costs
    # more than the lookup. (Its history is named only when a write needs it.)
    text = str(session_id)
    return text, f"{prefix}s:{text}", f"{prefix}r:{text}", f"{prefix}i:{text}"


@functools.lru_cache(maxsize=4096)
def _counters_name(prefix: str, tenant_id: TenantId) -> str:
    return f"{prefix}agg:{tenant_id}"


def lex_time(micros: int) -> str:
    """A time as the fixed-width text that starts a sorted-set member."""
    return format(micros + _LEX_OFFSET, f"0{_LEX_WIDTH}x")


def member(at: Timestamp, session_id: SessionId) -> str:
    """The sorted-set member of a session at a time: ordered by time, then by id."""
    return lex_time(at.epoch_micros) + str(session_id)


def member_id(text: str) -> SessionId:
    """The session id of a sorted-set member."""
    return SessionId.parse(text[_LEX_WIDTH:])


class CasBatch:
    """KEYS and ARGV of one CAS call, for one write or many, built a write at a time."""

    def __init__(self, keys: RedisKeys) -> None:
        self._names = keys
        #: KEYS: none, as the writes name their keys themselves (see CAS).
        self.keys: list[str] = []
        self._items: list[str | int | bool | bytes] = []
        self._count = 0

    def __len__(self) -> int:
        """The number of writes so far."""
        return self._count

    @property
    def args(self) -> list[bytes]:
        """ARGV: the writes as one MessagePack array."""
        return [_pack_for_lua([self._count, *self._items])]

    def _pairs(self, entries: list[tuple[str, str]]) -> None:
        # (sorted set, member) pairs, after their count.
        items = self._items
        items.append(len(entries))
        for pair in entries:
            items += pair

    def add(
        self,
        old: StoredSession | None,
        new: StoredSession | None,
        new_round: Round | None = None,
        *,
        absent_key: str | None = None,
        chained: bool = False,
        unlock: tuple[str, str] | None = None,
    ) -> None:
        """Write ``new`` (None: delete) over ``old`` (None: insert) if ``old`` is current.

        ``absent_key``: an idempotency key that must not be used yet (the round's
        own key is checked the same way). ``chained``: ``old`` is the previous
        write's ``new``; this write is refused whenever that one is. With ``new``
        the very object ``old``, the write only moves the session's member of
        deadlines to its deadline. The round's turn, if any, is written with it;
        a write that takes the session out of Active deletes its turns. An
        insert with a round that has an idempotency key records the key as the
        one that started the session (refused, returning 2, if it started one
        already). ``unlock``: a turn lock and its holder's token, given back
        once the write is made (if still that holder's).
        """
        some = new if new is not None else old
        if some is None:
            raise ValueError("a write needs an old or a new session")
        record = some.record
        names = self._names
        id_text, session_key, rounds_key, idempotency_key = _session_names(
            names.prefix, record.session_id
        )
        key = absent_key or (new_round.idempotency_key if new_round is not None else None) or ""
        due = _due(old, new)
        # A turn goes in, or (the session leaving Active) the history goes: only
        # a session with gateway rounds can have one (see _had_gateway). And an
        # insert with a keyed round: the gateway started the session under the key.
        history: str = ""
        packed: bytes | bool = False
        started: str | bool = False
        round_text = keyed = ""
        if new_round is not None:
            round_text = round_json(new_round)
            if new is not None and new_round.idempotency_key is not None:
                keyed = _keyed_text(round_text, new.record.delta_tokens, new.version)
            if new_round.turn is not None:
                history = names.history(record.session_id)
                packed = pack_turn(new_round.turn)
            if old is None and new_round.idempotency_key is not None:
                started = names.started(record.tenant_id)
        elif due == "" and old is not None and old.usage is not NO_USAGE:
            history = names.history(record.session_id)
        self._count += 1
        items = self._items
        items += (
            session_key,
            "" if old is None else str(old.version),
            "put" if new is not None else "del",
            chained,
            # '' for a key the write does not touch.
            idempotency_key if key or new is None else "",
            key,
            rounds_key if new_round or new is None else "",
            round_text,
            keyed,
            history,
            packed,
            started,
        )
        if started:
            items += (key, id_text)
        if new_round is not None and new_round.turn is not None:
            items.append(new_round.turn.answer_body)
        items += (False,) if unlock is None else unlock
        if due is None:
            items.append(False)
        else:
            items += (due, names.deadlines, id_text)
        # The stored hash is old's exactly when the version matches, so only
        # the fields that differ are sent.
        fields = (
            []
            if new is None
            else _session_fields(new)
            if old is None
            else _changed_fields(old, new)
        )
        if due is not None and new is not None:
            # '' once the session has no member: the script's mark for none.
            fields += ("due", due)
        items.append(len(fields) // 2)
        items += fields
        removed, added = _index_changes(names, old, new, id_text)
        self._pairs(removed)
        self._pairs(added)
        sections = _counter_sections(names, old, new, new_round)
        items.append(len(sections))
        for counters, group, increments in sections:
            items += (counters, group, len(increments))
            for metric, amount in increments:
                # Both parts take the amount's sign, so a small decrease is one
                # HINCRBY, not a wrapped increase and a carry.
                hi = amount // LIMB if amount >= 0 else -(-amount // LIMB)
                items += (metric, str(amount - hi * LIMB), str(hi))


_STARTED: Final = session_amounts()

_Section = tuple[str, str, list[tuple[str, int]]]


def _counter_sections(
    keys: RedisKeys, old: StoredSession | None, new: StoredSession | None, new_round: Round | None
) -> list[_Section]:
    """The counter sections of a CAS write: the tenant's counters, then the rollup's
    (a new session's start, and the round's amounts)."""
    some = new if new is not None else old
    assert some is not None  # CasBatch.add refuses a write with neither
    record = some.record
    sections = [
        (
            _counters_name(keys.prefix, record.tenant_id),
            counter_group(record.provider_id, record.model),
            _counter_increments(old, new),
        )
    ]
    if new is not None:
        if old is None:
            sections += _rollup_section(keys, new, new.record.created_at, _STARTED)
        if new_round is not None:
            amounts = round_amounts(new_round, new)
            sections += _rollup_section(keys, new, new_round.recorded_at, amounts)
    return sections


def _rollup_section(
    keys: RedisKeys, stored: StoredSession, at: Timestamp, amounts: Sequence[int]
) -> list[_Section]:
    """The counter sections of CAS adding ``amounts`` to the rollup of ``stored``'s
    tenant and group at the hour and at the day of ``at``."""
    record = stored.record
    hour, day = bucket_starts(at)
    group = counter_group(record.provider_id, record.model)
    increments = [
        (metric, amount) for metric, amount in zip(ROLLUP_METRICS, amounts, strict=True) if amount
    ]
    return [
        (keys.rollup(record.tenant_id, day), f"{hour} {group}", increments),
        (keys.day_rollup(record.tenant_id, _period(day)), f"{day} {group}", increments),
    ]


def _period(day: int) -> int:
    return day - day % _PERIOD_MICROS


def rollup_keys(keys: RedisKeys, tenant_id: TenantId, window: TimeWindow) -> list[str]:
    """The rollup hashes holding the window's buckets: those of its days for hours,
    of its periods for days."""
    if window.bucket == "hour":
        first = window.first - window.first % _DAY_MICROS
        return [keys.rollup(tenant_id, day) for day in range(first, window.end, _DAY_MICROS)]
    first = _period(window.first)
    return [
        keys.day_rollup(tenant_id, period) for period in range(first, window.end, _PERIOD_MICROS)
    ]


def parse_rollup(raw: Mapping[str, str]) -> list[tuple[int, str, str, list[int]]]:
    """A rollup hash as rows: bucket start, provider, model, amounts in ROLLUP_FIELDS
    order."""
    rows: dict[tuple[int, str, str], list[int]] = {}
    for name, value in raw.items():
        try:
            metric, limb, hour, labels = name.split(" ", 3)
            provider, model = json.loads(labels)
            index = ROLLUP_METRICS.index(metric)
            if limb not in ("lo", "hi"):
                raise ValueError(f"unknown limb {limb!r}")
            amount = _int(value) * (LIMB if limb == "hi" else 1)
            key = (_int(hour), str(provider), str(model))
        except (ValueError, TypeError) as error:
            raise StoreError(f"rollup field {name!r} = {value!r} is not valid: {error}") from None
        rows.setdefault(key, [0] * len(ROLLUP_METRICS))[index] += amount
    return [(hour, provider, model, amounts) for (hour, provider, model), amounts in rows.items()]


def rollup_fields(
    keys: RedisKeys, tenant_id: TenantId, hours: Mapping[tuple[int, str, str], Sequence[int]]
) -> dict[str, list[tuple[str, str]]]:
    """A tenant's rollup rows of hours (by hour, provider, model) as the fields of
    its rollup hashes, hours and days, by hash name, as CAS would have left them:
    the upgrade writes these."""
    days: dict[tuple[int, str, str], list[int]] = {}
    for (hour, provider, model), amounts in hours.items():
        total = days.setdefault((hour - hour % _DAY_MICROS, provider, model), [0] * len(amounts))
        for i, amount in enumerate(amounts):
            total[i] += amount
    hashes: dict[str, list[tuple[str, str]]] = {}

    def hour_hash(start: int) -> str:
        return keys.rollup(tenant_id, start - start % _DAY_MICROS)

    def day_hash(start: int) -> str:
        return keys.day_rollup(tenant_id, _period(start))

    named: tuple[tuple[Mapping[tuple[int, str, str], Sequence[int]], Callable[[int], str]], ...]
    named = ((hours, hour_hash), (days, day_hash))
    for rows, name_of in named:
        for (start, provider, model), amounts in rows.items():
            fields = hashes.setdefault(name_of(start), [])
            group = f"{start} {counter_group(provider, model)}"
            for metric, amount in zip(ROLLUP_METRICS, amounts, strict=True):
                if amount:
                    hi, lo = divmod(amount, LIMB)
                    fields.append((f"{metric} lo {group}", str(lo)))
                    if hi:
                        fields.append((f"{metric} hi {group}", str(hi)))
    return hashes


class _Packer(Protocol):
    def pack(self, obj: object) -> bytes: ...


# Redis's cmsgpack predates MessagePack's bin types: for it, bytes (a packed
# turn) go as a string, which Lua holds as bytes anyway. One Packer, kept: making
# one per call (as packb does) cost a round more than packing its write. Sharing
# it is safe: a pack runs in C, holding the GIL, and calls no Python code for
# the exact str, int, bool and bytes items written here.
_LUA_PACKER: Final = cast(_Packer, msgpack.Packer(use_bin_type=False))  # pyright: ignore[reportUnknownMemberType]


def _pack_for_lua(items: list[str | int | bool | bytes]) -> bytes:
    return _LUA_PACKER.pack(items)


def _pack(items: Sequence[str | int | bool | bytes | None]) -> bytes:
    return cast(bytes, msgpack.packb(items))  # pyright: ignore[reportUnknownMemberType]


def _unpack(raw: bytes) -> object:
    return cast(object, msgpack.unpackb(raw))  # pyright: ignore[reportUnknownMemberType]


def cas_arguments(
    keys: RedisKeys, old: StoredSession | None, new: StoredSession | None, new_round: Round | None
) -> tuple[list[str], list[bytes]]:
    """KEYS and ARGV for CAS of one write: ``new`` (None: delete) over ``old`` (None: insert)."""
    batch = CasBatch(keys)
    batch.add(old, new, new_round)
    return batch.keys, batch.args


def _index_changes(
    keys: RedisKeys, old: StoredSession | None, new: StoredSession | None, id_text: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (sorted set, member) pairs to remove and to add; ``id_text`` is str(session id)."""
    if old is None or new is None:
        return sorted(_index_entries(keys, old)), sorted(_index_entries(keys, new))
    before, after = old.record, new.record
    # A transition keeps the very objects it does not change, so `is` settles
    # nearly every comparison before == is asked (written out: a call per
    # comparison would cost more than the comparisons).
    if not (
        (before.tenant_id is after.tenant_id or before.tenant_id == after.tenant_id)
        and (before.provider_id is after.provider_id or before.provider_id == after.provider_id)
        and (before.model is after.model or before.model == after.model)
        and (before.created_at is after.created_at or before.created_at == after.created_at)
    ):
        old_entries, new_entries = _index_entries(keys, old), _index_entries(keys, new)
        return sorted(old_entries - new_entries), sorted(new_entries - old_entries)
    # The listing member stays; only the state's sets and the deadline can move.
    removed: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []
    if before.state is not after.state:
        listed = lex_time(after.created_at.epoch_micros) + id_text
        leaving, entering = _state_move(
            keys, after.tenant_id, (after.provider_id, after.model), (before.state, after.state)
        )
        removed += [(index, listed) for index in leaving]
        added += [(index, listed) for index in entering]
    return removed, added


def _due(old: StoredSession | None, new: StoredSession | None) -> str | None:
    """What becomes of the session's member of deadlines: None (it stays), '' (it
    goes) or the time part of the new one."""
    old_deadline = None if old is None else old.deadline
    new_deadline = None if new is None else new.deadline
    if new_deadline is None:
        return None if old_deadline is None else ""
    if old is new or old_deadline is None or new_deadline < old_deadline:
        return lex_time(new_deadline.epoch_micros)
    # Later (a round): the member may stay early, as the sweep checks each
    # session it finds against the session's own deadline. A round is spared
    # two sorted-set writes, a sweep moves a member at most once per TTL.
    return None


def _index_entries(keys: RedisKeys, stored: StoredSession | None) -> set[tuple[str, str]]:
    """The (sorted set, member) pairs a session is listed under (deadlines aside: _due)."""
    if stored is None:
        return set()
    record = stored.record
    listed = member(record.created_at, record.session_id)
    tenant, provider, model = record.tenant_id, record.provider_id, record.model
    # Every label filter (none, the provider, the model) has its own set, and
    # every state its set per group, so a listing reads only matches, but for a
    # provider given with a model and no state, which rarely leaves any out.
    entries = {
        (index, listed) for index in _listing_sets(keys, tenant, record.state.name, provider, model)
    }
    if record.state is Created:
        entries.add((keys.created, listed))
    return entries


# What a row holds for a field the hash lacks (see split_row).
_MISSING: Final = "\x1e"


@functools.lru_cache(maxsize=4096)
def _state_move(
    keys: RedisKeys,
    tenant: TenantId,
    labels: tuple[str, str],
    move: tuple[type[SessionState], type[SessionState]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # The sets a session leaves and enters when its state changes, its labels
    # (provider, model) staying: the same few for every session of a group, so kept.
    provider, model = labels
    before, after = move
    leaving = [keys.by_state(tenant, before, provider, model)]
    entering = [keys.by_state(tenant, after, provider, model)]
    if before is Created:
        leaving.append(keys.created)
    if after is Created:
        entering.append(keys.created)
    return tuple(leaving), tuple(entering)


@functools.lru_cache(maxsize=4096)
def _listing_sets(
    keys: RedisKeys, tenant: TenantId, state_name: str, provider: str, model: str
) -> tuple[str, ...]:
    # Few distinct combinations, each asked for at every insert: kept.
    return (
        keys.by_tenant(tenant),
        keys.by_tenant(tenant, provider=provider),
        keys.by_tenant(tenant, model=model),
        keys.by_state(tenant, state_named(state_name), provider, model),
    )


def _changed_fields(old: StoredSession, new: StoredSession) -> list[str]:
    """Name, value, name, value... of the fields of ``new``'s hash that differ from ``old``'s."""
    a, b = old.record, new.record
    if not (
        (a.tenant_id is b.tenant_id or a.tenant_id == b.tenant_id)
        and (a.provider_id is b.provider_id or a.provider_id == b.provider_id)
        and (a.model is b.model or a.model == b.model)
        and a.initial_tokens == b.initial_tokens
        and (a.created_at is b.created_at or a.created_at == b.created_at)
    ):
        # Never changed by the store; written whole if it ever is.
        return _session_fields(new)
    # Written out, not looped over: this runs at every write.
    changed: list[str] = []
    if a.state is not b.state:
        changed += ("state", b.state.name)
    if a.activated_at is not b.activated_at and a.activated_at != b.activated_at:
        changed += ("activated", _optional_micros(b.activated_at))
    if a.closed_at is not b.closed_at and a.closed_at != b.closed_at:
        changed += ("closed", _optional_micros(b.closed_at))
    if a.expired_at is not b.expired_at and a.expired_at != b.expired_at:
        changed += ("expired", _optional_micros(b.expired_at))
    if a.round_count != b.round_count:
        changed += ("rounds", str(b.round_count))
    if a.delta_tokens != b.delta_tokens:
        changed += ("delta", str(b.delta_tokens))
    if old.version != new.version:
        changed += ("version", str(new.version))
    if old.ttl_seconds != new.ttl_seconds:
        changed += ("ttl", str(new.ttl_seconds))
    last = new.last_activity_at
    if old.last_activity_at is not last and old.last_activity_at != last:
        changed += ("last", str(last.epoch_micros))
    if old.usage is not new.usage:
        # Written even when the sums stay 0: see _had_gateway.
        changed += ("usage", _usage_text(new.usage))
    return changed


def _session_fields(stored: StoredSession) -> list[str]:
    record = stored.record
    fields = {
        "tenant": record.tenant_id.value,
        "provider": record.provider_id,
        "model": record.model,
        "initial": str(record.initial_tokens),
        "state": record.state.name,
        "created": str(record.created_at.epoch_micros),
        "activated": _optional_micros(record.activated_at),
        "closed": _optional_micros(record.closed_at),
        "expired": _optional_micros(record.expired_at),
        "rounds": str(record.round_count),
        "delta": str(record.delta_tokens),
        "version": str(stored.version),
        "ttl": str(stored.ttl_seconds),
        "last": str(stored.last_activity_at.epoch_micros),
    }
    if _had_gateway(stored):
        fields["usage"] = _usage_text(stored.usage)
    return [text for pair in fields.items() for text in pair]


def _had_gateway(stored: StoredSession) -> bool:
    """Whether the session has had gateway rounds, and so may have turns.

    Its usage is the very NO_USAGE object until its first gateway round, which
    makes a new one (UsageTotals.plus), whatever the counts; the hash has a
    "usage" field from then on, and reads back as NO_USAGE only without one.
    So a session that never had one ends without naming its history."""
    return stored.usage is not NO_USAGE


def _usage_text(usage: UsageTotals) -> str:
    # The six counters in UsageTotals order, space-separated: one field, not six.
    return " ".join(map(str, usage.as_tuple()))


def _parse_usage(text: object) -> UsageTotals:
    if text == _MISSING:
        # The very object (see _had_gateway); a field of zeros is another.
        return NO_USAGE
    counts = _str(text).split(" ")
    if len(counts) != len(USAGE_METRICS):
        raise ValueError(f"usage {text!r:.80} is not {len(USAGE_METRICS)} counts")
    return UsageTotals(*map(_int, counts))


def parse_session(session_id: SessionId, row: Mapping[str, str]) -> StoredSession:
    """The stored session of a session hash; StoreError if it is not a valid one."""
    try:
        values = [row[name] for name in FIELDS[:-1]]
        values.append(row.get("usage", _MISSING))
    except KeyError as error:
        raise StoreError(f"session {session_id} is not a valid stored session: {error!r}") from None
    return parse_session_values(session_id, values)


def split_row(row: str) -> list[str] | None:
    """A session's values in FIELDS order from its row as READ and READ_RANGE return
    it; None for a session that is gone.

    The values are joined by the unit separator (\\x1f), which no value holds: a
    label is printable, everything else digits and names. A field the hash lacks
    is the record separator (\\x1e), which no parser takes but that of the one
    optional field, "usage"."""
    return row.split("\x1f") if row else None


def parse_session_values(session_id: SessionId, values: Sequence[object]) -> StoredSession:
    """The stored session of a session hash's values in FIELDS order (as READ returns
    them); StoreError if they are not a valid one."""
    try:
        (
            tenant,
            provider,
            model,
            initial,
            state,
            created,
            activated,
            closed,
            expired,
            rounds,
            delta,
            version,
            ttl,
            last,
            usage,
        ) = values
        record = SessionRecord(
            session_id=session_id,
            tenant_id=_tenant(_str(tenant)),
            provider_id=_str(provider),
            model=_str(model),
            initial_tokens=_int(initial),
            created_at=Timestamp(_int(created)),
            state=state_named(_str(state)),
            activated_at=None if activated == "" else Timestamp(_int(activated)),
            closed_at=None if closed == "" else Timestamp(_int(closed)),
            expired_at=None if expired == "" else Timestamp(_int(expired)),
            round_count=_int(rounds),
            delta_tokens=_int(delta),
        )
        return StoredSession(
            record, _int(version), _int(ttl), Timestamp(_int(last)), _parse_usage(usage)
        )
    except (ValueError, TypeError, LLMSessionError) as error:
        raise StoreError(f"session {session_id} is not a valid stored session: {error!r}") from None


@functools.lru_cache(maxsize=4096)
def _tenant(text: str) -> TenantId:
    # Few tenants, each read with every session: checked once, and the records
    # of one tenant share one TenantId, which later comparisons find by identity.
    return TenantId(text)


def _str(value: object) -> str:
    if type(value) is str:
        return value
    raise TypeError(f"{value!r:.80} is not text")


def round_json(round_: Round) -> str:
    """A round as stored: JSON [seq, delta_tokens, recorded_at, idempotency_key], and
    for a gateway round its usage: null, or [input_tokens, cached_input_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, the provider's object]."""
    # Formatted here, as json.dumps would, at a fraction of its cost per round.
    key = "null" if round_.idempotency_key is None else json.dumps(round_.idempotency_key)
    if not round_.gateway:
        return f"[{round_.seq}, {round_.delta_tokens}, {round_.recorded_at.epoch_micros}, {key}]"
    text = f"[{round_.seq}, {round_.delta_tokens}, {round_.recorded_at.epoch_micros}, {key}"
    usage = round_.usage
    if usage is None:
        return text + ", null]"
    counts = (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    )
    return f"{text}, {json.dumps([*counts, dict(usage.raw)])}]"


def parse_round(session_id: SessionId, raw: str) -> Round:
    """A round of ``session_id`` from its stored JSON."""
    try:
        return _round(session_id, json.loads(raw))
    except (ValueError, TypeError, LLMSessionError):
        raise StoreError(f"a round of session {session_id} is not valid: {raw[:200]!r}") from None


def keyed_round_json(round_: Round, session_delta_tokens: int, session_version: int) -> str:
    """A round under an idempotency key as stored: its JSON (see round_json) with the
    session's delta_tokens and version right after it appended."""
    return _keyed_text(round_json(round_), session_delta_tokens, session_version)


def _keyed_text(round_text: str, session_delta_tokens: int, session_version: int) -> str:
    # keyed_round_json of a round whose round_json is round_text.
    return f"{round_text[:-1]}, {session_delta_tokens}, {session_version}]"


def parse_keyed_round(session_id: SessionId, raw: str) -> KeyedRound:
    """A round of ``session_id`` under an idempotency key, from its stored JSON."""
    try:
        *values, session_delta, session_version = json.loads(raw)
        round_ = _round(session_id, values)
        return KeyedRound(round_, _int(session_delta), _int(session_version))
    except (ValueError, TypeError, LLMSessionError):
        raise StoreError(
            f"a round of session {session_id} under an idempotency key is not valid: {raw[:200]!r}"
        ) from None


def _round(session_id: SessionId, values: object) -> Round:
    # [seq, delta_tokens, recorded_at, key], and for a gateway round its usage.
    if not isinstance(values, list):
        raise TypeError("a round is not an array")
    seq, delta, recorded, key, *gateway = cast(list[object], values)
    if key is not None and not isinstance(key, str):
        raise TypeError("the idempotency key is not text")
    usage = None
    if gateway:
        (stored_usage,) = gateway
        if stored_usage is not None:
            if not isinstance(stored_usage, list):
                raise TypeError("the usage is not an array")
            *counts, provided = cast(list[object], stored_usage)
            if not isinstance(provided, dict):
                raise TypeError("the provider's usage is not an object")
            given, cached, written, output, reasoning = map(_int, counts)
            usage = Usage(
                given, cached, written, output, reasoning, cast(dict[str, object], provided)
            )
    return Round(
        session_id,
        _int(seq),
        _int(delta),
        Timestamp(_int(recorded)),
        key,
        usage,
        gateway=bool(gateway),
    )


def pack_turn(turn: Turn) -> bytes:
    """A turn as stored: a MessagePack array of its fields in order but the answer's
    body (stored apart, see CAS), the status a number, the rest text."""
    return _pack(
        [
            turn.endpoint,
            turn.request_hash,
            turn.request_items,
            turn.answer_items,
            turn.response_id,
            turn.answer_status,
            turn.answer_type,
        ]
    )


def parse_turn(session_id: SessionId, seq: int, raw: bytes, body: bytes | None) -> Turn:
    """Round ``seq``'s turn of ``session_id`` from what pack_turn stored, and its
    answer ``body`` (stored apart; None for a version 6 turn, which holds it)."""
    endpoint, request_hash, request_items, answer_items, response_id, status, answer_type, held = (
        _turn_fields(session_id, seq, raw)
    )
    answer = body if body is not None else held
    if answer is None:
        raise StoreError(f"the answer of round {seq} of session {session_id} is missing")
    return Turn(
        endpoint,
        request_hash,
        request_items,
        answer_items,
        response_id,
        status,
        answer_type,
        answer,
    )


def parse_turn_items(session_id: SessionId, seq: int, raw: bytes) -> TurnItems:
    """Round ``seq``'s turn of ``session_id`` without its answer as sent."""
    endpoint, _, request_items, answer_items, response_id, *_ = _turn_fields(session_id, seq, raw)
    return TurnItems(endpoint, request_items, answer_items, response_id)


_TurnFields = tuple[str, str, str, str, "str | None", int, str, "bytes | None"]


def _turn_fields(session_id: SessionId, seq: int, raw: bytes) -> _TurnFields:
    """What pack_turn stored, checked, and the answer's body where the turn holds it
    (version 6 stored it as an eighth field; None otherwise)."""
    try:
        fields = _unpack(raw)
        if not isinstance(fields, list) or len(cast(list[object], fields)) not in (7, 8):
            raise TypeError("not a turn's fields")
        values = cast(list[object], fields)
        response_id = values[4]
        body = values[7] if len(values) == 8 else None
        if not (response_id is None or type(response_id) is str):
            raise TypeError("the response id is not text")
        if len(values) == 8 and not isinstance(body, bytes):
            raise TypeError("the answer body is not bytes")
        return (
            _str(values[0]),
            _str(values[1]),
            _str(values[2]),
            _str(values[3]),
            response_id,
            _int(values[5]),
            _str(values[6]),
            cast("bytes | None", body),
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        raise StoreError(f"the turn of round {seq} of session {session_id} is not valid") from None


def _counter_contributions(stored: StoredSession | None) -> tuple[int, ...]:
    # What one session adds to its group's counters, in METRICS order;
    # tokens_saved comes from the record.
    if stored is None:
        return _NOTHING
    record = stored.record
    return (
        record.round_count,
        record.delta_tokens,
        record.tokens_saved,
        *_STATE_COUNTS[record.state],
        *stored.usage.as_tuple(),
    )


_NOTHING: Final = (0,) * len(METRICS)
_ROUNDS, _DELTA, _SAVED = METRICS[:3]
# Each state's own counter: the sessions in it.
_STATE_METRIC: Final = {state: f"n:{state.name}" for state in ALL_STATES}
# Each state's part of the counters: 1 in its own "n:<state>" field.
_STATE_COUNTS: Final = {
    state: tuple(int(other is state) for other in ALL_STATES) for state in ALL_STATES
}


def _counter_increments(
    old: StoredSession | None, new: StoredSession | None
) -> list[tuple[str, int]]:
    # How a write moves its group's counters: the new session's contributions
    # minus the old one's, so no rule is restated, only records compared.
    if old is not None and new is not None:
        # Written out for the writes of a stored session (all but inserts and
        # deletes): the same differences, without building both contributions.
        a, b = old.record, new.record
        moved = [
            (_ROUNDS, b.round_count - a.round_count),
            (_DELTA, b.delta_tokens - a.delta_tokens),
            (_SAVED, b.tokens_saved - a.tokens_saved),
        ]
        if a.state is not b.state:
            moved += ((_STATE_METRIC[a.state], -1), (_STATE_METRIC[b.state], 1))
        if old.usage is not new.usage:
            moved += zip(
                USAGE_METRICS,
                (y - x for x, y in zip(old.usage.as_tuple(), new.usage.as_tuple(), strict=True)),
                strict=True,
            )
        return [(metric, amount) for metric, amount in moved if amount]
    before, after = _counter_contributions(old), _counter_contributions(new)
    return [(metric, b - a) for metric, a, b in zip(METRICS, before, after, strict=True) if a != b]


@functools.lru_cache(maxsize=4096)
def counter_group(provider: str, model: str) -> str:
    """The part of a counter's field name that names its (provider, model) group."""
    return json.dumps([provider, model])


def state_metric(state: type[SessionState]) -> str:
    """The counter of the sessions in ``state`` (its fields: "<metric> lo|hi <group>")."""
    return _STATE_METRIC[state]


def group_head(provider: str) -> str:
    """What every counter_group of this provider starts with, and no other does.

    A JSON string ends at its first unescaped quote, so the provider's text
    cannot run on into the model's."""
    return "[" + json.dumps(provider) + ", "


def group_tail(model: str) -> str:
    """What every counter_group of this model ends with, and no other does."""
    return ", " + json.dumps(model) + "]"


def parse_counters(raw: Mapping[str, str]) -> Counters:
    """A counters hash as exact totals by (provider, model) and metric."""
    counters: Counters = {}
    for name, value in raw.items():
        try:
            metric, limb, labels = name.split(" ", 2)
            provider, model = json.loads(labels)
            if metric not in METRICS or limb not in ("lo", "hi"):
                raise ValueError(f"unknown metric {metric!r} or limb {limb!r}")
            amount = _int(value) * (LIMB if limb == "hi" else 1)
        except (ValueError, TypeError) as error:
            raise StoreError(f"counter {name!r} = {value!r} is not valid: {error}") from None
        group = counters.setdefault((str(provider), str(model)), dict.fromkeys(METRICS, 0))
        group[metric] += amount
    return counters


def _int(value: object) -> int:
    # Only what this module writes: an optional minus sign and ASCII digits.
    if type(value) is int:
        return value
    if type(value) is str and value.isascii() and value.removeprefix("-").isdigit():
        return int(value)
    raise ValueError(f"{value!r:.80} is not an integer")


def _optional_micros(at: Timestamp | None) -> str:
    return "" if at is None else str(at.epoch_micros)


def parse_time(text: str) -> Timestamp:
    """A time as stored: integer epoch microseconds."""
    return Timestamp(_int(text))
