"""``RedisPubSubLayer``: several daphne processes, on one host or many, sharing Redis.

Built on channels-redis's pub/sub layer, which keeps group membership in the
subscribing process rather than in Redis, so nothing expires and nothing
goes stale when a process dies; its core ``RedisChannelLayer`` drops messages
silently once its shared per-process inbox is full (capacity 100) and costs
about 17 Redis commands per delivered message.

What the subclasses change, each measured with ``python -m bench``:

- Pub/sub publishes are pipelined: the library sends one PUBLISH at a time
  under a lock, one round trip each; here every command waiting at that
  moment (publishes, the keeping script) goes out in one write on one
  connection held for them, packed by hiredis, without redis-py's
  ``Pipeline`` and its per-batch pool checkout (so redis-py 8's pool limit of
  100, which raises instead of waiting, cannot be reached however many
  clients send at once). Commands run in the order queued, whether or not
  anyone waits for an answer before queueing the next: a script Redis no
  longer has (NOSCRIPT, after a restart) goes again as EVAL ahead of what
  was queued behind it, and a notification Redis is too full to keep
  (OOM) goes out as a plain PUBLISH in its place.
- Blocking reads instead of the library's 0.1 s polling per message.
- Each connection's queue is bounded; a message that does not fit is counted.
- A consumer that goes away no longer prints ``CancelledError`` tracebacks:
  its channel is unsubscribed in a task of its own, and a failure there is
  one WARNING line.
- A subscription counts once Redis confirmed it (redis-py's ``subscribe``
  only sends the command): ``group_add`` returns when the group's messages
  really reach this process.
- Notifications are kept in Redis, shared by every process (see "Kept
  notifications" below).

Kept notifications. One Lua script per send appends the notification to
the id's history (a stream of the newest ``HISTORY_SIZE``, each entry
dropped ``HISTORY_TTL`` seconds after it was sent), publishes it with its
position, and, only if no process was subscribed to the id's group, marks it
pending: deciding and acting in one atomic step, so that exactly one of
"live" and "pending" happens however sends and registrations race. A
registration subscribes, waits for Redis's confirmation, and only then takes
what is pending (another script: take and delete). A notification that
reaches a process whose last registrant of the id has just left is made
pending again (a sorted set: made pending by two processes, it is still one),
and every process with a registrant of the id is told so (a small message
on the group's channel), so that a registration that came meanwhile takes
it. After a reconnect, redis-py subscribes again; what was sent to a group
before that took effect reached no process and is pending, so the process
takes it for its registrants then. Positions are ``<epoch>.<tag>:<stream id>``
(the tag, a digest of the group, keeps ids' positions apart);
the epoch is made when a Redis server first keeps a notification, so
positions never repeat after a restart or a flush. If Redis refuses to keep
(``maxmemory`` reached), notifications are published live only.

These subclasses use members of channels-redis that are not its public API;
:data:`LIBRARY_INTERNALS` names each one, and a test checks that the
installed channels-redis still has them, so an upgrade fails in that one test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, decode_hosts
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifications import metrics
from notifications.conf import conf
from notifications.exceptions import one_line
from notifications.layers import (
    DEFAULT_CAPACITY,
    META_TTL,
    ChannelQueue,
    Gaps,
    Kept,
    KeptNotification,
    Replay,
    count_undeliverable,
    position_order,
)

logger = logging.getLogger(__name__)

# The members of channels-redis these classes use or override beyond its public API, by class.
LIBRARY_INTERNALS: dict[str, tuple[str, ...]] = {
    "RedisSingleShardConnection": (
        "host",
        "channel_layer",
        "_redis",
        "_pubsub",
        "_ensure_redis",
        "_do_receiving",
        "_receive_message",
        "publish",
        "subscribe",
        "_lock",
        "_subscribed_to",
        "_ensure_receiver",
        "unsubscribe",
        "flush",
    ),
    "RedisPubSubLoopLayer": (
        "_shards",
        "_get_shard",
        "channels",
        "groups",
        "channel_layer",
        "_subscribe_to_channel",
        "receive",
        "group_discard",
        "group_send",
        "prefix",
        "_get_group_channel_name",
    ),
    "RedisPubSubChannelLayer": ("_layers", "_args", "_kwargs", "_get_layer", "serialize", "deserialize"),
    "channels_redis.utils": ("_wrap_close",),
}


# A kept notification travels as KEPT_MARKER, its position, KEPT_MARKER, then the
# serialised event; a serialised event (a msgpack map, or a Fernet token) never
# starts with a NUL byte.
KEPT_MARKER = b"\x00"
SUBSCRIBE_TIMEOUT = 10.0  # seconds Redis may take to confirm a subscription
# A pub/sub connection quiet this long is pinged; quiet as long again, it is dropped and made again.
HEALTH_CHECK_INTERVAL = 5.0
PENDING_SCAN_LIMIT = 10_000  # pending sets the admin's dashboard looks at, per Redis server
COMMAND_TIMEOUT = 10.0  # seconds a pipeline of commands (a send, a resume) may wait for Redis's replies
# Seconds between the publisher's watchdog ticks (a quarter of COMMAND_TIMEOUT if that is shorter): a
# batch gives up at most a tick after its COMMAND_TIMEOUT, and an idle publisher ends within two ticks.
WATCHDOG_TICK = 1.0
# Seconds to open a connection to a Redis server (or a sentinel), and to wait for a sentinel's answer,
# never retried with backoff. Generous: a process busy with a burst of connections may take a while to
# see a connection complete. A server found down is not waited for again (see _Shard.down).
CONNECT_TIMEOUT = 5.0
SUBSCRIBE_RETRY_SECONDS = 1.0  # how often a group whose SUBSCRIBE failed is subscribed again

# Queued for a consumer that waits on an empty queue when a gap was marked for it (see Gaps).
GAP_MARK = b"\x02"

# A published message that says "pending notifications of this group are waiting":
# a process with registrants of the group takes them and hands them over.
PENDING_AVAILABLE = b"\x01"

# Lua functions the scripts below share.
# older(a, b): whether stream id a sorts before b.
# pend(key, id, size, ttl): add stream id ``id`` to the pending set ``key``, keep its newest ``size``.
# A pending id's score is its n (the id's count, "<ms>-<n>"): n grows with every notification of
# the id, so it orders them even within one millisecond, where the ids' text does not ("-10" before
# "-9"). Sets scored by milliseconds (before n) are scored again first.
# trim(key, size, cutoff): drop the history's entries beyond the newest ``size`` and those sent
# before ``cutoff`` (ms); the newest dropped id, or false. Oldest first, so that an entry still
# kept means every later one is kept too: what a resume relies on.
LUA_FUNCTIONS = """
local function epoch_of(key)
  local epoch = redis.call('GET', key)
  if not epoch then
    local t = redis.call('TIME')
    epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
    redis.call('SET', key, epoch)
  end
  return epoch
end
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local function pend(key, id, size, ttl)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  if top and tonumber(top) >= 1e11 then
    for _, kept in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      redis.call('ZADD', key, tonumber(string.match(kept, '-(%d+)$')), kept)
    end
  end
  redis.call('ZADD', key, tonumber(string.match(id, '-(%d+)$')), id)
  redis.call('ZREMRANGEBYRANK', key, 0, -size - 1)
  redis.call('PEXPIRE', key, ttl)
