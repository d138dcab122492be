"""What every command gets: where the API is, which key to use, the timeout, and the output."""

from __future__ import annotations

from dataclasses import dataclass

from llmq.cli.client import ApiClient
from llmq.cli.errors import CliError, ExitCode
from llmq.cli.keys import KEY_HELP, KeyChoice
from llmq.cli.output import Output


@dataclass
class Context:
    api_url: str
    api_url_given: bool  # from --api or LLMQ_API_URL rather than the default
    key: KeyChoice
    timeout_s: float
    out: Output

    def client(self, **options: int) -> ApiClient:
        """An API client; a malformed key stops here, before anything is sent."""
        if self.key.problem:
            raise CliError(f"{self.key.problem}; {KEY_HELP}", ExitCode.USAGE)
        return ApiClient(self.api_url, self.key.key, self.timeout_s, **options)
