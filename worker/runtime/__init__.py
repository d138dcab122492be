"""Plumbing under Celery, kombu, redis-py and httpcore2: the one place llmq leans on libraries' private names.

Each module, what it relies on that its library does not promise, and what would retire it.
`tests/worker/runtime/test_private_names.py` checks every name below against the installed libraries and
fails naming the name and the module; pyproject.toml caps these libraries below their next minor release.

- `redis_transport`: kombu's Redis transport with one sorted set for unacknowledged messages.
  Uses `virtual.Message._raw`, `virtual.QoS._delivered`, `redis.QoS._vrestore_count`, `redis.Mutex` and
  `MutexHeld`; overrides `Channel._restore` and `Channel.conn_or_acquire` and calls `Channel._create_client`,
  `_lookup`, `_get_message_priority` and `_q_for_pri`. Copies `redis.QoS.restore_visible` (with the
  `restore_visible(num=..., interval=...)` call of kombu's cycle), `redis.QoS.restore_unacked` and
  `Channel._do_restore_message`. Needs kombu 5.7's `unacked_restore_interval` and `unacked_restore_throttle`
  transport options. Takes messages with its own `TAKE` script (pop and record in one step, refused whole by a
  full Redis): overrides `Channel._brpop_start`, `Channel._brpop_read` and `Channel.basic_consume`, and reads
  `_queue_cycle`, `_in_poll`, `_brpop_sent_at`, `_flush_brpop_reauth`, `connection._deliver`,
  `client.parse_response`, `global_keyprefix`, `brpop_timeout` and `QoS.can_consume_max_estimate`. Retired by a
  kombu Redis transport that survives a closed channel and a full Redis, and records a delivery in one command.
- `hub_flush`: relies on kombu 5.7's `Hub.call_soon` waking the hub from another thread (kombu 5.6 and
  earlier only queue the callback until the poller's next turn). Nothing to retire: it is the public call.
- `consumer`: Celery's consumer with batched task events. Overrides `Consumer.on_send_event_buffered` (the
  hook Celery's `Events` step hands its dispatcher), wraps the `event_dispatcher` attribute the step sets,
  calls `Consumer._flush_events` and sets `EventDispatcher.buffer_limit`. Retired by a Celery setting for
  the event flush interval.
- `asyncio_pool`: a Celery pool (`BasePool`, documented) on the event loop; overrides `BasePool._get_info`
  and calls `celery.concurrency.base.apply_target`. Retired by an asyncio pool in Celery itself.
- `asyncio_network`: an httpcore2 network backend (a public extension point); replaces httpx2's
  `AsyncHTTPTransport._pool` because the transport does not take a backend. Retired by httpx2's own
  asyncio backend (pydantic/httpx2 pull request 1170) or a `network_backend` argument to the transport.
- `held_connection`: redis-py commands on a connection a thread keeps: `ConnectionPool.get_connection()`
  called without a command name, then `Connection.send_command` / `read_response` directly, bypassing
  `Redis.execute_command`. Retired by a cheaper `execute_command` in redis-py.
- `broker_message`: no private name, but a copy of the JSON kombu's Redis transport pushes; its test compares
  it with a message Celery publishes. Retired by nothing: submitting in one script needs it.
- `lanes`: slots of their own for webhook deliveries. Relies on Celery handing a pool the task's name as the
  tracer's first argument, and on kombu's Redis channel taking the queues of each `BRPOP` from
  `Channel._queue_cycle.consume` (which `redis_transport` wraps). Retired by a per-queue prefetch in Celery.
- `event_loop`, `gc_tuning`, `allocator`: public APIs only (uvloop, greenback, `gc`, glibc's `mallopt`).
- `fair_turns`: no library at all: the weights and quantum `redis_transport`'s `TAKE` is given for fair turns
  between app ids (docs/fairness.md).

Outside this package, three modules lean on private behaviour too, listed here and checked by the same test:
- `llmq.api.head_limit` subclasses uvicorn's `HttpToolsProtocol` (named by uvicorn's `--http` import string, not
  in its documentation): extends `on_message_begin`, `on_headers_complete`, `data_received` and
  `send_400_response(msg)`, reads `url`, `headers`, `transport` and `server_state.default_headers`, and relies on
  `data_received` answering a parser error (a callback's exception, `httptools.HttpParserCallbackError`,
  included) with `send_400_response`. Retired by a header size limit in uvicorn's httptools protocol.
- `loop_redis`: overrides `redis.asyncio.Connection.pack_command`, relying on `send_command` packing through it,
  and calls `hiredis.pack_command` (the API's clients use the same connection class). Retired by hiredis packing
  in redis-py's asyncio client.
- `llmq.worker.observability.logs` sets the standard library's `logging._srcfile` to None, as the logging
  HOWTO's "Optimization" section advises.
"""
