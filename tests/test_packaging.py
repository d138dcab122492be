"""Installed, llmq is one import namespace: `llmq.…`, with no generic top-level names beside it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAPPED = PYPROJECT["tool"]["setuptools"]["package-dir"]


def _packages_on_disk() -> set[str]:
    found = set()
    for installed_name, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((installed_name, *relative)))
    return found


def test_every_sub_package_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed, "add or remove these in pyproject.toml's [tool.setuptools] packages"


def test_wheel_adds_only_llmq_to_site_packages(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    top_level = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))}
    top_level.discard("bin")  # console scripts
    assert top_level == {"llmq"}
    assert (target / "llmq" / "worker" / "runtime" / "redis_transport.py").is_file()
    assert not (target / "llmq" / "__init__.py").exists()  # a namespace package: nothing to shadow


def test_generic_names_do_not_import_from_outside_the_repository(tmp_path: Path) -> None:
    probe = "import importlib.util as u, llmq.worker.settings; print([u.find_spec(n) is None for n in %r])"
    names = ["api", "worker", "cli", "mockproxy", "devstack", "bench"]
    result = subprocess.run([sys.executable, "-c", probe % names], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == str([True] * len(names))
