"""An S3-compatible server on loopback for the tests and the benchmark: moto's server, as a child process.

It listens on 127.0.0.1 and a free port, and is reached by IP literal, so nothing resolves a name. The
child gets no AWS variables or proxy settings of the machine; `clean_aws_environment` gives the calling
process the same isolation (explicit test credentials, no shared config files, no instance metadata).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from llmq.devstack.processes import VENV_BIN, ManagedProcess
from llmq.devstack.redis_server import free_port

ACCESS_KEY_ID = "llmq-test"
SECRET_ACCESS_KEY = "llmq-test-secret"  # moto accepts any pair
REGION = "us-east-1"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def isolated_environment(env: MutableMapping[str, str]) -> None:
    """Remove AWS settings and proxies from `env`; point botocore's config files at nothing."""
    for name in [n for n in env if n.startswith(("AWS_", "BOTO_")) or n in PROXY_VARIABLES]:
        del env[name]
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"


@contextmanager
def clean_aws_environment() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        isolated_environment(os.environ)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class S3Server:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        isolated_environment(env)
        args = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = ManagedProcess("s3", args, env, log_path)

    def __enter__(self) -> S3Server:
        self.process.start()
        self.process.wait_for_http(self.endpoint_url + "/moto-api/")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.process.stop()

    def create_bucket(self, bucket: str) -> None:
        import botocore.session

        with clean_aws_environment():
            client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.endpoint_url, region_name=REGION,
                aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
            )
            try:
                client.create_bucket(Bucket=bucket)
            finally:
                client.close()
