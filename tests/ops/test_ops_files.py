"""The deployment files agree with the code: settings, entry points, queues, metrics and routes.

Fast and offline: every file is parsed, and the names it uses are checked against the modules they
refer to. `docker compose config` runs too when the compose plugin is installed.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmq.api.head_limit import API_HTTP_PROTOCOL
from llmq.worker.redis_keys import QUEUE_BY_PRIORITY, QUEUES_IN_ORDER
from llmq.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent

CELERY_APP = "llmq.worker.celery_app"
API_FACTORY = "llmq.api.main:app_from_env"
REQUIRED_IN_COMPOSE = {"LLMQ_SECRET", "LLMQ_FLOWER_BASIC_AUTH"}
# Variables of the deployment files that are not llmq settings.
INFRA_VARS = {
    "LLMQ_IMAGE", "LLMQ_MOCK_IMAGE", "PUBLISH_API_PORT", "PUBLISH_FLOWER_PORT", "PUBLISH_PROMETHEUS_PORT",
    "PUBLISH_GRAFANA_PORT",
    "GRAFANA_ADMIN_PASSWORD", "KEDA_REDIS_ADDRESS", "REDIS_PASSWORD",
}
LLMQ_SERVICES = ("api", "worker", "flower")
EXPOSITION_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
METRIC_RE = re.compile(r"\bllmq_[a-z0-9_]+\b")
VAR_RE = re.compile(r"\$\{([^}]*)\}")
VAR_BODY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.S)


# --- what the code defines ----------------------------------------------------------------------------


def setting_env_names() -> set[str]:
    """Every environment variable the settings read: LLMQ_<FIELD>, or the field's validation aliases."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"LLMQ_{field_name.upper()}")
        elif isinstance(alias, str):
            names.add(alias)
        else:  # AliasChoices
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return names


SETTINGS_ENV = setting_env_names()
KNOWN_VARS = SETTINGS_ENV | INFRA_VARS


def known_var(name: str) -> bool:
    return name in KNOWN_VARS or name.startswith("FLOWER_")


def setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


