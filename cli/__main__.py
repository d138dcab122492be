"""`llmq`: the command line (argparse wiring; each command lives in its own module)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from llmq.cli import __version__, batch, doctor, jobs, submit, watch
from llmq.cli.context import Context
from llmq.cli.errors import EXIT_CODES_HELP, CliError, ExitCode
from llmq.cli.keys import resolve_key, secrets_of
from llmq.cli.output import Output

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
Command = Callable[[Context, argparse.Namespace], int]

DESCRIPTION = "Command-line client of llmq, the asynchronous front door of the OpenAI-compatible LLM proxy."
EPILOG = f"""\
{EXIT_CODES_HELP}

environment:
  LLMQ_API_URL        the llmq API (default {DEFAULT_API_URL})
  LLMQ_KEY            your platform key, appID:appKey
  TAL_MLOPS_APP_KEY   the key as the proxy guide sets it: the whole appID:appKey,
  TAL_MLOPS_APP_ID    or the appKey alone with the appID in TAL_MLOPS_APP_ID

Output is JSON for machines (one line; --pretty indents it); messages go to stderr as 'llmq: ...'.
The key is never printed. See docs/cli.md."""


class Parser(argparse.ArgumentParser):
    """Usage errors in the CLI's own format (`llmq: <message>`), with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"llmq: {message}\n")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def global_options() -> Parser:
    # Defaults are suppressed so these work before or after the command name (`llmq --pretty get` and
    # `llmq get --pretty`); the real defaults are filled in by `make_context`.
    parent = Parser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument("--api", metavar="URL", default=argparse.SUPPRESS,
                       help=f"llmq API base URL (env LLMQ_API_URL, default {DEFAULT_API_URL})")
    group.add_argument("--key", metavar="APPID:APPKEY", default=argparse.SUPPRESS,
                       help="platform key (env LLMQ_KEY, else TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY); "
                            "prefer the environment: arguments show up in `ps`")
    group.add_argument("--timeout", metavar="SECONDS", type=positive_float, default=argparse.SUPPRESS,
                       help=f"HTTP timeout per request (default {DEFAULT_TIMEOUT_S:g}); long-polls add their wait")
    group.add_argument("--pretty", action="store_true", default=argparse.SUPPRESS, help="indent JSON output")
    return parent


def wait_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", nargs="?", const=math.inf, type=positive_float, metavar="SECONDS",
                        help=f"{what}; give up after SECONDS in total (exit 6); no value: no limit")


def job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=("high", "normal", "low"), help="queue (default normal)")
    parser.add_argument("--environment", choices=("test", "prod"), help="which proxy the job goes to")
    parser.add_argument("--max-attempts", type=positive_int, metavar="N", help="attempts at most, first included")
    parser.add_argument("--deadline", metavar="TIME",
                        help="RFC 3339 time with a timezone (2026-12-06T05:00:00Z): no attempt starts after it; "
                             "a job still waiting then ends expired (exit 7)")
    parser.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                        help="kept with the job and returned as is (repeatable; JSON values allowed)")


