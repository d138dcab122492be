"""What the proxy said of callers' keys, for the API's quotas: the app ids it accepted, the keys it rejected.

The API checks a key's form only, so an app id alone proves nothing: anyone can invent one to get a fresh quota.
An app id counts as known, with a quota of its own (`LLMQ_APP_MAX_UNFINISHED`), once the proxy has answered one of
its calls with a 2xx; until then it shares `LLMQ_UNKNOWN_APPS_MAX_UNFINISHED` with every app id not known yet. A
key the proxy answered 401 or 403 is refused at submission for `LLMQ_REJECTED_KEY_BLOCK_S`, recorded by its
fingerprint (the jobs' owner id), never the key. The submit script reads both (`worker.jobs.scripts.SUBMIT`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from llmq.worker import redis_keys
from llmq.worker.secrets.key_vault import KeyVault

log = logging.getLogger("llmq.worker")

# An app id already told to Redis is told again after this long (in case Redis lost it), not on every call.
KNOWN_AGAIN_AFTER_S = 600.0
KNOWN_CACHE_SIZE = 10_000


class KeyVerdicts:
    def __init__(
        self, client: redis.Redis, vault: KeyVault, rejected_block_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.vault = vault
        self.rejected_block_s = rejected_block_s
        self._clock = clock
        self._known: dict[str, float] = {}  # app id -> when it was last told to Redis

    def accepted(self, app_id: str) -> None:
        """The proxy answered a call of this app id with a 2xx: one `SADD` per app id and worker process."""
        now = self._clock()
        told = self._known.get(app_id)
        if told is not None and now - told < KNOWN_AGAIN_AFTER_S:
            return
        try:
            self.redis.sadd(redis_keys.KNOWN_APPS, redis_keys.name_part(app_id))
        except redis.RedisError as err:  # told with a later call
            log.warning("app id not recorded as known: %s", type(err).__name__)
            return
        if len(self._known) >= KNOWN_CACHE_SIZE:
            self._known.clear()
        self._known[app_id] = now

    def rejected(self, key: str) -> None:
        """The proxy answered 401 or 403 for this key: submissions with it are refused for a while."""
        if not self.rejected_block_s:
            return
        try:
            self.redis.set(redis_keys.rejected_key(self.vault.owner(key)), "1", ex=self.rejected_block_s)
        except redis.RedisError as err:
            log.warning("rejected key not recorded: %s", type(err).__name__)
