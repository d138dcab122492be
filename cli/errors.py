"""Exit codes scripts can rely on, and the one exception that carries them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success; the job succeeded
    FAILED = 1  # the job failed, or doctor found a failure
    USAGE = 2  # bad arguments or configuration
    CANCELLED = 3  # the job was cancelled
    API_ERROR = 4  # the API refused the request (4xx)
    UNREACHABLE = 5  # the API cannot be reached, or answered 5xx
    TIMED_OUT = 6  # gave up waiting for the job to finish
    EXPIRED = 7  # the job's deadline passed before it could be called (again)


EXIT_CODES_HELP = """\
exit codes:
  0  success (for commands that wait: the job succeeded)
  1  the job failed (batch: some line did not succeed), or doctor found a failure
  2  usage error (bad arguments, malformed key)
  3  the job was cancelled
  4  the API refused the request (4xx; its message is printed)
  5  cannot reach the API, or it answered 5xx
  6  timed out waiting for the job
  7  the job expired: its deadline passed before it could be called (again)"""

TERMINAL = ("succeeded", "failed", "cancelled", "expired")


def exit_for_status(status: str | None) -> ExitCode:
    """The exit code a finished job's status stands for; unfinished means we stopped waiting."""
    return {
        "succeeded": ExitCode.OK,
        "failed": ExitCode.FAILED,
        "cancelled": ExitCode.CANCELLED,
        "expired": ExitCode.EXPIRED,
    }.get(status or "", ExitCode.TIMED_OUT)


class CliError(Exception):
    """A failure meant for the user: printed as `llmq: <message>`, then exit with `code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ApiError(CliError):
    """The API answered with its error envelope."""

    def __init__(self, status_code: int, error_type: str, message: str) -> None:
        code = ExitCode.UNREACHABLE if status_code >= 500 else ExitCode.API_ERROR
        super().__init__(f"{message} (HTTP {status_code} {error_type})", code)
        self.status_code = status_code
        self.error_type = error_type
        self.api_message = message