def build_parser() -> argparse.ArgumentParser:
    common = global_options()
    parser = Parser(prog="llmq", description=DESCRIPTION, epilog=EPILOG, parents=[common],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llmq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Command, help_text: str, epilog: str = EXIT_CODES_HELP) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=run)
        return sub

    sub = command("submit", submit.run, "Submit a chat request; prints the job id (or the job, with --json/--wait).")
    sub.add_argument("--model", help="model name as the proxy knows it (overrides the file's)")
    sub.add_argument("--message", action="append", metavar="TEXT", help="a user message (repeatable)")
    sub.add_argument("--system", action="append", metavar="TEXT", help="a system message, sent first (repeatable)")
    sub.add_argument("--stream", action="store_true", help="call the proxy in streaming mode (see `llmq watch`)")
    sub.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="extra request parameter, value parsed as JSON: temperature=0.2 (repeatable)")
    sub.add_argument("--file", metavar="PATH",
                     help="a JSON chat request, or a whole job with a \"request\" key; '-' reads stdin")
    job_options(sub)
    sub.add_argument("--callback-url", metavar="URL", help="webhook that receives the finished job")
    sub.add_argument("--callback-secret", metavar="WHSEC", help="per-job webhook signing secret, whsec_<base64>")
    sub.add_argument("--idempotency-key", metavar="KEY", help="the same key returns the first job instead of a new one")
    sub.add_argument("--json", action="store_true", help="print the API's whole answer instead of the id")
    wait_option(sub, "wait for the job to finish and print it; exit code by its status")

    sub = command("get", jobs.get, "Print a job (status, attempts, result or error).")
    sub.add_argument("job_id", metavar="ID")
    wait_option(sub, "long-poll until the job finishes; exit code by its status")

    sub = command("cancel", jobs.cancel, "Cancel an unfinished job (exit 4 if it has already finished).")
    sub.add_argument("job_id", metavar="ID")

    sub = command("watch", watch.run, "Follow a job live: text to stdout, state changes to stderr.")
    sub.add_argument("job_id", metavar="ID")
    sub.add_argument("--json", action="store_true", help="print every event as one JSON line instead")
    sub.add_argument("--max-reconnects", type=int, default=5, metavar="N",
                     help="reconnect (resuming with Last-Event-ID) at most N times in a row (default 5)")

    sub = command("batch", batch.run, "Run a JSONL file of requests (OpenAI Batch API lines); write results JSONL.")
    sub.add_argument("file", metavar="FILE.jsonl", help="one request per line; '-' reads stdin (then -o is needed)")
    sub.add_argument("-o", "--output", metavar="OUT.jsonl", help="results file (default <input stem>.out.jsonl)")
    sub.add_argument("--concurrency", type=positive_int, default=32, metavar="N",
                     help="requests in flight at once (default 32)")
    sub.add_argument("--wait-timeout", type=positive_float, metavar="SECONDS",
                     help="stop waiting after this long (exit 6; running the same file again collects the rest)")
    sub.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    sub.add_argument("--batch-api", action="store_true",
                     help="run the file as one OpenAI batch (/v1/files, /v1/batches): lines at priority low, "
                          "retried until the 24 h window ends; --priority and --max-attempts do not apply")
    job_options(sub)

    sub = command("doctor", doctor.run, "Check key, base URL, model and network against the proxy guide.")
    sub.add_argument("--base-url", metavar="URL", help="the proxy's base URL (default: LLMQ_UPSTREAM_<ENV>_URL)")
    sub.add_argument("--environment", choices=("test", "prod"),
                     help="which LLMQ_UPSTREAM_*_URL to check (default LLMQ_UPSTREAM_DEFAULT_ENV or test)")
    sub.add_argument("--model", default=doctor.DEFAULT_MODEL, help=f"model to try (default {doctor.DEFAULT_MODEL})")
    sub.add_argument("--json", action="store_true", help="print the checks as JSON instead of lines")
    return parser


def make_context(args: argparse.Namespace) -> Context:
    environ = os.environ
    key = resolve_key(getattr(args, "key", None), environ)
    api_flag = getattr(args, "api", None) or environ.get("LLMQ_API_URL")
    return Context(
        api_url=api_flag or DEFAULT_API_URL,
        api_url_given=bool(api_flag),
        key=key,
        timeout_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
        out=Output(pretty=getattr(args, "pretty", False), secrets=secrets_of(key)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = make_context(args)
    try:
        return int(args.run(ctx, args))
    except CliError as err:
        ctx.out.error(err.message)
        return int(err.code)
    except BrokenPipeError:
        # The reader went away (`llmq watch ID | head`): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except KeyboardInterrupt:
        # Waiting threads (batch long-polls) would hold the process up to a minute: leave at once.
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