end
local function trim(key, size, cutoff)
  local dropped = false
  local excess = redis.call('XLEN', key) - size
  if excess > 0 then
    local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
    dropped = gone[#gone][1]
    redis.call('XTRIM', key, 'MAXLEN', size)
  end
  local threshold = string.format('%d-0', cutoff)
  -- The oldest entry first: mostly nothing is old enough to go, and that is the cheap question
  -- (XREVRANGE from a bound below every entry walks the stream: several times the cost).
  local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if oldest and older(oldest[1], threshold) then
    dropped = redis.call('XREVRANGE', key, '(' .. threshold, '-', 'COUNT', 1)[1][1]
    redis.call('XTRIM', key, 'MINID', threshold)
  end
  return dropped
end
"""

# KEYS: the group's channel, its history (a stream), its pending set (a sorted set), the epoch, its meta
# (a hash: "last", the newest stream id; "floor", nothing after it was dropped).
# Stream ids are "<milliseconds>-<n>", n counting the id's notifications while its meta is remembered.
# ARGV: the payload to publish, HISTORY_SIZE, HISTORY_TTL in ms, 1 if pending is on, META_TTL in ms, the group's tag.
# Returns {subscribers that received it, its position}.
SEND_KEPT = (
    LUA_FUNCTIONS
    + """
local epoch = epoch_of(KEYS[4])
local fresh = redis.call('EXISTS', KEYS[2]) == 0
-- The stream id is <milliseconds>-<n>: the time it was sent (never before the previous one's),
-- and n counts the id's notifications, so that a connection can tell how many it missed.
local prev = redis.call('HGET', KEYS[5], 'last') or '0-0'
if prev == '0-0' then
  -- Nothing remembered (the meta expired before the history, or a registration remembered the
  -- beginning): the count goes on from the history's newest entry, if any. Otherwise "last" is it,
  -- written with every entry.
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  if top then prev = top[1] end
end
local prev_ms, prev_n = string.match(prev, '^(%d+)-(%d+)$')
local t = redis.call('TIME')
local sent_at = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(prev_ms))
local id = redis.call('XADD', KEYS[2], string.format('%d-%d', sent_at, tonumber(prev_n) + 1), 'p', ARGV[1])
-- Each entry expires HISTORY_TTL after it was sent, not when the key does.
local floor = trim(KEYS[2], tonumber(ARGV[2]), sent_at - tonumber(ARGV[3]))
if fresh and not floor then
  -- A new history: what came before it is gone, up to the newest remembered (or unknown).
  floor = redis.call('HGET', KEYS[5], 'last') or id
end
if floor then
  redis.call('HSET', KEYS[5], 'last', id, 'floor', floor)
else
  redis.call('HSET', KEYS[5], 'last', id)
end
redis.call('PEXPIRE', KEYS[5], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local position = epoch .. '.' .. ARGV[6] .. ':' .. id
local received = redis.call('PUBLISH', KEYS[1], '\0' .. position .. '\0' .. ARGV[1])
if received == 0 and ARGV[4] == '1' then
  pend(KEYS[3], id, tonumber(ARGV[2]), ARGV[3])
end
return {received, position}
"""
)

# KEYS: the epoch, the group's meta. ARGV: META_TTL in ms. Returns {epoch, the newest stream id}.
# An id with nothing remembered gets "0-0", the beginning: remembered from now on, so that a resume
# from it is recovered as long as nothing it missed was dropped.
NEWEST = (
    LUA_FUNCTIONS
    + """
local epoch = epoch_of(KEYS[1])
local last = redis.call('HGET', KEYS[2], 'last')
if not last then
  last = '0-0'
  redis.call('HSET', KEYS[2], 'last', last)
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {epoch, last}
"""
)

# KEYS: the group's history, its pending set, the epoch, its meta.
# ARGV: since's epoch and stream id ('' for none), start's epoch and stream id ('' for none), HISTORY_TTL in ms,
# 1 to take the pending set. Returns {1 if recovered, the epoch, the newest stream id or nil, then stream id,
# payload, stream id, payload... (not in order when pending ones older than the start are among them)}.
RESUME = (
    LUA_FUNCTIONS
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[3]) or ''
local dropped = trim(KEYS[1], 1e15, now - tonumber(ARGV[5]))
if dropped then redis.call('HSET', KEYS[4], 'floor', dropped) end
local meta = redis.call('HMGET', KEYS[4], 'floor', 'last')
local floor, last = meta[1], meta[2]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists then floor = last end
local since = ARGV[2]
-- Recovered: nothing after since was dropped, since is not newer than the newest, and it is a
-- position this id had (kept, the newest dropped, or the newest): not another id's.
local recovered = ARGV[1] ~= '' and ARGV[1] == epoch and last and floor
  and not older(last, since) and not older(since, floor)
  and (since == floor or since == last or (exists and redis.call('XRANGE', KEYS[1], since, since)[1] ~= nil))
local after = false
if recovered then after = since elseif ARGV[3] == epoch and ARGV[4] ~= '' then after = ARGV[4] end
local out = {recovered and 1 or 0, epoch, last}
if not last then out[3] = '' end
local chosen = {}
if exists then
  local entries
  if after then
    entries = redis.call('XRANGE', KEYS[1], '(' .. after, '+')
  else
    entries = redis.call('XRANGE', KEYS[1], '-', '+')
  end
  for _, entry in ipairs(entries) do
    chosen[entry[1]] = true
    table.insert(out, entry[1])
    table.insert(out, entry[2][2])
  end
end
local pending = redis.call('ZRANGE', KEYS[2], 0, -1)
if #pending > 0 and ARGV[6] == '1' then
  redis.call('DEL', KEYS[2])
  if not recovered and exists then
    for _, id in ipairs(pending) do
      if not chosen[id] then
        local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
        if entry then
          table.insert(out, entry[1])
          table.insert(out, entry[2][2])
        end
      end
    end
  end
end
return out
"""
)

# KEYS: the group's history, its pending set, the epoch. ARGV: HISTORY_TTL in ms, 1 to take (delete the set),
# the group's tag.
# Returns position, payload, position, payload... of the pending ones still kept, oldest first.
TAKE_PENDING = """
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
if #ids == 0 then return {} end
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('GET', KEYS[3]) or ''
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local taken = {}
for _, id in ipairs(ids) do
  if tonumber(string.match(id, '^(%d+)')) > oldest then
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
      table.insert(taken, epoch .. '.' .. ARGV[3] .. ':' .. id)
      table.insert(taken, entry[2][2])
    end
  end
end
return taken
"""

# KEYS: the group's channel, its pending set. ARGV: the stream id, HISTORY_TTL in ms, HISTORY_SIZE.
# Pending again (once, however many processes ask), and every process with a registrant of the
# group is told, so that one that registered meanwhile takes it.
MAKE_PENDING_AGAIN = (
    LUA_FUNCTIONS
    + """
pend(KEYS[2], ARGV[1], tonumber(ARGV[3]), ARGV[2])
redis.call('PUBLISH', KEYS[1], '\1')
return 1
"""
)

# KEYS: the epoch, the replication history the epoch belongs to.
# ARGV: the server's replication id now, and the one it had before (master_replid2).
# Run on every new connection to a master. A server that was a replica of the epoch's history and has
# been promoted since (a failover) reports that history as its previous one; its copy may lack the old
# master's last writes (replication is asynchronous), so a new epoch begins: no resume across the
# failover claims to have recovered everything. A master without replicas restarted from its own
# files (a new replication id, no previous one) keeps the epoch: what it kept is what it had. A master
# that had replicas reports its old id as the previous one after a restart too, and so also starts a
# new epoch: resumes across the restart say "not recovered", the safe side.
NEW_HISTORY = """
local known = redis.call('GET', KEYS[2])
if known == ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
if not known or known ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], string.format('%x%05x', tonumber(t[1]), tonumber(t[2])))
return 1
"""

# A command as Redis receives it: its name and arguments (str, bytes or int), or already packed in
# Redis's protocol (RESP), as the hot path queues SEND_KEPT.
Command = tuple[Any, ...] | bytes
# What may answer a command's error reply with a command to send in its place (or None: fail with it).
Again = Callable[[ResponseError, Command], Command | None]
# A command in a shard's outbox: the command, the future of its reply, what turns the reply into the future's
# result (or None), and what may answer an error reply with another command (or None).
Queued = tuple[Command, "asyncio.Future[Any]", Callable[[Any], Any] | None, Again | None]
# SEND_KEPT's keys and arguments after its payload, in the order the script reads them (see send_kept_soon).
KEPT_KEYS = 5
KEPT_ARGS_AFTER_PAYLOAD = 5
# Groups whose packed SEND_KEPT head a layer remembers; forgotten all at once beyond this (see _kept_head).
KEPT_HEADS_CACHED = 4096


def _stream_order(position: str) -> tuple[int, int]:
    milliseconds, _, sequence = position.rpartition(":")[2].partition("-")
    return int(milliseconds), int(sequence or 0)


def _tag(group: str) -> str:
    """A short digest of the group that its positions carry after the epoch.

    Stream ids are times, so two ids' histories may hold the same one; with
    the tag, a position of one id is never taken for a position of another.
    """
    return hashlib.sha256(group.encode()).hexdigest()[:8]


def _as_stream_id(position: str | None, group: str) -> tuple[str, str]:
    """(epoch, stream id) of a position of ``group`` for the scripts; ('', '') for None or anything else."""
    order = position_order(position)
    if order is None or order[1] >= 2**53 or order[2] >= 2**53:  # Lua's numbers are doubles
        return "", ""
    epoch, dot, tag = order[0].rpartition(".")
    if not (dot and epoch and tag == _tag(group)):
        return "", ""
    return epoch, f"{order[1]}-{order[2]}"


def shard_name(host: dict[str, Any]) -> str:
    """How a Redis server of the layer is named in logs and answers: its address without a password."""
    if "address" in host:
        return _without_password(str(host["address"]))
    if "master_name" in host:
        sentinels = ",".join(f"{h}:{p}" for h, p in host.get("sentinels", ()))
        return f"master {host['master_name']} of sentinels {sentinels}"
    return f"{host.get('host', 'localhost')}:{host.get('port', 6379)}"


def shard_identity(host: dict[str, Any]) -> str:
    """What places ids on a shard: its address, without a password (which may change) or options."""
    if "address" in host:
        parts = urlsplit(str(host["address"]))
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
    return shard_name(host)


def client_name(prefix: str, process_id: str) -> str:
    """The name a process's Redis connections carry (CLIENT SETNAME), so that others can close them."""
    return "".join(c if c.isascii() and c.isalnum() or c in "-_.:" else "_" for c in f"{prefix}process:{process_id}")


def _fast_failing(host: dict[str, Any], on_connect: Callable[[Any], Any], name: str) -> dict[str, Any]:
    """``host`` with the connection options every Redis client of the layer uses (see CONNECT_TIMEOUT)."""
    host = {"socket_connect_timeout": CONNECT_TIMEOUT, **host, "redis_connect_func": on_connect, "client_name": name}
    if "master_name" in host:
        host["sentinel_kwargs"] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            **(host.get("sentinel_kwargs") or {}),
        }
    return host


