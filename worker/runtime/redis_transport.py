"""Kombu's Redis transport, made to survive losing Redis while messages are in hand, and cheaper per message.

When the connection drops, Celery closes the old channel and kombu tries to push the
messages this worker holds back onto their queues; later, tasks that were running
acknowledge or reject messages of that closed channel. With Redis gone, or the channel's
connection already released, each of these raises, and Celery stops the whole worker as
"unrecoverable". None of it is needed: those messages sit in Redis's unacked set and
come back after the visibility timeout, where a finished job's message finds nothing to
do. So on a closed channel these become logged no-ops, and the worker reconnects.

Kombu also builds a new redis-py client object for every delivery, acknowledgement and
event it publishes; the constructor (a table of ~200 reply parsers) cost a worker about
7 % of its CPU. The object holds no connection of its own, so the channel keeps one.

And kombu records a delivery twice: its tag in a sorted set by time (`unacked_index`) and
the message in a hash by tag (`unacked`), two writes to record it and two to acknowledge
it. Here one sorted set holds the message itself, scored by its delivery time: one `ZADD`
records a delivery, one `ZREM` acknowledges it, and the restore pass finds in the same set
both which messages are overdue and what to push back. A message carries its own unique
delivery tag, so no two members are alike. A restore takes the member out and pushes the
message back in one script, so two workers restoring at once cannot both push it.

In a worker, acknowledgements are recorded in batches: the tasks' acks come from the event
loop's thread, where a blocking round trip holds up every call in flight, one per job. They
are collected for up to `ACK_BATCH_S` and removed with one `ZREM` on the consumer's thread.
A worker that dies in between leaves those messages in the set; like those of its calls in
flight, they come back after the visibility timeout, where the claim (`llmq.worker.jobs.scripts`)
does nothing for a finished job and lets one delivery of a job run at a time.

Kombu takes a message with `BRPOP` and records it with a second command. A full Redis (`maxmemory` under
`noeviction`) still serves the `BRPOP` but refuses the `ZADD`: the message was in hand and nowhere else, and the
error stopped the worker. Here a worker takes messages with one script, `TAKE`, that pops them and records them
as unacknowledged together; it is declared (`#!lua`) so that a full Redis refuses the whole call before anything
is popped. The consumer then waits `TAKE_BACKOFF_S` and asks again, the messages still in their queues. `TAKE`
pops as many messages as the worker has free slots (up to `TAKE_MAX`) from the first queue that has any: one
call for several jobs. Only a worker that found every queue empty blocks, with kombu's `BRPOP`; the message that
wakes it is recorded at once, by a script allowed past `maxmemory` if Redis has filled meanwhile (only messages
handed back are pushed onto a full Redis). Once messages come at once to `BRPOP` twice in a row (a queue is
filling up), the next take is a `TAKE` again; while they come after a wait, the worker waits again with `BRPOP`: an
idle worker taking one job at a time costs two commands a job that way, where a `TAKE` finding nothing in between
would cost two more. A crash in the instant between a `BRPOP` and its record leaves that message to the sweeper,
as every delivery could with kombu's transport.

With fair turns between app ids (docs/fairness.md), `TAKE` also takes from the apps' ready lists once the broker
queues are empty, and a waiting worker's `BRPOP` also waits on the doorbell the submit script rings when an app's
lists fill from empty; a token, or the `BRPOP`'s timeout, sends it back to `TAKE`.

And a worker's takes leave out the queues of a lane whose slots are all taken, and pop no more than the
fullest lane among those queues has room for (`llmq.worker.runtime.lanes`): slow webhook deliveries never take
messages into slots that proxy calls need, nor the other way round. A slot frees on the event loop's thread,
which cannot cut short a `BRPOP` on the other queues: while a lane's queues are left out, that `BRPOP` waits
no longer than the lanes' `refill_wait_s` (a 50th of a typical call, at least `FULL_LANE_WAIT_S`), and when it
ends with the lane still full the worker waits again rather than take.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic, time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from llmq.worker import redis_keys
from llmq.worker.runtime.fair_turns import NO_FAIR_TURNS, worker_fair_turns
from llmq.worker.runtime.held_connection import HeldConnections
from llmq.worker.runtime.hub_flush import HubFlush
from llmq.worker.runtime.lanes import Lanes, worker_lanes

log = logging.getLogger("llmq.broker")

# The sorted set of delivered, unacknowledged messages: member [payload, exchange, routing key], score delivery time.
UNACKED_KEY = "llmq.unacked"

# How long an acknowledgement may wait to share a ZREM with others: at 350 jobs/s, about 17 of them.
ACK_BATCH_S = 0.05

# KEYS: the unacked set, then the queues to push to. ARGV: the member, the payload to push, LPUSH | RPUSH.
# Only whoever takes the member out pushes the message back.
RESTORE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call(ARGV[3], KEYS[i], ARGV[2]) end
return 1
"""


