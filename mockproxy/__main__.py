"""Command line: `python -m llmq.mockproxy` / `llmq-mock-proxy`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from llmq.mockproxy import require_aiohttp
from llmq.mockproxy.config import ENV_PREFIX, MockConfig, fault_values_from_env, split_list
from llmq.mockproxy.faults import ConfigError, FaultConfig

_HELP = {
    "latency_ms": "sleep this long before answering",
    "latency_jitter_ms": "add a uniform random offset in [-J, +J] ms to the latency",
    "fail_500_rate": "probability of a 500 answer",
    "fail_502_rate": "probability of a 502 answer",
    "fail_503_rate": "probability of a 503 answer",
    "rate_limit_rate": "probability of a 429 answer with Retry-After",
    "retry_after_s": "Retry-After value of random 429 answers",
    "timeout_rate": "probability of hanging without answering",
    "hang_s": "how long a hang lasts before the connection is dropped",
    "reset_rate": "probability of resetting the TCP connection without a response",
    "garbage_rate": "probability of a 200 answer that is not a chat completion",
    "stream_cut_rate": "probability of ending a stream early (no finish_reason, no [DONE])",
    "chunk_delay_ms": "delay between stream chunks",
    "seed": "seed for reproducible random faults",
}


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmq-mock-proxy",
        description=f"Mock of the OpenAI-compatible LLM proxy. Every flag also reads {ENV_PREFIX}<NAME>.",
    )
    parser.add_argument("--host", default=environ.get(f"{ENV_PREFIX}HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(environ.get(f"{ENV_PREFIX}PORT", "8090")),
                        help="0 picks a free port (default 8090)")
    parser.add_argument(
        "--accept-key", dest="accept_keys", action="append", metavar="APPID:APPKEY",
        help=f"accept only these keys (repeatable; env {ENV_PREFIX}ACCEPT_KEYS, comma separated)",
    )
    parser.add_argument("--model", dest="models", action="append", metavar="NAME",
                        help=f"known models, others get 404 (repeatable; env {ENV_PREFIX}MODELS)")
    parser.add_argument("--log-level", default=environ.get(f"{ENV_PREFIX}LOG_LEVEL", "WARNING"))
    for f in fields(FaultConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = int if f.name == "seed" else float
        env = f"{ENV_PREFIX}{f.name.upper()}"
        parser.add_argument(flag, dest=f.name, type=kind, default=None,
                            help=f"{_HELP.get(f.name, '')} (env {env}, default {f.default})")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> MockConfig:
    """Flags win over environment variables, which win over the built-in defaults."""
    values: dict[str, Any] = fault_values_from_env(environ)
    for f in fields(FaultConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    accept_keys = args.accept_keys or split_list(environ.get(f"{ENV_PREFIX}ACCEPT_KEYS", ""))
    models = args.models or split_list(environ.get(f"{ENV_PREFIX}MODELS", ""))
    return MockConfig(
        faults=FaultConfig().updated(values),
        accept_keys=frozenset(accept_keys) or None,
        models=frozenset(models) or None,
    )


def _announce(url: str) -> None:
    # Exactly one line: callers read it to learn the port that was bound.
    sys.stdout.write(f"mock proxy listening on {url}\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    require_aiohttp("llmq-mock-proxy")
    from llmq.mockproxy.server import run  # imports aiohttp

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(config, args.host, args.port, _announce)


if __name__ == "__main__":
    main()