def exported_metrics() -> dict[str, set[str]]:
    """Metric family -> the sample names it exposes, from the registry once the metrics module is imported."""
    import prometheus_client

    import llmq.worker.observability.metrics  # noqa: F401 - registers the collectors

    families: dict[str, set[str]] = {}
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("llmq_"):
            families[family.name] = {family.name + suffix for suffix in EXPOSITION_SUFFIXES[family.type]}
    return families


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings built in a test see only what the test gives them: no LLMQ_* of the shell, no .env."""
    for name in list(os.environ):
        if name.startswith(("LLMQ_", "TAL_MLOPS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def code_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Import the entry points in a child process (clean environment, dev mode, no .env) and report."""
    script = r"""
import importlib, json, sys
from celery import Celery
import llmq.api.main
import llmq.worker.celery_app as celery_module
from llmq.worker.settings import get_settings
from llmq.mockproxy.__main__ import build_parser

factory = getattr(llmq.api.main, "app_from_env", None)
app = factory()
mock_args = build_parser({}).parse_args(sys.argv[1:])
facts = {
    "factory_callable": callable(factory),
    "routes": sorted(app.openapi()["paths"]),
    "celery_app": isinstance(getattr(celery_module, "app", None), Celery),
    "celery_queues": [queue.name for queue in celery_module.app.conf.task_queues],
    "broker_url": celery_module.app.conf.broker_url,
    "metrics_port": get_settings().worker_metrics_port,
    "mock_host": mock_args.host,
    "mock_port": mock_args.port,
    "mock_latency_ms": mock_args.latency_ms,
}
print(json.dumps(facts))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_", "FLOWER_"))}
    env.update(LLMQ_DEV_MODE="1", LLMQ_LOG_FORMAT="text")
    mock_cmd = compose_services()["mock-proxy"]["command"]
    result = subprocess.run(
        [sys.executable, "-c", script, *mock_cmd[1:]], cwd=tmp_path_factory.mktemp("no-dotenv"), env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- parsing helpers ----------------------------------------------------------------------------------


def compose_doc() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_services() -> dict[str, Any]:
    return compose_doc()["services"]


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((OPS / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in ops/k8s, found {len(found)}"
    return found[0]


def option_value(args: list[str], *flags: str) -> str:
    """The value of `-X value`, `--flag value` or `--flag=value` in an argument list."""
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag:
                return args[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {flags} in {args}")


def variable_references(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every ${...} in compose-style text; $$ is a literal dollar."""
    text = text.replace("$$", "")
    bare = re.findall(r"\$(?!\{)[A-Za-z_]", text)
    assert not bare, f"use ${{VAR}} with a default or :? instead of bare $VAR: {bare}"
    refs = []
    for body in VAR_RE.findall(text):
        match = VAR_BODY_RE.match(body)
        assert match, f"unreadable variable reference ${{{body}}}"
        refs.append((match.group(1), match.group(2), match.group(3) or ""))
    return refs


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error})."""

    def substitute(match: re.Match[str]) -> str:
        body = VAR_BODY_RE.match(match.group(1))
        assert body is not None
        name, op, arg = body.group(1), body.group(2), body.group(3) or ""
        value = env.get(name)
        missing = not value if op in (":-", ":?") else value is None
        if op in (":?", "?") and missing:
            raise LookupError(f"{name}: {arg}")
        if op in (":-", "-") and missing:
            return arg
        return value or ""

    return re.sub(r"\$\{([^}]*)\}", substitute, text.replace("$$", "\0")).replace("\0", "$")


def redis_conf(path: Path) -> dict[str, str]:
    conf = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key.lower()] = value.strip()
    return conf


def systemd_unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(OPS / "systemd" / name)
    return parser


def exec_start_args(unit: configparser.RawConfigParser) -> list[str]:
    """ExecStart as the argument list of the program finally run (through `env` or `sh -c ... exec`)."""
    args = shlex.split(unit["Service"]["ExecStart"].replace("%%", "%"))
    if Path(args[0]).name == "env":
        args = [arg for arg in args[1:] if "=" not in arg or arg.startswith("-")]
    if Path(args[0]).name == "sh" and args[1] == "-c":
        inner = shlex.split(args[2])
        args = inner[inner.index("exec") + 1 :]
    return args


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def sample_env() -> dict[str, str]:
    return {
        "LLMQ_SECRET": "an-operations-test-secret-0123456789",
        "LLMQ_FLOWER_BASIC_AUTH": "admin:an-operations-test-password",
    }


# --- every file parses --------------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    parsed = []
    for path in sorted([COMPOSE, *OPS.rglob("*.yml"), *OPS.rglob("*.yaml")]):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), path
        parsed.append(path)
    for path in sorted(OPS.rglob("*.json")):
        assert isinstance(json.loads(path.read_text()), dict), path
        parsed.append(path)
    names = {p.relative_to(ROOT).as_posix() for p in parsed}
    assert {"docker-compose.yml", "ops/prometheus/prometheus.yml", "ops/prometheus/alerts.yml",
            "ops/grafana/llmq-dashboard.json", "ops/k8s/worker-scaledobject.yaml"} <= names


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by its name ("" for the unnamed, last one: the default target)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in dockerfile_instructions():
        if op == "FROM":
            words = arg.split()
            current = stages.setdefault(words[2] if len(words) == 3 and words[1].upper() == "AS" else "", [])
        current.append((op, arg))
    return stages


def test_dockerfile_builds_one_non_root_image_running_the_api() -> None:
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    args = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim"
    stages = dockerfile_stages()
    assert set(stages) == {"build", "runtime", "mock", ""}
    assert all(f.startswith(("${PYTHON_IMAGE}", "runtime")) for f in froms)
    assert stages[""] == [("FROM", "runtime")]  # the default target is the runtime image, unchanged
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "[dev]" not in runs and "dev.txt" not in runs
    copied = {arg.split()[0] for op, arg in instructions if op == "COPY"}
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        assert folder in copied, f"{folder}/ is not copied into the build"
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    exposed = {port for op, arg in instructions if op == "EXPOSE" for port in arg.split()}
    assert exposed == {"8000", "5555", "9808"}
    cmd = json.loads(next(arg for op, arg in stages["runtime"] if op == "CMD"))
    assert cmd[:3] == ["uvicorn", "--factory", API_FACTORY]
    assert option_value(cmd, "--http") == API_HTTP_PROTOCOL  # bounds a request's head (llmq.api.head_limit)

    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".llmq", ".env", ".pytest_cache", "tests"} <= ignored
    assert not (copied & ignored), f"copied but left out of the build context: {copied & ignored}"


def test_dockerfile_installs_the_lock_files() -> None:
    """The image installs the runtime lock and nothing else, then the project without resolving again; the mock
    target adds the mock lock (the runtime pins plus aiohttp)."""
    stages = dockerfile_stages()
    build = " ".join(arg for op, arg in stages["build"] if op == "RUN")
    assert "pip wheel --wheel-dir /wheels -r requirements/mock.txt" in build
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    runtime = " ".join(arg for op, arg in stages["runtime"] if op == "RUN")
    assert "source=requirements/runtime.txt,target=/tmp/runtime.txt" in runtime
    assert "pip install --no-index --find-links=/wheels -r /tmp/runtime.txt" in runtime
    assert "pip install --no-index --find-links=/wheels --no-deps llmq" in runtime
    assert "mock.txt" not in runtime and "aiohttp" not in runtime
    mock = " ".join(arg for op, arg in stages["mock"] if op == "RUN")
    assert "-r /tmp/mock.txt" in mock and "--no-index" in mock
    mock_cmd = json.loads(next(arg for op, arg in stages["mock"] if op == "CMD"))
    assert mock_cmd[0] == "llmq-mock-proxy"


# --- docker compose -----------------------------------------------------------------------------------


def test_compose_services_and_profiles() -> None:
    services = compose_services()
    assert {"redis", "api", "worker", "flower", "mock-proxy"} <= set(services)
    for name in ("redis", *LLMQ_SERVICES):
        assert "profiles" not in services[name], f"{name} must run without a profile"
    assert services["mock-proxy"]["profiles"] == ["dev"]
    for name in ("redis-exporter", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]


def test_compose_variables_are_settings_with_defaults_or_required() -> None:
    refs = variable_references(COMPOSE.read_text())
    assert refs
    for name, op, _ in refs:
        assert known_var(name), f"${{{name}}} is neither an llmq setting nor a known deployment variable"
        assert op in (":-", "-", ":?", "?"), f"${{{name}}} needs a default or :? (an empty value is silent)"
    required = {name for name, op, _ in refs if op == ":?"}
    assert required >= REQUIRED_IN_COMPOSE
    for name, op, message in refs:
        if op == ":?":
            assert name in message, f"the error for {name} should name it"


def test_compose_llmq_services_share_image_env_and_redis() -> None:
    services = compose_services()
    images = {services[name]["image"] for name in LLMQ_SERVICES}
    assert len(images) == 1
    # The mock proxy needs aiohttp, which only the image's `mock` target installs; it never replaces llmq's image.
    mock = services["mock-proxy"]
    assert mock["build"]["target"] == "mock" and mock["image"] not in images
    for name in LLMQ_SERVICES:
        service = services[name]
        assert service["env_file"] == ".env"
        env = service["environment"]
        assert set(env) <= SETTINGS_ENV | {"FLOWER_BASIC_AUTH"}
        assert "redis://redis:6379/0" in env["LLMQ_REDIS_URL"]
        assert "LLMQ_SECRET" in env
        assert env["LLMQ_UPSTREAM_TEST_URL"].endswith("/openai-compatible/v1}")
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert "healthcheck" in service, name
    assert "LLMQ_FLOWER_BASIC_AUTH" in services["flower"]["environment"]["FLOWER_BASIC_AUTH"]


def test_compose_redis_is_durable_and_healthchecked() -> None:
    redis = compose_services()["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in redis["volumes"]}
    conf_in_container = redis["command"][1]
    assert (ROOT / mounts[conf_in_container]).resolve() == OPS / "redis" / "redis.conf"
    assert mounts["/data"] in compose_doc()["volumes"], "Redis data must live in a named volume"


def test_compose_api_command_and_healthcheck(code_facts: dict[str, Any]) -> None:
    api = compose_services()["api"]
    command = api["command"]
    assert command[0] == "uvicorn" and "--factory" in command and API_FACTORY in command
    assert option_value(command, "--http") == API_HTTP_PROTOCOL  # bounds a request's head (llmq.api.head_limit)
    assert code_facts["factory_callable"]
    assert option_value(command, "--port") == "8000"
    assert any(port.endswith(":8000") for port in api["ports"])
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert {"/readyz", "/healthz", "/metrics"} <= set(code_facts["routes"])


def test_compose_worker_command_matches_queues_and_celery_app(code_facts: dict[str, Any]) -> None:
    worker = compose_services()["worker"]
    command = worker["command"]
    assert command[0] == "celery" and command[3] == "worker"
    assert option_value(command, "-A", "--app") == CELERY_APP
    assert option_value(command, "-Q", "--queues").split(",") == list(QUEUES_IN_ORDER)
    assert code_facts["celery_app"]
    assert set(code_facts["celery_queues"]) == set(QUEUES_IN_ORDER)
    # Scalable with --scale worker=N: no fixed name, no host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert str(code_facts["metrics_port"]) in worker["expose"]
    node = option_value(command, "--hostname").replace("%h", "")
    assert f"inspect ping -d {node}" in worker["healthcheck"]["test"][1]
    # Warm shutdown: running calls get at least the read timeout to finish.
    grace_s = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace_s >= setting_default("read_timeout_s")


def test_compose_flower_and_mock_commands(code_facts: dict[str, Any]) -> None:
    services = compose_services()
    flower = services["flower"]["command"]
    assert flower[:4] == ["celery", "-A", CELERY_APP, "flower"]
    assert option_value(flower, "--port") == "5555"

    mock = services["mock-proxy"]["command"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert mock[0] in scripts
    assert scripts[mock[0]] == "llmq.mockproxy.__main__:main"
    # Parsed by the mock's own argument parser (in code_facts): it listens where the default URL points.
    assert (code_facts["mock_host"], code_facts["mock_port"], code_facts["mock_latency_ms"]) == ("0.0.0.0", 8090, 800)
    default_url = compose_services()["api"]["environment"]["LLMQ_UPSTREAM_TEST_URL"]
    assert f"http://mock-proxy:{code_facts['mock_port']}/openai-compatible/v1" in default_url


def test_compose_config_resolves(clean_env: None) -> None:
    """The file interpolates and keeps its shape; `docker compose config` agrees when it is installed."""
    text = COMPOSE.read_text()
    with pytest.raises(LookupError, match="LLMQ_SECRET"):
        interpolate(text, {k: v for k, v in sample_env().items() if k != "LLMQ_SECRET"})
    resolved = yaml.safe_load(interpolate(text, sample_env()))
    assert "${" not in json.dumps(resolved)
    api_env = resolved["services"]["api"]["environment"]
    assert api_env["LLMQ_SECRET"] == sample_env()["LLMQ_SECRET"]
    assert api_env["LLMQ_REDIS_URL"] == "redis://redis:6379/0"
    assert resolved["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"] == sample_env()["LLMQ_FLOWER_BASIC_AUTH"]
    assert resolved["services"]["api"]["ports"] == ["8000:8000"]
    settings = Settings(**{name.removeprefix("LLMQ_").lower(): value for name, value in api_env.items()
                           if value and name.startswith("LLMQ_")})
    assert settings.upstream_url("test") == "http://mock-proxy:8090/openai-compatible/v1"

    docker = shutil.which("docker")
    plugin = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30
    ).returncode == 0
    if plugin:
        assert docker is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_"))}
        project = ROOT
        dotenv = ROOT / ".env"
        if not dotenv.exists():  # env_file: .env must exist; check a copy of the project files instead
            project = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmq-compose-check-{os.getpid()}"
            shutil.rmtree(project, ignore_errors=True)
            shutil.copytree(OPS, project / "ops")
            for name in ("docker-compose.yml", "Dockerfile"):
                shutil.copy(ROOT / name, project / name)
            shutil.copy(ROOT / ".env.example", project / ".env")
        try:
            command = [docker, "compose", "--project-directory", str(project), "-f",
                       str(project / "docker-compose.yml")]
            ok = subprocess.run([*command, "config", "-q"], env={**env, **sample_env()},
                                capture_output=True, text=True, timeout=60)
            assert ok.returncode == 0, ok.stderr
            missing = subprocess.run([*command, "config", "-q"], env=env, capture_output=True, text=True, timeout=60)
            if not dotenv.exists():
                assert missing.returncode != 0 and "LLMQ_SECRET" in missing.stderr
        finally:
            if project != ROOT:
                shutil.rmtree(project, ignore_errors=True)


# --- .env.example -------------------------------------------------------------------------------------


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    assigned = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    names = set(assigned)
    for name in names:
        assert known_var(name), f".env.example names {name}, which nothing reads"
    missing = SETTINGS_ENV - names - {"LLMQ_APP_ID", "LLMQ_APP_KEY"}
    assert not missing, f".env.example lacks {sorted(missing)}"
    active = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert active >= REQUIRED_IN_COMPOSE


# --- Prometheus, alerts, Grafana ----------------------------------------------------------------------


def referenced_metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_RE.findall(expr)}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((OPS / "grafana" / "llmq-dashboard.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_prometheus_scrapes_api_workers_flower_and_redis(code_facts: dict[str, Any]) -> None:
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"llmq-api", "llmq-worker", "flower", "redis"}
    worker_sd = jobs["llmq-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and worker_sd["port"] == code_facts["metrics_port"]
    assert jobs["llmq-api"]["metrics_path"] == "/metrics" and jobs["llmq-api"]["dns_sd_configs"][0]["port"] == 8000
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert jobs["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]
    services = compose_services()
    for host in ("api", "worker", "flower", "redis-exporter"):
        assert host in services
    for rule_file in config["rule_files"]:
        assert (OPS / "prometheus" / rule_file).is_file()


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip() and re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    for needed in ("llmq_queue_depth", 'llmq_jobs_finished_total{status="failed"}', "llmq_webhook_deliveries_total",
                   'up{job="llmq-worker"}', "redis_memory_used_bytes / redis_memory_max_bytes",
                   "llmq_unfinished_jobs"):
        assert needed in exprs, needed


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    families = exported_metrics()
    samples = set().union(*families.values())
    assert {"llmq_jobs_submitted_total", "llmq_upstream_request_duration_seconds_bucket", "llmq_queue_depth"} <= samples
    alert_names = referenced_metric_names([rule["expr"] for rule in alert_rules()])
    dash_exprs = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    dash_exprs += [var.get("definition", "") for var in dashboard()["templating"]["list"]]
    dash_names = referenced_metric_names(dash_exprs)
    assert alert_names and dash_names
    for name in sorted(alert_names | dash_names):
        assert name in samples, f"{name} is not exported by the metrics module (exported: {sorted(samples)})"
    # The dashboard shows every metric the code exports.
    for family in families:
        assert any(name.startswith(family) for name in dash_names), f"no panel shows {family}"


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for words in ("submitted", "finished", "failure ratio", "queue depth", "unfinished", "in-flight",
                  "latency", "status code", "retries", "webhook", "tokens"):
        assert words in titles, words
    latency = next(panel for panel in panels if "latency" in panel["title"].lower())
    quantiles = {re.search(r"histogram_quantile\(([0-9.]+)", t["expr"]).group(1) for t in latency["targets"]}  # type: ignore[union-attr]
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert all("by (le, model)" in t["expr"] for t in latency["targets"])
    provisioning = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert provisioning["datasources"][0]["uid"] == "prometheus"


# --- Kubernetes ---------------------------------------------------------------------------------------


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_k8s_manifests_are_well_formed() -> None:
    docs = list(k8s_docs())
    assert docs
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llmq", path
        if doc["kind"] in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), path
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in docs}
    assert {("Deployment", "llmq-api"), ("Service", "llmq-api"), ("Deployment", "llmq-worker"),
            ("Deployment", "llmq-flower"), ("ConfigMap", "llmq-config"), ("Secret", "llmq-secrets"),
            ("ScaledObject", "llmq-worker")} <= kinds


def test_k8s_settings_are_real(clean_env: None) -> None:
    config = k8s_object("ConfigMap", "llmq-config")["data"]
    secret = k8s_object("Secret", "llmq-secrets")["stringData"]
    for name in [*config, *secret]:
        assert known_var(name), f"{name} in ops/k8s is not a setting"
    assert "LLMQ_SECRET" in secret and "LLMQ_SECRET" not in config
    assert int(config["LLMQ_WORKER_METRICS_PORT"]) == setting_default("worker_metrics_port")
    # The ConfigMap's values pass the settings' own validation.
    settings = Settings(secret="x" * 32, **{k.removeprefix("LLMQ_").lower(): v for k, v in config.items()
                                            if k in SETTINGS_ENV})
    assert settings.worker_concurrency == 200


def test_k8s_api_and_flower(code_facts: dict[str, Any]) -> None:
    api = container(k8s_object("Deployment", "llmq-api"))
    assert api["command"][:3] == ["uvicorn", "--factory", API_FACTORY]
    assert option_value(api["command"], "--http") == API_HTTP_PROTOCOL  # bounds a request's head (llmq.api.head_limit)
    assert api["readinessProbe"]["httpGet"]["path"] in code_facts["routes"]
    assert api["livenessProbe"]["httpGet"]["path"] in code_facts["routes"]
    service = k8s_object("Service", "llmq-api")
    assert service["spec"]["selector"] == k8s_object("Deployment", "llmq-api")["spec"]["selector"]["matchLabels"]

    flower = container(k8s_object("Deployment", "llmq-flower"))
    assert flower["command"][:4] == ["celery", "-A", CELERY_APP, "flower"]
    auth = next(env for env in flower["env"] if env["name"] == "FLOWER_BASIC_AUTH")
    assert auth["valueFrom"]["secretKeyRef"]["key"] in k8s_object("Secret", "llmq-secrets")["stringData"]


def test_k8s_worker_deployment() -> None:
    deployment = k8s_object("Deployment", "llmq-worker")
    worker = container(deployment)
    command = worker["command"]
    assert option_value(command, "-A") == CELERY_APP and "worker" in command
    assert option_value(command, "-Q").split(",") == list(QUEUES_IN_ORDER)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= setting_default("read_timeout_s") + setting_default("connect_timeout_s")
    assert grace < setting_default("visibility_timeout_s")
    assert worker["resources"]["requests"]["cpu"] and worker["resources"]["limits"]["memory"]
    probe = " ".join(worker["livenessProbe"]["exec"]["command"])
    assert f"celery -A {CELERY_APP} inspect ping" in probe
    assert worker["ports"][0]["containerPort"] == setting_default("worker_metrics_port")


def test_keda_scales_the_worker_on_the_priority_queues() -> None:
    scaled = k8s_object("ScaledObject", "llmq-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    deployment = k8s_object("Deployment", target["name"])
    assert "worker" in container(deployment)["command"]
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    redis_triggers = [t for t in spec["triggers"] if t["type"] == "redis"]
    assert sorted(t["metadata"]["listName"] for t in redis_triggers) == sorted(QUEUE_BY_PRIORITY.values())
    config = k8s_object("ConfigMap", "llmq-config")["data"]
    for trigger in redis_triggers:
        meta = trigger["metadata"]
        assert int(meta["listLength"]) > 0
        assert meta.get("address") or config.get(meta["addressFromEnv"])


def test_k8s_redis_matches_the_redis_conf() -> None:
    args = container(k8s_object("StatefulSet", "redis"))["args"]
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--appendfsync") == "everysec"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert option_value(args, "--hash-max-ziplist-value") == redis_conf(OPS / "redis" / "redis.conf")[
        "hash-max-ziplist-value"]


# --- Redis, systemd -----------------------------------------------------------------------------------


def test_redis_conf_is_durable_and_never_evicts() -> None:
    conf = redis_conf(OPS / "redis" / "redis.conf")
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["notify-keyspace-events"] == '""'
    assert conf["timeout"] == "0" and conf["tcp-keepalive"] == "60"
    assert conf["hash-max-ziplist-value"] == "1024"


def test_systemd_units() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("llmq-api.service", "llmq-worker@.service", "llmq-flower.service"):
        unit = systemd_unit(name)
        service = unit["Service"]
        assert service["EnvironmentFile"] == "/etc/llmq/llmq.env", name
        assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM", name
        assert unit["Install"]["WantedBy"] == "multi-user.target", name
        program = Path(exec_start_args(unit)[0]).name
        assert program in scripts or (VENV_BIN / program).exists(), f"{name}: {program} is not installed"

    api = exec_start_args(systemd_unit("llmq-api.service"))
    assert Path(api[0]).name == "uvicorn" and api[1:3] == ["--factory", API_FACTORY]
    assert option_value(api, "--http") == API_HTTP_PROTOCOL  # bounds a request's head (llmq.api.head_limit)

    worker_unit = systemd_unit("llmq-worker@.service")
    worker = exec_start_args(worker_unit)
    assert Path(worker[0]).name == "celery" and option_value(worker, "-A") == CELERY_APP and "worker" in worker
    assert option_value(worker, "-Q").split(",") == list(QUEUES_IN_ORDER)
    assert "%i" in option_value(worker, "--hostname")
    assert "LLMQ_WORKER_METRICS_PORT=98%i" in worker_unit["Service"]["ExecStart"]
    assert int(worker_unit["Service"]["TimeoutStopSec"]) >= setting_default("read_timeout_s")

    flower = exec_start_args(systemd_unit("llmq-flower.service"))
    assert Path(flower[0]).name == "celery" and flower[1:4] == ["-A", CELERY_APP, "flower"]
    assert "FLOWER_BASIC_AUTH=" in systemd_unit("llmq-flower.service")["Service"]["ExecStart"]


# --- docs ---------------------------------------------------------------------------------------------


def test_operations_doc_covers_metrics_and_alerts() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for family in exported_metrics():
        assert family in text, f"docs/operations.md does not describe {family}"
    for rule in alert_rules():
        assert rule["alert"] in text, f"docs/operations.md does not describe alert {rule['alert']}"


def test_worker_metrics_are_private_unless_a_deployment_opens_them() -> None:
    # Loopback by default (a worker's metrics show every listed app id); containers are scraped over their
    # network, so compose and Kubernetes must say 0.0.0.0 themselves.
    assert setting_default("worker_metrics_addr") == "127.0.0.1"
    assert compose_services()["worker"]["environment"]["LLMQ_WORKER_METRICS_ADDR"].endswith(":-0.0.0.0}")
    assert k8s_object("ConfigMap", "llmq-config")["data"]["LLMQ_WORKER_METRICS_ADDR"] == "0.0.0.0"
    assert "LLMQ_WORKER_METRICS_ADDR" in (ROOT / "docs" / "operations.md").read_text()
