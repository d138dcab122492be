"""Without aiohttp (the service's own dependencies only), the mock proxy's commands stop with one line naming
the extra to install, before starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs a command's entry point with aiohttp made unimportable, as in an install without the 'mock' extra.
WITHOUT_AIOHTTP = "import sys; sys.modules['aiohttp'] = None; from {module} import main; sys.exit(main([]))"


@pytest.mark.parametrize(("program", "module"), [
    ("llmq-mock-proxy", "llmq.mockproxy.__main__"),
    ("llmq-dev", "llmq.devstack.__main__"),
])
def test_command_without_aiohttp_names_the_extra(program: str, module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_"))}
    result = subprocess.run([sys.executable, "-c", WITHOUT_AIOHTTP.format(module=module)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{program}: the mock proxy needs aiohttp, which comes with llmq's 'mock' extra: "
        "pip install 'llmq[mock]' (make run installs it)"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing started: no Redis data, no logs
