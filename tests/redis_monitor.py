"""The commands one Redis database runs, read off MONITOR on a thread."""

from __future__ import annotations

import threading

import redis
from redis.connection import parse_url

STOP = "command-log-stop"


class CommandLog:
    """`with CommandLog(url) as log: ...`, then `log.lines`: the commands clients sent to the URL's database.

    Commands run inside Lua scripts are left out unless `include_scripts`; so are `SELECT`s (every new
    connection's)."""

    def __init__(self, url: str, include_scripts: bool = False) -> None:
        self.url = url
        self.include_scripts = include_scripts
        self.db = int(parse_url(url).get("db", 0))
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=10)
        with client.monitor() as monitor:
            self._ready.set()
            while True:
                entry = monitor.next_command()
                if entry["db"] != self.db or (entry["client_type"] == "lua" and not self.include_scripts):
                    continue
                if entry["command"] == f"ECHO {STOP}":
                    break
                if entry["command"].startswith("SELECT"):
                    continue
                self.lines.append(entry["command"])
        client.close()

    @property
    def commands(self) -> list[str]:
        """The command names alone, upper-case."""
        return [line.split(" ", 1)[0].upper() for line in self.lines]

    def __enter__(self) -> CommandLog:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        # Commands reach MONITOR in the order Redis ran them: once this one is seen, so is everything before.
        client = redis.Redis.from_url(self.url)
        client.echo(STOP)
        client.close()
        self._thread.join(10)
        assert not self._thread.is_alive()