class _Shard(RedisSingleShardConnection):
    """One Redis connection pair with pipelined commands, confirmed subscriptions and bounded delivery."""

    _pubsub: Any

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self.name = shard_name(host)
        self.host = _fast_failing(host, self._on_connect, client_name(channel_layer.prefix, channel_layer.process_id))
        self._outbox: deque[Queued] = deque()
        self._publisher: asyncio.Future[None] | None = None
        # The publisher's state, as its watchdog reads it (see _publish_waiting): the future it lingers on
        # for the next command, the loop time its batch in flight gives up at, batches sent (and as of the
        # last tick), and whether the watchdog cancelled it for a batch past its time.
        self._more: asyncio.Future[bool] | None = None
        self._deadline: float | None = None
        self._batches = self._batches_seen = 0
        self._timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None
        # The connection the outbox is pipelined on: made once with the pool's options, and held (see _held_link).
        self._link: Any = None
        # Per channel, one future per SUBSCRIBE sent and not confirmed yet, in the order sent.
        self._confirming: dict[str, deque[asyncio.Future[None]]] = {}
        self._lost: set[str] = set()  # channels whose waiting SUBSCRIBEs went with a broken connection
        self._repending: set[asyncio.Future[None]] = set()
        self._received = 0  # messages read from the pub/sub connection (the watchdog's sign of life)
        # Why this shard is taken for down (a connection failed), or None. Meanwhile commands fail at once,
        # holding up no connection's later frames and no other shard's ids, and one probe a second
        # (a PING) finds out when it answers again.
        self.down: str | None = None
        self._probe: asyncio.Future[None] | None = None

    async def _on_connect(self, connection: Any) -> None:
        """Every new connection to this shard: set up as usual, then a new epoch if the server was promoted.

        The check runs before any command of the layer on the connection, so that
        nothing is kept on a promoted replica under the epoch of the master it replaced.
        """
        await connection.on_connect()
        if not conf.KEEPS:
            return
        try:
            await connection.send_command("INFO", "replication")
            info = await connection.read_response()
        except ResponseError:  # INFO refused (a restricted user): nothing to compare
            return
        fields = dict(
            line.split(":", 1)
            for line in (info.decode() if isinstance(info, bytes) else str(info)).splitlines()
            if ":" in line
        )
        if fields.get("role") != "master" or not fields.get("master_replid"):
            return
        epoch = self.channel_layer.kept_keys("").epoch
        now, before = fields["master_replid"], fields.get("master_replid2", "")
        await connection.send_command("EVAL", NEW_HISTORY, 2, epoch, f"{epoch}:replid", now, before)
        if await connection.read_response() == 1:
            logger.warning(
                "Redis %s serves a history it took over (a failover, or a restart of a replicated master): "
                "notifications kept just before may be missing, so resumes from before it are not recovered",
                self.name,
            )

    async def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH, pipelined with every command waiting at that moment; how many subscribers received it."""
        return int(await self._queue((b"PUBLISH", channel, message)))

    async def ping(self) -> None:
        """PING, pipelined as publishes are: the shard answers (readiness)."""
        await self._queue((b"PING",))

    def _refuse_while_down(self) -> None:
        if self.down is not None:
            raise RedisConnectionError(f"Redis {self.name} is down ({self.down}); tried again every second")

    def _mark_down(self, exc: BaseException) -> None:
        if self.down is None:
            self.down = one_line(exc)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        # At once first: a connection that broke because Redis restarted is made again in a moment.
        while True:
            try:
                self._ensure_redis()
                await asyncio.wait_for(self._redis.ping(), CONNECT_TIMEOUT + COMMAND_TIMEOUT)
            except Exception as exc:
                self.down = one_line(exc)
                await asyncio.sleep(SUBSCRIBE_RETRY_SECONDS)
            else:
                self.down = None
                return

    async def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script's reply (see :meth:`script_soon`)."""
        return await self.script_soon(source, keys, args)

    def script_soon(
        self, source: str, keys: list[str], args: list[Any], *, convert: Callable[[Any], Any] | None = None
    ) -> asyncio.Future[Any]:
        """A Lua script by EVALSHA, queued as publishes are; its reply (``convert``-ed) once answered.

        Where Redis does not have the script (restarted, or its scripts
        flushed), the publisher sends it again as EVAL, which loads it, ahead of
        everything queued after it: scripts queued one after another run in
        that order however many are refused.
        """
        command = (b"EVALSHA", _digest(source), len(keys), *keys, *args)
        return self._queue(command, convert=convert, again=_loaded_again)

    def _queue(
        self, command: Command, *, convert: Callable[[Any], Any] | None = None, again: Again | None = None
    ) -> asyncio.Future[Any]:
        """``command``'s reply, once the batch it goes out with has been answered.

        ``convert`` turns the reply into the future's result; ``again`` may answer
        an error reply with a command to send in its place, first in the next batch.
        """
        self._refuse_while_down()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append((command, done, convert, again))
        more = self._more
        if more is not None:  # the publisher lingers: wake it
            self._more = None
            if not more.done():
                more.set_result(True)
        elif self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_waiting())
        return done

    async def _publish_waiting(self) -> None:
        """Send every command waiting, in one write on one held connection, and hand each its reply.

        redis-py's ``Pipeline`` takes a pooled connection, checks it and gives it
        back for every batch, and packs commands in Python; at one batch per
        notification that was most of the layer's cost. Here one connection, made
        with the pool's options, is held for the outbox, the commands are packed by
        hiredis, and the replies are read in order from the same connection.

        With the outbox empty the task lingers for the next command (waking it
        costs a third of making a task per batch) until a tick of the watchdog
        finds no batch sent since the last one. The watchdog also bounds each
        batch by COMMAND_TIMEOUT: one timer per tick instead of one per batch.
        """
        loop = asyncio.get_running_loop()
        while True:
            if not self._outbox:
                self._more = more = loop.create_future()
                self._watch_soon()
                if not await more and not self._outbox:
                    return  # quiet for a whole tick (a command queued as the tick ended is sent first)
                continue
            batch = list(self._outbox)
            self._outbox.clear()
            self._batches += 1
            self._deadline = loop.time() + COMMAND_TIMEOUT
            self._watch_soon()
            try:
                self._refuse_while_down()  # found down by the batch before: these fail at once too
                # Bounded by the watchdog: on a connection whose peer vanished without a word, no reply comes.
                link = await self._held_link()
                await link.send_packed_command(b"".join([_packed(queued[0]) for queued in batch]), check_health=False)
                fast = _fast_reading(link)
                instead: list[Queued] = []
                for queued in batch:
                    command, done, convert, again = queued
                    try:
                        result = await (_next_reply(link) if fast else link.read_response())
                        if isinstance(result, ResponseError):  # as hiredis parsed it
                            raise result
                    except ResponseError as exc:  # this command's error: the connection reads on
                        other = again(exc, command) if again is not None else None
                        if other is not None:
                            instead.append((other, done, convert, again))
                        elif not done.done():
                            done.set_exception(exc)
                    else:
                        _answer(done, result, convert)
                # Ahead of what was queued meanwhile, in their order: the order commands were queued in.
                self._outbox.extendleft(reversed(instead))
            except asyncio.CancelledError:
                self._deadline = None
                if not self._timed_out:
                    raise
                # The watchdog's: the batch's time is up, the task goes on with the next one.
                self._timed_out = False
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                await self._give_up(batch, TimeoutError(f"Redis did not answer within {COMMAND_TIMEOUT:g} s"))
            except Exception as exc:
                self._deadline = None  # before anything is awaited: no tick may take the batch for late now
                await self._give_up(batch, exc)
            else:
                self._deadline = None

    async def _give_up(self, batch: list[Queued], exc: Exception) -> None:
        """A batch failed with ``exc``: its commands fail with it, and the connection it went on is dropped."""
        # The link is dropped on any error but a reply's own (the next batch connects it again): a
        # reply may be half read. A refused or broken connection marks the shard down until a probe
        # answers; a slow reply (none within COMMAND_TIMEOUT: a long script, a fork stall) fails its
        # batch only.
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.disconnect(nowait=True)
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError) and not isinstance(exc, TimeoutError):
            self._mark_down(exc)
        for queued in batch:
            if not queued[1].done():
                queued[1].set_exception(exc)

    def _watch_soon(self) -> None:
        """Arm the publisher's watchdog, unless it is armed."""
        if self._watchdog is None:
            tick = min(WATCHDOG_TICK, COMMAND_TIMEOUT / 4)
            self._watchdog = asyncio.get_running_loop().call_later(tick, self._watch_publisher)

    def _watch_publisher(self) -> None:
        """A tick: a batch past its deadline is given up; a publisher that sent nothing since the last tick ends."""
        self._watchdog = None
        publisher = self._publisher
        if publisher is None or publisher.done():
            return
        if self._deadline is not None:
            if not self._timed_out and asyncio.get_running_loop().time() >= self._deadline:
                self._timed_out = True
                publisher.cancel()
        elif self._more is not None and self._batches == self._batches_seen:
            more, self._more = self._more, None
            if not more.done():
                more.set_result(False)
            return
        self._batches_seen = self._batches
        self._watch_soon()

    async def _held_link(self) -> Any:
        """The outbox's connection: the pool's kind and options, but no ``socket_timeout``.

        redis-py bounds each write (a task, by ``wait_for``) and each read (a timer)
        by ``socket_timeout``; here one ``asyncio.timeout`` bounds the whole batch.
        """
        if self._link is None:
            self._ensure_redis()
            pool = self._redis.connection_pool
            self._link = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        if not self._link.is_connected:
            await self._link.connect()
        return self._link

    async def subscribe(self, channel: str) -> None:
        """Subscribe, and return once Redis confirmed it: from then on, what is published reaches this process."""
        self._refuse_while_down()
        confirmed: asyncio.Future[None] | None = None
        async with self._lock:
            waiting = self._confirming.get(channel)
            if channel not in self._subscribed_to:
                # Each SUBSCRIBE gets its own confirmation, in order: an earlier one's
                # (before an UNSUBSCRIBE) must not count for this one.
                confirmed = asyncio.get_running_loop().create_future()
                self._confirming.setdefault(channel, deque()).append(confirmed)
                self._ensure_redis()
                self._ensure_receiver()
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException as exc:
                    self._forget(channel, confirmed)
                    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
                        self._mark_down(exc)
                    raise
                self._subscribed_to.add(channel)
            elif waiting:
                confirmed = waiting[-1]  # subscribed by another member a moment ago: its confirmation counts
        if confirmed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                # Left in its place: if Redis confirms after all, that reply must not count for a later SUBSCRIBE.
                raise TimeoutError(
                    f"Redis did not confirm the subscription to {channel} in {SUBSCRIBE_TIMEOUT:g} s"
                ) from None

    def _forget(self, channel: str, confirmed: asyncio.Future[None]) -> None:
        waiting = self._confirming.get(channel)
        if waiting is not None and confirmed in waiting:
            waiting.remove(confirmed)
            if not waiting:
                del self._confirming[channel]

    async def _do_receiving(self) -> None:
        # The library polls with a 0.1 s timeout per message (a timer armed and
        # cancelled for every notification); blocking reads need none, and a
        # watchdog beside them notices a connection that went silent.
        watchdog = asyncio.ensure_future(self._watch_connection())
        try:
            await self._read_forever()
        finally:
            watchdog.cancel()

    async def _watch_connection(self) -> None:
        """Ping a pub/sub connection that has been quiet for a while; drop it if not even the pong comes.

        A blocking read on a connection whose peer vanished without a word (the
        network cut, a host gone) would wait forever, and every notification
        meanwhile would be lost to this process unnoticed. Dropped, it is made
        again, its channels subscribed again, and their members catch up.
        """
        seen, pinged = -1, False
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
            pubsub = self._pubsub
            if pubsub is None or not pubsub.subscribed or pubsub.connection is None:
                seen, pinged = -1, False
                continue
            if self._received != seen:
                seen, pinged = self._received, False
                continue
            if not pinged:
                pinged = True
                with contextlib.suppress(Exception):
                    await pubsub.ping()
                continue
            logger.warning(
                "Redis sent nothing, not even a pong, for %g s: dropping the pub/sub connection to make it again",
                2 * HEALTH_CHECK_INTERVAL,
            )
            metrics.counters[metrics.REDIS_SILENT] += 1
            seen, pinged = -1, False
            with contextlib.suppress(Exception):
                await pubsub.connection.disconnect()
            if self._link is not None and self._deadline is None:
                # The commands' connection went the same way, most likely: made again for the next command
                # (not while a batch waits on it: that one gives up after COMMAND_TIMEOUT).
                with contextlib.suppress(Exception):
                    await self._link.disconnect()

    def _ensure_redis(self) -> None:
        if self._redis is None:
            super()._ensure_redis()
            client: Any = self._redis
            # redis-py's default handler of pub/sub replies formats each one for a debug line nobody sees.
            self._pubsub = client.pubsub(push_handler_func=_as_received)

    async def _read_forever(self) -> None:
        while True:
            try:
                pubsub = self._pubsub
                if pubsub is None or not pubsub.subscribed:
                    await asyncio.sleep(0.1)
                    continue
                connection = pubsub.connection
                if _fast_reading(connection):
                    try:
                        reply = await _next_reply(connection)
                    except (RedisConnectionError, OSError):
                        # As redis-py's own read does: connected again at once, which subscribes every
                        # channel again; then the failure is told. (Subscribed only after the pause
                        # below, the catching up raced what was sent the moment the subscription was back.)
                        await connection.disconnect()
                        await connection.connect()
                        raise
                    if isinstance(reply, Exception):
                        raise reply
                else:  # not connected (the reconnection above failed): redis-py connects and subscribes again
                    reply = await pubsub.parse_response(block=True)
                # A published message is handled here as read; anything else (subscription
                # confirmations, pongs) goes through redis-py's bookkeeping first.
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    self._received += 1
                    self._published(reply[1].decode(), reply[2])
                elif reply:
                    self._receive_message(await pubsub.handle_message(reply))
            except (asyncio.CancelledError, TimeoutError, GeneratorExit):
                raise
            except Exception as exc:
                # The SUBSCRIBEs still waiting were sent on the connection that broke; redis-py
                # subscribes to every channel again on the next one, with one reply each.
                self._lost.update(self._confirming)
                metrics.counters[metrics.LAYER_READ_ERRORS] += 1
                logger.warning("Reading from Redis failed, retrying in 1 s: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1)

    def _receive_message(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        self._received += 1
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        kind = message["type"]
        if kind == "message" or kind == b"message":
            self._published(name, message["data"])
        elif kind in ("subscribe", b"subscribe"):
            self._subscribed(name)

    def _published(self, name: str, data: bytes) -> None:
        """A message published on ``name`` (a channel or a group's channel): to its queues in this process."""
        layer = self.channel_layer
        queue = layer.channels.get(name)
        if queue is not None:
            self._put(queue, data, name, None)
            return
        if data == PENDING_AVAILABLE:
            if layer.groups.get(name):
                self._soon(self._hand_over_pending(name))
            return
        delivered = False
        for channel in layer.groups.get(name, ()):
            queue = layer.channels.get(channel)
            if queue is not None:
                self._put(queue, data, channel, name)
                delivered = True
        if not delivered and data[:1] == KEPT_MARKER and conf.KEEPS and conf.PENDING:
            # The last registrant of the id here left after Redis counted this process in.
            self._soon(self._make_pending_again(name, data))

    def _subscribed(self, name: str) -> None:
        """Redis confirmed a subscription: the oldest SUBSCRIBE of ``name`` still waiting is in effect."""
        waiting = self._confirming.get(name)
        if name in self._lost or not waiting:
            # Subscribed again after a reconnect: what was published meanwhile never reached
            # this process. Its members catch up from the history, from here on in order.
            for channel in self.channel_layer.groups.get(name, ()):
                self.channel_layer.gap(channel, name)
        if waiting and name in self._lost:
            # The re-subscription after a reconnect: it stands for every SUBSCRIBE sent before.
            self._lost.discard(name)
            del self._confirming[name]
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_result(None)
            if self.channel_layer.groups.get(name):
                self._soon(self._hand_over_pending(name))
        elif waiting:
            confirmed = waiting.popleft()
            if not waiting:
                del self._confirming[name]
            if not confirmed.done():
                confirmed.set_result(None)
        elif self.channel_layer.groups.get(name):
            # Nobody waits: redis-py subscribed again after a reconnect. What was sent to
            # the group meanwhile reached no process and is pending: hand it over here.
            self._soon(self._hand_over_pending(name))

    def _soon(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._repending.add(task)
        task.add_done_callback(self._repending.discard)

    async def _hand_over_pending(self, group_channel: str) -> None:
        """Take the group's pending notifications and queue them for its registrants in this process."""
        layer = self.channel_layer
        group = group_channel.removeprefix(f"{layer.prefix}__group__")
        try:
            taken = await layer.take_pending_payloads(group)
        except Exception as exc:
            logger.warning("Could not take pending notifications of %s: %s: %s", group, type(exc).__name__, exc)
            return
        members = [(c, layer.channels[c]) for c in layer.groups.get(group_channel, ()) if c in layer.channels]
        for position, payload in taken:
            data = KEPT_MARKER + position.encode() + KEPT_MARKER + payload
            if not members:  # they left meanwhile: pending again, for the next registrant
                await self._make_pending_again(group_channel, data)
            for channel, queue in members:
                self._put(queue, data, channel, group_channel)

    async def _make_pending_again(self, group_channel: str, data: bytes) -> None:
        position = data[1:].split(KEPT_MARKER, 1)[0].decode()
        group = group_channel.removeprefix(f"{self.channel_layer.prefix}__group__")
        try:
            if await self.channel_layer.keep_pending(group, {"position": position}):
                metrics.counters[metrics.PENDING_AGAIN] += 1
        except Exception as exc:
            logger.warning(
                "Undeliverable notification at %s: its last registrant here left, and it could not be made "
                "pending again: %s: %s",
                position,
                type(exc).__name__,
                exc,
            )

    def _put(self, queue: ChannelQueue, data: bytes, channel: str, group_channel: str | None) -> None:
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            if group_channel is not None and data[:1] == KEPT_MARKER:
                # Kept in the history: the consumer catches up from there once it has read its queue.
                metrics.counters[metrics.LAYER_FULL] += 1
                self.channel_layer.gap(channel, group_channel)
                return
            event = None
            with contextlib.suppress(Exception):
                event = self.channel_layer.decode(data)
            count_undeliverable(event, f"channel {channel}")

    async def flush(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._more = None
        if self._publisher is not None and not self._publisher.done():
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self._link is not None:
            link, self._link = self._link, None
            with contextlib.suppress(Exception):
                await link.disconnect()
        while self._outbox:  # nobody may wait forever for a publish that will not happen
            done = self._outbox.popleft()[1]
            if not done.done():
                done.set_exception(RuntimeError("the channel layer was flushed before this message was published"))
        for waiting in self._confirming.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_exception(RuntimeError("the channel layer was flushed before Redis confirmed"))
        self._confirming.clear()
        self._lost.clear()
        await super().flush()


async def _as_received(reply: Any) -> Any:
    return reply


def _kept(reply: Any, *, pending: bool = False) -> Kept:
    """SEND_KEPT's reply (or its PUBLISH's, sent instead while Redis is full); ``pending``: pending is on."""
    if isinstance(reply, int):
        return _published_live(reply)
    live = reply[0] > 0
    return Kept(live=live, pending=pending and not live, position=reply[1].decode())


_kept_pending = functools.partial(_kept, pending=True)


def _published_live(received: int) -> Kept:
    return Kept(live=received > 0, pending=False, position=None)


def _packed(command: Command) -> bytes:
    """A command in Redis's protocol, as it goes out in a batch."""
    return command if command.__class__ is bytes else hiredis.pack_command(command)  # type: ignore[return-value,arg-type]


def _unpacked(command: Command) -> list[Any]:
    """A command's name and arguments, from its tuple or from its packed form."""
    if not isinstance(command, bytes):
        return list(command)
    reader = hiredis.Reader()
    reader.feed(command)
    return list(reader.gets())


def _loaded_again(error: ResponseError, command: Command) -> Command | None:
    """An EVALSHA Redis refused for not having the script: as EVAL, which loads it."""
    if not isinstance(error, NoScriptError):
        return None
    _evalsha, digest, *rest = _unpacked(command)
    return (b"EVAL", _SOURCES[digest.decode() if isinstance(digest, bytes) else digest], *rest)


def _kept_again(error: ResponseError, command: Command) -> Command | None:
    """SEND_KEPT refused: loaded again (see :func:`_loaded_again`), or live only if Redis is full."""
    if not isinstance(error, OutOfMemoryError):
        return _loaded_again(error, command)
    # Refused to keep because Redis is full (maxmemory): a PUBLISH to the group's channel (KEYS[1]), live only.
    logger.warning("Redis refuses to keep notifications (%s); delivering live only", error)
    arguments = _unpacked(command)
    return (b"PUBLISH", arguments[3], arguments[3 + KEPT_KEYS])


# Each script's source by its SHA1 (EVAL in place of an EVALSHA Redis refused).
_SOURCES: dict[str, str] = {}


@functools.cache
def _digest(source: str) -> str:
    """A Lua script's SHA1, the name EVALSHA runs it by."""
    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    _SOURCES[digest] = source
    return digest


def _packed_arguments(*arguments: Any) -> bytes:
    """Arguments packed as in a command, without the command's leading count: to be joined into one."""
    packed: bytes = hiredis.pack_command(arguments)
    return packed[packed.index(b"\r\n") + 2 :]


def _answer(done: asyncio.Future[Any], result: Any, convert: Callable[[Any], Any] | None) -> None:
    if done.done():
        return
    if convert is None:
        done.set_result(result)
        return
    try:
        done.set_result(convert(result))
    except Exception as exc:
        done.set_exception(exc)


def _fast_reading(connection: Any) -> bool:
    """Whether ``connection``'s replies can be read through :func:`_next_reply`: connected, parsed by hiredis."""
    return isinstance(getattr(connection, "_parser", None), _AsyncHiredisParser) and connection.is_connected


async def _next_reply(connection: Any) -> Any:
    """The next reply on a connected redis-py connection whose parser is hiredis's; an error reply is returned.

    redis-py 8 reads each reply through a retry wrapper, a timing record,
    error wrapping and five coroutine frames. At one reply per notification on
    each of the layer's two connections (the script's reply on the held command
    connection, the published copy on the pub/sub one), that was most of its
    reading cost. Here hiredis hands over what one socket read brought, reply
    after reply, and redis-py's parser reads the socket again only when no
    complete reply is left. A failed read raises; the caller connects again.
    Each connection has one reader: its batch, or the pub/sub reading task.
    """
    parser = connection._parser
    reply = parser._reader.gets()
    while reply is NOT_ENOUGH_DATA:
        await parser.read_from_socket()
        reply = parser._reader.gets()
    return reply


def _without_password(address: str) -> str:
    """A Redis address fit for a log line or a probe's answer: any password (``:pw@``, ``?password=``) as ``***``."""
    parts = urlsplit(address)
    if parts.password is not None:
        user = f"{parts.username}:" if parts.username else ":"
        address = urlunsplit(parts._replace(netloc=f"{user}***@{parts.netloc.rsplit('@', 1)[1]}"))
    base, mark, query = address.partition("?")
    if not mark:
        return address
    pairs = [
        (name, "***" if name.lower() == "password" else value)
        for name, value in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{base}?{urlencode(pairs, safe='*')}"


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(
        self, *args: Any, capacity: int = DEFAULT_CAPACITY, process_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if process_id is None:
            from notifications.registry import registry  # needs Django's apps, ready by the first use of a layer

            process_id = registry.process_id
        self.process_id = process_id  # the registry's id of this process: its Redis connections' name
        self.capacity = capacity
        self._shards: list[_Shard] = [_Shard(shard.host, self) for shard in self._shards]
        self._shard_keys = [hashlib.blake2b(shard_identity(s.host).encode(), digest_size=8) for s in self._shards]
        self._cleanups: set[asyncio.Future[None]] = set()
        self._resubscribing: dict[str, asyncio.Future[None]] = {}
        self._gaps = Gaps()
        self._kept_heads: dict[str, tuple[tuple[int, float, bool], tuple[_Shard, bytes, bytes]]] = {}

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def _get_shard(self, channel_or_group_name: str) -> _Shard:
        """The shard of a channel or group: the same in every process, and stable as shards come and go.

        Rendezvous hashing: each shard scores the name with a digest keyed by the
        shard's address, and the highest score wins. Adding or removing a shard
        moves only the names that it wins or won; every other id stays where its
        history and pending notifications are.
        """
        if len(self._shards) == 1:
            return self._shards[0]
        name = channel_or_group_name.encode()
        scores = [self._score(key, name) for key in self._shard_keys]
        return self._shards[scores.index(max(scores))]

    @staticmethod
    def _score(key: Any, name: bytes) -> bytes:
        digest = key.copy()
        digest.update(name)
        return bytes(digest.digest())

    async def group_add(self, group: str, channel: str) -> None:
        try:
            await super().group_add(group, channel)
        except Exception:
            # The member is noted, the subscription is not: try again until it takes or the group empties,
            # so that the group receives again once its shard is back.
            self._subscribe_later(self._get_group_channel_name(group))
            raise

    def _subscribe_later(self, name: str) -> None:
        """Subscribe ``name`` (a group's channel, or a connection's) in the background, until it takes."""
        if name not in self._resubscribing:
            task = asyncio.ensure_future(self._subscribe_again(name))
            self._resubscribing[name] = task
            task.add_done_callback(lambda _: self._resubscribing.pop(name, None))

    async def _subscribe_again(self, name: str) -> None:
        shard = self._get_shard(name)

        def wanted() -> bool:
            return bool(self.groups.get(name)) or name in self.channels

        while wanted():
            await asyncio.sleep(SUBSCRIBE_RETRY_SECONDS)
            if not wanted():
                return
            try:
                await shard.subscribe(name)
            except Exception:
                continue
            if not wanted():  # everyone left while it was being made: nobody needs it
                with contextlib.suppress(Exception):
                    await shard.unsubscribe(name)
                return
            if self.groups.get(name):
                # A group subscribed at last: what was sent meanwhile is pending, or missed by its members.
                for channel in self.groups.get(name, ()):
                    self.gap(channel, name)
                await shard._hand_over_pending(name)
            logger.info("Subscribed to %s on Redis %s again", name, shard.name)
            return

    async def flush(self) -> None:
        for task in [*self._resubscribing.values(), *self._cleanups]:
            task.cancel()
        await super().flush()

    def gap(self, channel: str, group_channel: str) -> None:
        """What was sent to ``group_channel`` may not have reached ``channel``: its consumer catches up."""
        if channel in self.channels:
            group = group_channel.removeprefix(f"{self.prefix}__group__")
            self._gaps.mark(channel, group, self.channels[channel], GAP_MARK)

    async def most_pending(self, limit: int) -> list[tuple[str, int]]:
        """The ids with the most pending notifications, most first: (id, how many), at most ``limit``.

        Found by SCAN over at most :data:`PENDING_SCAN_LIMIT` pending sets per Redis server, so
        that a large deployment's dashboard costs Redis a bounded amount of work.
        """
        found: list[tuple[int, _Shard, KeptKeys]] = []
        pattern = f"{self.prefix}kept:*:p"
        for shard in self._shards:
            shard._ensure_redis()
            names: list[bytes] = []
            async for name in shard._redis.scan_iter(match=pattern, count=1000):
                names.append(name)
                if len(names) >= PENDING_SCAN_LIMIT:
                    break
            if not names:
                continue
            pipe = shard._redis.pipeline(transaction=False)
            for name in names:
                pipe.zcard(name)
            sizes = await pipe.execute()
            for key, size in zip(names, sizes, strict=True):
                if size:
                    base = key.decode()[: -len(":p")]
                    found.append((int(size), shard, KeptKeys(f"{base}:h", f"{base}:p", f"{base}:m", "")))
        found.sort(key=lambda item: -item[0])
        return [(await self._pending_recipient(shard, kept), size) for size, shard, kept in found[:limit]]

    async def _pending_recipient(self, shard: _Shard, keys: KeptKeys) -> str:
        """The id a pending set is for: read from its oldest notification (group names are digests)."""
        with contextlib.suppress(Exception):
            first = await shard._redis.zrange(keys.pending, 0, 0)
            if first:
                entries = await shard._redis.xrange(keys.history, first[0], first[0])
                if entries:
                    event = self.channel_layer.deserialize(entries[0][1][b"p"])
                    return str(event.get("recipient", ""))
        return ""

    async def disconnect_processes(self, process_ids: list[str]) -> int:
        """Close the Redis subscriptions of these processes, gone from the registry; how many were closed.

        Called by the process that purged them, once they stayed away (see the
        registry): a host cut off the network keeps its subscriptions on Redis's
        side until TCP gives up, and while Redis counts them, notifications to
        their ids are taken for delivered instead of pending. Shards taken for
        down are skipped.
        """
        names = {client_name(self.prefix, process_id) for process_id in process_ids}

        async def on(shard: _Shard) -> int:
            if shard.down is not None:
                return 0
            shard._ensure_redis()
            clients = await asyncio.wait_for(shard._redis.client_list(_type="pubsub"), COMMAND_TIMEOUT)
            ids = [c["id"] for c in clients if c.get("name") in names]
            if ids:
                pipe = shard._redis.pipeline(transaction=False)
                for client_id in ids:
                    pipe.client_kill_filter(_id=client_id)
                await asyncio.wait_for(pipe.execute(raise_on_error=False), COMMAND_TIMEOUT)
            return len(ids)

        closed = sum(await asyncio.gather(*(on(shard) for shard in self._shards)))
        if closed:
            logger.info("Closed %d Redis subscriptions of %d server processes gone", closed, len(process_ids))
        return closed

    async def problems(self, timeout: float) -> list[str]:  # noqa: ASYNC109  (one bound per server, run at once)
        """What keeps this layer from working, one line per Redis server that does not answer in ``timeout``."""

        async def problem(index: int, shard: _Shard) -> str | None:
            try:
                await asyncio.wait_for(shard.ping(), timeout)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else f"no answer in {timeout:g} s"
                return f"Redis {index} ({shard.name}) does not answer: {detail}"
            return None

        found = await asyncio.gather(*(problem(i, s) for i, s in enumerate(self._shards)))
        return [p for p in found if p is not None]

    async def room(self, group: str) -> None:
        """Wait while a member of ``group`` in this process has a crowded queue (see :class:`ChannelQueue`)."""
        for channel in self.groups.get(self._get_group_channel_name(group), ()):
            queue = self.channels.get(channel)
            if isinstance(queue, ChannelQueue) and queue.crowded():
                await queue.room()

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = ChannelQueue(self.capacity)
        shard = self._get_shard(channel)
        try:
            await shard.subscribe(channel)
        except Exception as exc:
            if len(self._shards) == 1:
                raise
            # Sharded, and this connection's own channel is on a shard that is down: the connection
            # still receives through its ids' groups; its channel is subscribed once the shard is back.
            logger.warning("Could not subscribe to %s on Redis %s (%s); retrying", channel, shard.name, one_line(exc))
            self._subscribe_later(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        queue = self.channels[channel]
        try:
            while True:
                if self._gaps and (gap := self._gaps.take(channel)) is not None:
                    return gap
                message = await queue.get()
                if message != GAP_MARK:
                    break
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            # Channels cancels receive() when the consumer ends: that is when
            # its channel goes. Unsubscribing in a task of its own keeps the
            # consumer's cancellation from interrupting it half-way (which is
            # what printed CancelledError tracebacks).
            self._gaps.forget(channel)
            if self.channels.pop(channel, None) is not None:
                self._in_background(self._unsubscribe(channel))
            raise
        return self.decode(message)

    def loop_inbox(self) -> _LoopLayer:
        return self

    def take(self, channel: str) -> dict[str, Any] | None:
        if self._gaps and (gap := self._gaps.take(channel)) is not None:
            return gap
        return self._next_queued(channel)

    def _next_queued(self, channel: str) -> dict[str, Any] | None:
        """The oldest event queued for ``channel`` (gap marks skipped), taken out; None if none waits."""
        queue = self.channels.get(channel)
        while queue is not None and not queue.empty():
            data = queue.get_nowait()
            if data != GAP_MARK:
                return self.decode(data)
        return None

    def wake_on_message(self, channel: str, bell: asyncio.Future[None]) -> None:
        queue = self.channels.get(channel)
        if queue is None:  # the layer was flushed under a live consumer: its channel is subscribed again
            queue = self.channels[channel] = ChannelQueue(self.capacity)
            self._subscribe_later(channel)
        queue.wake(bell)

    def release(self, channel: str) -> None:
        self._gaps.forget(channel)
        if self.channels.pop(channel, None) is not None:
            self._in_background(self._unsubscribe(channel))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own, which the consumer that asked for it cannot cancel half-way."""
        task = asyncio.ensure_future(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def decode(self, data: bytes) -> dict[str, Any]:
        """The event in a published message; a kept notification's carries its position."""
        if data[:1] != KEPT_MARKER:
            event: dict[str, Any] = self.channel_layer.deserialize(data)
            return event
        position, payload = data[1:].split(KEPT_MARKER, 1)
        kept: dict[str, Any] = self.channel_layer.deserialize(payload)
        kept["position"] = position.decode()
        return kept

    def kept_keys(self, group: str) -> KeptKeys:
        base = f"{self.prefix}kept:{group}"
        return KeptKeys(history=f"{base}:h", pending=f"{base}:p", meta=f"{base}:m", epoch=f"{self.prefix}kept:epoch")

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        return await self.send_kept_soon(group, message)

    def send_kept_soon(self, group: str, message: dict[str, Any]) -> asyncio.Future[Kept]:
        """Queue ``message`` for the group's shard at once; the future of its :class:`Kept`.

        Messages queued one after another reach Redis, and so each id, in that
        order, whether or not anyone waits for the first one's answer.
        """
        payload = self.channel_layer.serialize(message)
        if not conf.KEEPS:
            group_channel = self._get_group_channel_name(group)
            shard = self._get_shard(group_channel)
            return shard._queue((b"PUBLISH", group_channel, payload), convert=_published_live)
        pending = conf.PENDING
        settings = (conf.HISTORY_SIZE, conf.HISTORY_TTL, pending)
        shard, head, tail = self._kept_head(group, settings)
        # One notification's only part of its own: the payload, between the group's keys and its arguments.
        command = b"".join((head, b"$%d\r\n" % len(payload), payload, b"\r\n", tail))
        return shard._queue(command, convert=_kept_pending if pending else _kept, again=_kept_again)

    def _kept_head(self, group: str, settings: tuple[int, float, bool]) -> tuple[_Shard, bytes, bytes]:
        """``group``'s shard and SEND_KEPT packed before and after the payload, remembered per group.

        Its keys, shard and tag (three digests and five names) are the same for
        every notification to an id: made once while the id is in use, not per
        notification. ``settings`` are the settings the arguments come from.
        """
        known = self._kept_heads.get(group)
        if known is not None and known[0] == settings:
            return known[1]
        if len(self._kept_heads) >= KEPT_HEADS_CACHED:
            self._kept_heads.clear()
        group_channel = self._get_group_channel_name(group)
        keys = self.kept_keys(group)
        history_size, history_ttl, pending = settings
        names = (group_channel, keys.history, keys.pending, keys.epoch, keys.meta)
        head = b"*%d\r\n" % (3 + KEPT_KEYS + 1 + KEPT_ARGS_AFTER_PAYLOAD) + _packed_arguments(
            b"EVALSHA", _digest(SEND_KEPT), KEPT_KEYS, *names
        )
        tail = _packed_arguments(history_size, int(history_ttl * 1000), int(pending), int(META_TTL * 1000), _tag(group))
        made = (self._get_shard(group_channel), head, tail)
        self._kept_heads[group] = (settings, made)
        return made

    async def take_pending_payloads(self, group: str, *, peek: bool = False) -> list[tuple[str, bytes]]:
        """The group's pending notifications as (position, serialised event), oldest first; once unless ``peek``."""
        if not conf.KEEPS:
            return []
        shard = self._get_shard(self._get_group_channel_name(group))
        keys = self.kept_keys(group)
        taken = await shard.run_script(
            TAKE_PENDING,
            keys=[keys.history, keys.pending, keys.epoch],
            args=[int(conf.HISTORY_TTL * 1000), 0 if peek else 1, _tag(group)],
        )
        pairs = [(taken[i].decode(), bytes(taken[i + 1])) for i in range(0, len(taken), 2)]
        # In the order sent (the sorted set orders by millisecond; the sequence within one counts too).
        return sorted(pairs, key=lambda pair: _stream_order(pair[0]))

    def drain(self, channel: str) -> list[dict[str, Any]]:
        left: list[dict[str, Any]] = []
        while (event := self._next_queued(channel)) is not None:
            left.append(event)
        return left

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        position = message.get("position")
        if not (isinstance(position, str) and conf.KEEPS and conf.PENDING):
            return False
        group_channel = self._get_group_channel_name(group)
        keys = self.kept_keys(group)
        # Pending again, and every process with a registrant of the id is told (see MAKE_PENDING_AGAIN).
        await self._get_shard(group_channel).run_script(
            MAKE_PENDING_AGAIN,
            keys=[group_channel, keys.pending],
            args=[position.rpartition(":")[2], int(conf.HISTORY_TTL * 1000), conf.HISTORY_SIZE],
        )
        return True

    async def newest(self, group: str) -> str | None:
        if not conf.KEEPS:
            return None
        keys = self.kept_keys(group)
        epoch, last = await self._get_shard(self._get_group_channel_name(group)).run_script(
            NEWEST, keys=[keys.epoch, keys.meta], args=[int(META_TTL * 1000)]
        )
        return f"{epoch.decode()}.{_tag(group)}:{last.decode()}"

    async def resume(self, group: str, since: str | None, start: str | None, *, take: bool = True) -> Replay:
        if not conf.KEEPS:
            return Replay(recovered=False, newest=None, notifications=[])
        keys = self.kept_keys(group)
        reply = await self._get_shard(self._get_group_channel_name(group)).run_script(
            RESUME,
            keys=[keys.history, keys.pending, keys.epoch, keys.meta],
            args=[
                *_as_stream_id(since, group),
                *_as_stream_id(start, group),
                int(conf.HISTORY_TTL * 1000),
                int(take),
            ],
        )
        recovered, epoch, last = bool(reply[0]), f"{reply[1].decode()}.{_tag(group)}", reply[2].decode()
        pairs = sorted(
            ((reply[i].decode(), bytes(reply[i + 1])) for i in range(3, len(reply), 2)),
            key=lambda pair: _stream_order(pair[0]),
        )
        deserialize = self.channel_layer.deserialize
        return Replay(
            recovered=recovered,
            newest=f"{epoch}:{last}" if epoch and last else None,
            notifications=[KeptNotification(f"{epoch}:{sid}", deserialize(payload)["text"]) for sid, payload in pairs],
        )

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        taken = await self.take_pending_payloads(group, peek=peek)
        return [
            KeptNotification(position, self.channel_layer.deserialize(payload)["text"]) for position, payload in taken
        ]

    async def group_discard(self, group: str, channel: str) -> None:
        # A consumer leaving while Redis is down must not crash: its membership
        # is gone here, and Redis forgets the subscription with the connection.
        try:
            await super().group_discard(group, channel)
        except Exception as exc:
            logger.warning("Could not unsubscribe group %s from Redis: %s: %s", group, type(exc).__name__, exc)

    async def _unsubscribe(self, channel: str) -> None:
        try:
            await self._get_shard(channel).unsubscribe(channel)
        except Exception as exc:
            logger.warning("Could not unsubscribe channel %s from Redis: %s: %s", channel, type(exc).__name__, exc)


@dataclass(frozen=True, slots=True)
class KeptKeys:
    """The Redis keys of one group's kept notifications."""

    history: str
    pending: str
    meta: str
    epoch: str


class RedisPubSubLayer(RedisPubSubChannelLayer):
    """Several daphne processes, on one host or many, sharing Redis.

    ``capacity`` (in ``CONFIG``, default 1,000) bounds each connection's queue.
    """

    # The hot calls, defined here rather than resolved by the library's
    # __getattr__, which builds a partial and a proxy coroutine per call; they
    # return the loop layer's coroutine itself (one frame fewer to resume per await).
    def group_send(self, group: str, message: dict[str, Any]) -> Coroutine[Any, Any, None]:
        return self._get_layer().group_send(group, message)  # type: ignore[no-any-return]

    def receive(self, channel: str) -> Coroutine[Any, Any, dict[str, Any]]:
        return self._get_layer().receive(channel)

    def send_kept(self, group: str, message: dict[str, Any]) -> Coroutine[Any, Any, Kept]:
        return self._get_layer().send_kept(group, message)

    def send_kept_soon(self, group: str, message: dict[str, Any]) -> asyncio.Future[Kept]:
        return self._get_layer().send_kept_soon(group, message)

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        return await self._get_layer().take_pending(group, peek=peek)

    async def newest(self, group: str) -> str | None:
        return await self._get_layer().newest(group)

    async def resume(self, group: str, since: str | None, start: str | None, *, take: bool = True) -> Replay:
        return await self._get_layer().resume(group, since, start, take=take)

    def drain(self, channel: str) -> list[dict[str, Any]]:
        return self._get_layer().drain(channel)

    def loop_inbox(self) -> _LoopLayer:
        return self._get_layer()

    def take(self, channel: str) -> dict[str, Any] | None:
        return self._get_layer().take(channel)

    def wake_on_message(self, channel: str, bell: asyncio.Future[None]) -> None:
        self._get_layer().wake_on_message(channel, bell)

    def release(self, channel: str) -> None:
        self._get_layer().release(channel)

    def room(self, group: str) -> Coroutine[Any, Any, None]:
        return self._get_layer().room(group)

    async def most_pending(self, limit: int) -> list[tuple[str, int]]:
        """The ids with the most pending notifications (see ``_LoopLayer.most_pending``)."""
        return await self._get_layer().most_pending(limit)

    async def problems(self, timeout: float) -> list[str]:  # noqa: ASYNC109
        """One line per Redis server that does not answer within ``timeout`` seconds; [] when all do."""
        return await self._get_layer().problems(timeout)

    @property
    def shard_count(self) -> int:
        """How many Redis servers (shards) the layer spreads ids over."""
        return len(decode_hosts(self._kwargs.get("hosts") or (self._args[0] if self._args else None)))

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        return await self._get_layer().keep_pending(group, message)

    async def disconnect_processes(self, process_ids: list[str]) -> int:
        """Close the Redis subscriptions of processes gone (see ``_LoopLayer.disconnect_processes``)."""
        return await self._get_layer().disconnect_processes(process_ids)

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer  # type: ignore[no-any-return]