# KEYS: the unacked set, the fair apps set, the doorbell, then the queues in the order they are read.
# ARGV: now, most messages to take, quantum, default weight, weight count, (app, weight)..., fair queue count, the
#       call queues taken with fair turns (by priority; none without fair turns), then the JSON name of each queue's
#       messages' queue.
# Returns {queue key, {message, ...}}, or nil when every queue is empty.
# Each member is `[message, "", queue]`, which `_restore_member` reads as kombu's [payload, exchange, routing key].
# Messages already in the broker queues go first (webhooks, retries, messages handed back, an app's first jobs:
# `llmq.worker.jobs.scripts.SUBMIT`). Then, with fair turns, the app with the least calls started by weight (its
# score in the fair apps set) gives up to `quantum` messages, or as many as keep it behind the next app, from its
# highest ready list that has any; its score grows by their number over its weight. An app entering (score 0)
# starts level with the lowest app served; a drained app leaves the set. Messages go into the unacked set in the
# same step, under the broker queue they are delivered from: a restore pushes them back there.
TAKE = """#!lua
local unacked, apps, doorbell = KEYS[1], KEYS[2], KEYS[3]
local count, quantum, default_weight = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local weights, at = {}, 6
for _ = 1, tonumber(ARGV[5]) do
  weights[ARGV[at]] = tonumber(ARGV[at + 1])
  at = at + 2
end
local fair = {}
for i = 1, tonumber(ARGV[at]) do fair[i] = ARGV[at + i] end
local names = at + #fair + 1
local function record(messages, name)
  local entries = {}
  for _, message in ipairs(messages) do
    entries[#entries + 1] = ARGV[1]
    entries[#entries + 1] = '[' .. message .. ',"",' .. name .. ']'
  end
  redis.call('ZADD', unacked, unpack(entries))
end
local args = {#KEYS - 3}
for i = 4, #KEYS do args[i - 2] = KEYS[i] end
args[#args + 1], args[#args + 2], args[#args + 3] = 'RIGHT', 'COUNT', count
local taken = redis.call('LMPOP', unpack(args))
if taken then
  for i = 4, #KEYS do
    if KEYS[i] == taken[1] then record(taken[2], ARGV[names + i - 4]) end
  end
  return taken
end
if #fair == 0 then return false end
for _ = 1, 8 do
  local low = redis.call('ZRANGE', apps, 0, 1, 'WITHSCORES')
  if #low == 0 then break end
  local app, score, next_score = low[1], tonumber(low[2]), tonumber(low[4] or '')
  if score == 0 then
    local lead = redis.call('ZRANGEBYSCORE', apps, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if lead[2] then score = tonumber(lead[2]) end
  end
  if next_score and next_score < score then next_score = score end
  local weight = weights[app] or default_weight
  local want = tonumber(count)
  if next_score then want = math.min(want, math.max(quantum, math.ceil((next_score - score) * weight))) end
  local lists = {#fair}
  for i, queue in ipairs(fair) do lists[i + 1] = 'FAIR_READY_PREFIX' .. app .. ':' .. queue end
  lists[#lists + 1], lists[#lists + 2], lists[#lists + 3] = 'RIGHT', 'COUNT', want
  local got = redis.call('LMPOP', unpack(lists))
  if got then
    redis.call('ZADD', apps, 'XX', score + #got[2] / weight, app)
    local queue = string.sub(got[1], string.len('FAIR_READY_PREFIX') + string.len(app) + 2)
    record(got[2], '"' .. queue .. '"')
    return {queue, got[2]}
  end
  redis.call('ZREM', apps, app)
end
redis.call('DEL', doorbell)  -- nothing anywhere: a bell rung meanwhile would wake a worker for nothing
return false
""".replace("FAIR_READY_PREFIX", redis_keys.FAIR_READY_PREFIX)
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()

