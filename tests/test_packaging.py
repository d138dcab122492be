"""Installed, llmq is one import namespace: `llmq.…`, with no generic top-level names beside it; and what is
installed is what the lock files pin."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


# --- lock files: what make, CI and the image install --------------------------------------------------

LOCKS = ROOT / "requirements"


def _pins(lock: str) -> dict[str, Version]:
    pins = {}
    for line in (LOCKS / lock).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def _requirements(names: list[str]) -> list[Requirement]:
    return [r for r in map(Requirement, names) if canonicalize_name(r.name) != "llmq"]


@pytest.mark.parametrize(("lock", "declared"), [
    ("runtime.txt", PYPROJECT["project"]["dependencies"]),
    ("mock.txt", PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["mock"]),
    ("dev.txt", PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["mock"]
     + PYPROJECT["project"]["optional-dependencies"]["local"] + PYPROJECT["project"]["optional-dependencies"]["dev"]),
])
def test_lock_pins_every_dependency_within_its_bounds(lock: str, declared: list[str]) -> None:
    pins = _pins(lock)
    for requirement in _requirements(declared):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: run `make lock`"
        assert requirement.specifier.contains(pins[name]), f"{lock} pins {name} {pins[name]}: run `make lock`"


def test_every_lock_pins_the_runtime_packages_alike() -> None:
    runtime = _pins("runtime.txt")
    for lock in ("mock.txt", "dev.txt"):
        pins = _pins(lock)
        assert {name: pins.get(name) for name in runtime} == runtime, lock
    # The mock proxy and the benchmark need aiohttp; the service names it nowhere (the S3 client brings its own).
    declared = {canonicalize_name(Requirement(spec).name) for spec in PYPROJECT["project"]["dependencies"]}
    assert "aiohttp" not in declared


def test_make_installs_the_dev_lock_then_the_project_alone() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = makefile[makefile.index("$(STAMP):"):makefile.index("\nrun:")]
    assert "requirements/dev.txt" in stamp.splitlines()[0]  # a changed lock reinstalls
    assert "pip install --quiet -r requirements/dev.txt" in stamp
    assert "pip install --quiet --no-deps -e ." in stamp