# A message a blocked BRPOP handed over must be recorded whatever the memory: it is in hand and nowhere else.
# KEYS: the unacked set. ARGV: now, member.
RECORD = """#!lua flags=allow-oom
return redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
"""

# Messages one TAKE pops at most (never more than the worker has free slots for).
TAKE_MAX = 10
# How long a consumer waits before taking again after Redis refused a TAKE (a full Redis, most likely).
TAKE_BACKOFF_S = 1.0
# A BRPOP answered sooner than this found a message already waiting; after QUICK_WAKES such answers in a row, the
# next ones are taken with TAKE.
WAITED_S = 0.005
QUICK_WAKES = 2
# The shortest wait of a BRPOP that leaves a full lane's queues out (module docstring). Waiting kombu's second, a
# worker whose proxy calls all ended together took the next ones only when a batch step's message or the timeout woke
# it: whole batches ran at two thirds of their ceiling (docs/batch.md).
FULL_LANE_WAIT_S = 0.01
# A refusal is logged at most this often while it lasts.
REFUSAL_LOG_EVERY_S = 30.0


def unacked_member(message: str, queue: str) -> str:
    """The unacked set's member for a message TAKE recorded, exactly as the script builds it."""
    return f'[{message},"",{json.dumps(queue)}]'


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The exact member each unacknowledged delivery was recorded under, to remove it by.
        self._members: dict[str, str] = {}
        # Members acknowledged and not yet removed; appended from any thread, flushed on the hub's.
        self._acked: list[str] = []
        self._acked_lock = threading.Lock()
        self._ack_flush = HubFlush(self.flush_acks, ACK_BATCH_S)
        # Members the channel recorded as it took their messages (TAKE), by delivery tag, until `append`.
        self._recorded: dict[str, str] = {}

    def _channel_gone(self) -> bool:
        return self.channel.connection is None or self.channel.closed

    def recorded(self, delivery_tag: str, member: str) -> None:
        """The channel took this message and recorded it already: `append` has nothing to write."""
        self._recorded[delivery_tag] = member

    def append(self, message, delivery_tag):  # type: ignore[no-untyped-def]
        member = self._recorded.pop(delivery_tag, None)
        if member is None:
            delivery = message.delivery_info
            member = json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            self.channel.held().execute("ZADD", self.unacked_index_key, time(), member)
        self._members[delivery_tag] = member
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("ack of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        self._forget(delivery_tag)
        return virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue=False):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("reject of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag)
        return virtual.QoS.ack(self, delivery_tag)

    def _forget(self, delivery_tag: str) -> None:
        member = self._members.pop(delivery_tag, None)
        if member is None:
            return
        hub = self.channel.connection.hub
        if hub is None:  # not in a worker's event loop: nothing would flush a batch
            self.channel.held().execute("ZREM", self.unacked_index_key, member)
            return
        with self._acked_lock:
            self._acked.append(member)
        self._ack_flush.request(hub)

    def flush_acks(self) -> None:
        """Removes every acknowledged member collected so far, in one command."""
        with self._acked_lock:
            members, self._acked = self._acked, []
        if not members:
            return
        try:
            self.channel.held().execute("ZREM", self.unacked_index_key, *members)
        except Exception as err:
            log.warning("could not record %d acknowledgement(s) (%s); those messages come back after the "
                        "visibility timeout, and a finished job's claim skips them", len(members), type(err).__name__)

    def restore_unacked_once(self, stderr=None):  # type: ignore[no-untyped-def]
        self.flush_acks()  # the channel is closing: its acknowledged messages must not come back
        return super().restore_unacked_once(stderr)

    def restore_unacked(self, client=None):  # type: ignore[no-untyped-def]
        try:
            with self.channel.conn_or_acquire(client) as client:
                for tag in list(self._delivered):
                    self.restore_by_tag(tag, client)
        except Exception as err:
            log.warning("could not hand %d message(s) back on close (%s); they return after the visibility timeout",
                        len(self._members), type(err).__name__)
        self._delivered.clear()
        self._members.clear()

    def restore_by_tag(self, tag, client=None, leftmost=False):  # type: ignore[no-untyped-def]
        member = self._members.pop(tag, None)
        if member is not None:
            with self.channel.conn_or_acquire(client) as client:
                self._restore_member(client, member, leftmost)

    def restore_visible(self, start=0, num=10, interval=10):  # type: ignore[no-untyped-def]
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            ceil = time() - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    overdue = client.zrange(self.unacked_index_key, ceil, 0, desc=True, byscore=True,
                                            offset=num and start, num=num)
                    for member in overdue or []:
                        self._restore_member(client, bytes_to_str(member), leftmost=False)
            except kombu_redis.MutexHeld:
                pass
            except redis.ResponseError as err:  # a full Redis refuses the lock: the next pass tries again
                log.warning("restore pass skipped: %s", type(err).__name__)

    def _restore_member(self, client: Any, member: str, leftmost: bool) -> None:
        try:
            payload, exchange, routing_key = json.loads(member)
            queues = self.channel.restore_queues(payload, exchange, routing_key)
        except Exception:
            log.error("dropping an unreadable entry of the unacked set: %.200r", member)
            client.zrem(self.unacked_index_key, member)
            return
        client.eval(RESTORE, 1 + len(queues), self.unacked_index_key, *queues,
                    member, json.dumps(payload), "LPUSH" if leftmost else "RPUSH")


class LaneCycle:
    """Kombu's queue cycle, whose `consume` (the queues of the next BRPOP) leaves out those of a full lane."""

    def __init__(self, cycle: Any, lanes: Lanes) -> None:
        self._cycle = cycle
        self._lanes = lanes

    def consume(self, n: int) -> list[str]:
        return self._lanes.open_queues(self._cycle.consume(n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cycle, name)


class Channel(kombu_redis.Channel):
    QoS = QoS
    unacked_index_key = UNACKED_KEY
    _shared_client: Any = None
    _held: HeldConnections | None = None
    # What the consuming connection was sent: 'take' (TAKE), 'wait' (BRPOP for TAKE's mode) or None (kombu's own).
    _sent: str | None = None
    _take_next = True  # False after a TAKE found nothing: block with BRPOP until a message comes
    _quick_wakes = 0  # BRPOPs in a row that found a message already waiting
    _paused_until = 0.0
    _refusal_logged_at = -REFUSAL_LOG_EVERY_S
    # The call queues the last TAKE that found nothing looked at through the fair turns (what a BRPOP cannot see).
    _empty_take_fair: frozenset[str] = frozenset()
    _take_fair: frozenset[str] = frozenset()
    _waited_full = False  # the BRPOP in progress leaves a full lane's queues out

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Queues consumed without acknowledgements (Celery's control replies): their messages are never recorded.
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)
        # With every lane full, kombu sends no BRPOP at all until a slot frees (it asks again each loop turn).
        self._lanes = worker_lanes()
        self._queue_cycle = LaneCycle(self._queue_cycle, self._lanes)
        self._fair = worker_fair_turns()

    def basic_consume(self, queue, no_ack, *args, **kwargs):  # type: ignore[no-untyped-def]
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_start(self, timeout=None):  # type: ignore[no-untyped-def]
        if self.global_keyprefix or self._no_ack_queues.intersection(self.active_queues):
            self._sent = None
            return super()._brpop_start(timeout)
        if monotonic() < self._paused_until:
            return None  # Redis refused the last TAKE; a hub timer brings the loop back here (`_refused`)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        # The call queues whose jobs may also wait in the apps' ready lists, in priority order.
        fair = [queue for queue in redis_keys.QUEUE_BY_PRIORITY.values() if queue in queues] if self._fair else []
        if not set(fair) <= self._empty_take_fair:
            self._take_next = True  # a BRPOP would not see what waits in the ready lists
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        if self._take_next:
            self._sent = "take"
            self._take_fair = frozenset(fair)
            names = [json.dumps(queue) for _ in self.priority_steps for queue in queues]
            # No more than the prefetch allows, nor than the fullest lane of these queues has slots for.
            free = self.qos.can_consume_max_estimate()  # None: no prefetch limit
            room = self._lanes.room(queues)
            count = max(1, min([TAKE_MAX, *(n for n in (free, room) if n is not None)]))
            fair_args = self._fair.take_args(fair) if self._fair else NO_FAIR_TURNS
            self.client.connection.send_command(
                "EVALSHA", TAKE_SHA, 3 + len(keys), self.unacked_index_key, redis_keys.FAIR_APPS,
                redis_keys.FAIR_DOORBELL, *keys, time(), count, *fair_args, *names
            )
        else:
            self._sent = "wait"
            if fair:
                keys.append(redis_keys.FAIR_DOORBELL)  # rung when an app's ready lists fill from empty
            timeout = self.brpop_timeout if timeout is None else timeout
            self._waited_full = len(queues) < len(self.active_queues)
            if self._waited_full:  # come back soon for the queues left out: a slot may free meanwhile
                timeout = self._lanes.refill_wait_s(FULL_LANE_WAIT_S, timeout)
            self.client.connection.send_command("BRPOP", *keys, timeout)
        return None

    def _brpop_read(self, **options):  # type: ignore[no-untyped-def]
        sent, self._sent = self._sent, None
        if sent is None:
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVALSHA" if sent == "take" else "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.ResponseError as err:  # refused before anything was popped
                self._refused(err)
                raise Empty() from None
            if sent == "take":
                return self._deliver_taken(reply)
            return self._deliver_woken(reply)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _queue_of(self, key: bytes | str) -> str:
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        return queue

    def _deliver_taken(self, reply: Any) -> bool:
        if not reply:
            self._take_next = False
            self._empty_take_fair = self._take_fair
            raise Empty()
        self._empty_take_fair = frozenset()
        key, messages = reply
        queue = self._queue_of(key)
        try:
            for item in messages:
                message = bytes_to_str(item)
                payload = loads(message)
                self.qos.recorded(payload["properties"]["delivery_tag"], unacked_member(message, queue))
                self.connection._deliver(payload, queue)
        finally:
            self.qos._recorded.clear()  # any left were never delivered: they come back after the visibility timeout
        return True

    def _deliver_woken(self, reply: Any) -> bool:
        if not reply:
            # BRPOP's timeout: wait again; with fair turns, look at the ready lists first (a bell may have rung
            # for another worker). After a wait for a full lane, they are looked at if it has room now (the check of
            # the fair queues in `_brpop_start`), not to find the lane still full.
            self._take_next = self._fair is not None and not self._waited_full
            if self._take_next:
                self._empty_take_fair = frozenset()
            raise Empty()
        key, item = reply
        if bytes_to_str(key) == redis_keys.FAIR_DOORBELL:
            self._take_next, self._empty_take_fair = True, frozenset()  # an app's ready lists filled: take
            raise Empty()
        queue = self._queue_of(key)
        message = bytes_to_str(item)
        payload = loads(message)
        member = unacked_member(message, queue)
        recorded_past_limit = False
        try:
            self.held().execute("ZADD", self.unacked_index_key, time(), member)
        except redis.exceptions.OutOfMemoryError:
            self.held().execute("EVAL", RECORD, 1, self.unacked_index_key, time(), member)
            recorded_past_limit = True
        self.qos.recorded(payload["properties"]["delivery_tag"], member)
        quick = monotonic() - (self._brpop_sent_at or 0.0) < WAITED_S
        self._quick_wakes = self._quick_wakes + 1 if quick else 0
        self._take_next = recorded_past_limit or self._quick_wakes >= QUICK_WAKES
        if self._take_next:
            self._quick_wakes = 0
        self.connection._deliver(payload, queue)
        return True

    def _refused(self, err: redis.ResponseError) -> None:
        """Redis refused a TAKE: load it if Redis lost it, else wait a moment (the loop is woken to try again)."""
        if isinstance(err, redis.exceptions.NoScriptError):
            self.client.script_load(TAKE)  # on the consuming connection, idle now; taken again at once
            return
        now = monotonic()
        self._paused_until = now + TAKE_BACKOFF_S
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            self._refusal_logged_at = now
            what = "Redis is full" if isinstance(err, redis.exceptions.OutOfMemoryError) else "Redis refused"
            log.warning("%s (%s: %s): taking no messages for %gs at a time; they wait in their queues",
                        what, type(err).__name__, err, TAKE_BACKOFF_S)
        hub = self.connection.hub
        if hub is not None:
            hub.call_later(TAKE_BACKOFF_S, _wake)

    def _shared(self) -> Any:
        shared = self._shared_client
        # A new pool (after a reconnect) gets a new client.
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
            self._held = HeldConnections(shared)
        return shared

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared()

    def held(self) -> HeldConnections:
        """The unacked set's commands, one per delivery and one per acknowledgement, on a held connection."""
        self._shared()
        assert self._held is not None
        return self._held

    def restore_queues(self, payload: dict[str, Any], exchange: str, routing_key: str) -> list[str]:
        """Marks a message redelivered and names the queues it goes back to (kombu's `_do_restore_message`)."""
        headers = payload.get("headers")
        if isinstance(headers, dict):
            headers["redelivered"] = True
        delivery_info = payload.get("properties", {}).get("delivery_info")
        if isinstance(delivery_info, dict):
            delivery_info["redelivered"] = True
        priority = self._get_message_priority(payload, reverse=False)
        return [self._q_for_pri(queue, priority) for queue in self._lookup(exchange, routing_key)]

    def _restore(self, message, leftmost=False):  # type: ignore[no-untyped-def]
        self.qos.restore_by_tag(message.delivery_tag, leftmost=leftmost)


def _wake() -> None:
    """A timer's only job: a turn of the hub's loop, whose tick starts the next take."""


class Transport(kombu_redis.Transport):
    Channel = Channel
    # The worker's event loop (kombu's hub), once Celery's consumer registers with it.
    hub: Any = None

    def register_with_event_loop(self, connection, loop):  # type: ignore[no-untyped-def]
        super().register_with_event_loop(connection, loop)
        self.hub = loop


def deliveries_before(client: Any, delivered_before: float, limit: int) -> list[str]:
    """Members of the unacked set delivered before `delivered_before`, oldest first (at most `limit`)."""
    members = client.zrangebyscore(UNACKED_KEY, "-inf", delivered_before, start=0, num=limit)
    return [bytes_to_str(member) for member in members]


def task_of(member: str) -> tuple[str, list[Any], str] | None:
    """(task name, positional args, routing key) of an unacked member; None for one that is not a task."""
    try:
        payload, _, routing_key = json.loads(member)
        args = json.loads(base64.b64decode(payload["body"]))[0]
        return payload["headers"]["task"], args, routing_key
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def push_back(client: Any, member: str, queue: str) -> bool:
    """Hand one unacknowledged delivery back to `queue` before its visibility timeout, as a restore would.

    True if this call took it out of the set (so no one else pushes it, and its late acknowledgement, if its
    worker was alive after all, removes nothing)."""
    payload, _, _ = json.loads(member)
    headers = payload.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    return bool(client.eval(RESTORE, 2, UNACKED_KEY, queue, member, json.dumps(payload), "RPUSH"))
