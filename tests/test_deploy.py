"""The deployment files (Dockerfile, docker-compose.yml, .env.example, deploy/k8s) checked against
the code, with no Docker engine: commands, services, variables, ports and routes must all exist.

Variable names are derived from the pydantic-settings classes, never listed by hand, so a new
setting that is not wired into the deployment files fails here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from chatbeto import health
from chatbeto.consumer import BatchConsumer, ConcurrentConsumer
from chatbeto.settings import BaseServiceSettings, GatewaySettings
from chatbeto_tools.cli import SERVICES, parser
from pydantic import AliasChoices

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S = ROOT / "deploy" / "k8s"
BACKING = {"postgres", "rabbitmq"}
STUB = "openai-stub"  # optional (profile "stub"): the local OpenAI-compatible stub

# Contract section 2, with its defaults (None: unset by default).
CONTRACT_DEFAULTS: dict[str, str | None] = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/chatbeto",
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "GATEWAY_HOST": "127.0.0.1",
    "GATEWAY_PORT": "8080",
    "OPENAI_API_KEY": None,
    "OPENAI_ORG_ID": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_MODEL": "gpt-4",
    "OPENAI_MAX_TOKENS": "2000",
    "OPENAI_TEMPERATURE": "0.7",
    "OPENAI_TIMEOUT": "60",
    "WEBHOOK_SECRET": None,
    "OPENAI_WEBHOOK_SECRET": None,
    "RATE_LIMIT": "50/15m",
    "INGEST_RATE_LIMIT": "6000/1m",
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
}
# Values a container must have whatever the contract's process default is.
CONTAINER_OVERRIDES = {"GATEWAY_HOST": "0.0.0.0", "HEALTH_HOST": "0.0.0.0"}
# These point at the compose file's own Postgres and RabbitMQ instead of 127.0.0.1.
COMPOSE_URLS = {"DATABASE_URL": "postgres", "AMQP_URL": "rabbitmq"}
HEALTHCHECK_SNIPPET_ARG = 3  # ["CMD", "python", "-c", SNIPPET, URL]


# --- what the code says ------------------------------------------------------------------------


def _subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def settings_classes() -> list[type[BaseServiceSettings]]:
    """Every settings class, after importing every service's entry module."""
    for module in SERVICES.values():
        importlib.import_module(module)
    return list(dict.fromkeys([BaseServiceSettings, *_subclasses(BaseServiceSettings)]))


def env_names(cls: type[BaseServiceSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif field.alias:
            names.add(field.alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def all_setting_names() -> set[str]:
    return set().union(*(env_names(cls) for cls in settings_classes()))


def optional_setting_names() -> set[str]:
    """Settings whose default is None: unset unless configured."""
    out: set[str] = set()
    for cls in settings_classes():
        for name, field in cls.model_fields.items():
            if field.default is None and not field.is_required():
                out.add(name.upper())
    return out


def settings_class_of(service: str) -> type[BaseServiceSettings]:
    """The settings class a service's entry module loads (the most derived one it imports)."""
    module = importlib.import_module(SERVICES[service])
    found = {
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, BaseServiceSettings)
    }
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    assert len(leaves) == 1, f"{service}: cannot tell its settings class from {found}"
    return leaves[0]


def worker_drain_seconds() -> float:
    return max(
        float(inspect.signature(c.close).parameters["drain_timeout_seconds"].default)
        for c in (BatchConsumer, ConcurrentConsumer)
    )


def port_variable(service: str) -> str:
    """The variable that sets a worker's own health port (it wins over HEALTH_PORT)."""
    variable: str = settings_class_of(service).HEALTH_PORT_VARIABLE  # type: ignore[attr-defined]
    return variable


def gateway_routes() -> set[str]:
    from chatbeto_gateway.app import create_app

    app = create_app(GatewaySettings(_env_file=None))
    return {r.canonical for r in app.router.resources()}


def worker_health_routes() -> set[str]:
    app = web.Application()
    health.add_routes(app, {})
    return {r.canonical for r in app.router.resources()}


# --- compose-style interpolation ---------------------------------------------------------------

REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced braces in {text!r}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, nested, and `$$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 1)
            match = re.fullmatch(r"([A-Za-z_]\w*)(?:(:-|-|:\?|\?)(.*))?", text[i + 2 : end], re.S)
            assert match, f"bad interpolation in {text!r}"
            name, op, arg = match.groups()
            value = env.get(name)
            if op in (":-", "-"):
                missing = value is None or (op == ":-" and value == "")
                value = interpolate(arg, env) if missing else value
            elif op in (":?", "?") and not value:
                raise ValueError(f"{name} must be set: {arg}")
            out.append(value or "")
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with this `.env` (none: defaults)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    resolved: dict[str, Any] = resolve(loaded, env or {})
    return resolved


def app_services(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc["services"].items() if k not in {*BACKING, STUB}}


def env_example_names() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))


def env_example_values() -> dict[str, str]:
    """The uncommented assignments of .env.example."""
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No chatbeto setting in the process environment, so settings see only what a test gives."""
    for name in all_setting_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_backing_services_migrate_and_every_service() -> None:
    doc = compose()
    assert set(doc["services"]) == BACKING | {"migrate", STUB} | set(SERVICES)
    assert doc["services"][STUB]["profiles"] == ["stub"]  # never started unless asked for
    assert "management" in doc["services"]["rabbitmq"]["image"]
    named_volumes = set(doc["volumes"])
    for name in BACKING:
        service = doc["services"][name]
        assert service["healthcheck"]["test"][0] == "CMD"
        mounts = {v.split(":", 1)[0] for v in service["volumes"]}
        assert mounts and mounts <= named_volumes, f"{name}: data must live in a named volume"


def test_compose_matches_the_compose_spec_schema() -> None:
    pytest.importorskip("check_jsonschema")
    import jsonschema

    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for doc in (yaml.safe_load(COMPOSE.read_text()), compose()):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, "\n".join(errors)


def test_compose_commands_exist_in_the_cli() -> None:
    cli = parser()
    for name, service in app_services(compose()).items():
        args = cli.parse_args(service["command"])  # exits (fails the test) on an unknown command
        if name == "migrate":
            assert args.command == "migrate"
        else:
            assert (args.command, args.service) == ("run", name)


def test_compose_starts_services_after_migrate() -> None:
    doc = compose()
    migrate = doc["services"]["migrate"]
    assert migrate["restart"] == "no"
    assert {k: v["condition"] for k, v in migrate["depends_on"].items()} == dict.fromkeys(
        BACKING, "service_healthy"
    )
    for name in SERVICES:
        depends = {k: v["condition"] for k, v in doc["services"][name]["depends_on"].items()}
        assert depends == {
            "postgres": "service_healthy",
            "rabbitmq": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name
        assert doc["services"][name]["image"] == migrate["image"]


def test_workers_replicas_are_settable_from_env() -> None:
    for name in SERVICES:
        if name == "gateway":
            continue
        variable = f"{name.upper().replace('-', '_')}_REPLICAS"
        assert compose()["services"][name]["deploy"]["replicas"] == "1"
        assert compose({variable: "4"})["services"][name]["deploy"]["replicas"] == "4"


def test_every_setting_reaches_every_service_that_reads_it() -> None:
    services = app_services(yaml.safe_load(COMPOSE.read_text()))
    for name in SERVICES:
        wanted = env_names(settings_class_of(name))
        missing = wanted - set(services[name]["environment"])
        assert not missing, f"compose service {name} lacks {sorted(missing)}"
    wanted = env_names(BaseServiceSettings)
    assert not wanted - set(services["migrate"]["environment"])


def test_compose_references_only_variables_that_exist() -> None:
    referenced = set(REF_RE.findall(COMPOSE.read_text()))
    undocumented = referenced - env_example_names()
    assert not undocumented, (
        f"used in docker-compose.yml, missing from .env.example: {undocumented}"
    )
    for name, service in app_services(compose()).items():
        unknown = set(service["environment"]) - all_setting_names()
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"


def test_contract_variables_have_the_contract_defaults() -> None:
    doc = compose()
    for service in app_services(doc).values():
        environment = service["environment"]
        for name, default in CONTRACT_DEFAULTS.items():
            assert name in environment
            value = environment[name]
            if name in COMPOSE_URLS:
                assert urlsplit(value).hostname == COMPOSE_URLS[name]
            elif name in CONTAINER_OVERRIDES:
                assert value == CONTAINER_OVERRIDES[name]
            else:
                assert value == default, name


def test_compose_passes_env_file_values_through() -> None:
    given = {
        "OPENAI_MODEL": "gpt-4o",
        "DATABASE_URL": "postgresql://db.example/x",
        "RATE_LIMIT": "9/1s",
    }
    environment = compose(given)["services"]["gateway"]["environment"]
    assert {k: environment[k] for k in given} == given
    # Bundled service credentials flow into the default URLs.
    environment = compose({"POSTGRES_PASSWORD": "s3cret"})["services"]["migrate"]["environment"]
    assert urlsplit(environment["DATABASE_URL"]).password == "s3cret"


def test_optional_settings_stay_unset_rather_than_empty() -> None:
    # An empty OPENAI_BASE_URL or WEBHOOK_SECRET is not "unset": valueless entries are passed
    # through only when .env or the shell sets them.
    for name, service in app_services(yaml.safe_load(COMPOSE.read_text())).items():
        for variable in optional_setting_names() & set(service["environment"]):
            assert service["environment"][variable] is None, f"{name}: {variable}"


def test_compose_defaults_load_and_equal_the_code_defaults(clean_env: pytest.MonkeyPatch) -> None:
    doc = compose()
    for name in SERVICES:
        cls = settings_class_of(name)
        environment = doc["services"][name]["environment"]
        for variable, value in environment.items():
            if value is not None:
                clean_env.setenv(variable, str(value))
        loaded = cls(_env_file=None)  # would raise on a bad value
        for variable in environment:
            clean_env.delenv(variable, raising=False)
        defaults = cls(_env_file=None)
        for field in cls.model_fields:
            if field.upper() in {*COMPOSE_URLS, *CONTAINER_OVERRIDES}:
                continue
            assert getattr(loaded, field) == getattr(defaults, field), f"{name}: {field}"


def test_healthchecks_probe_readyz_on_each_service_port(clean_env: pytest.MonkeyPatch) -> None:
    for given in ({}, {"GATEWAY_PORT": "9090"}):
        doc = compose(given)
        for name in SERVICES:
            service = doc["services"][name]
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "python", "-c"]
            url = urlsplit(test[-1])
            assert url.path == "/readyz"
            env = {k: v for k, v in service["environment"].items() if v is not None}
            for variable, value in env.items():
                clean_env.setenv(variable, value)
            settings = settings_class_of(name)(_env_file=None)
            port = getattr(settings, "gateway_port", None) or settings.health_port  # type: ignore[attr-defined]
            assert url.port == port, name
            if name == "gateway":
                published = service["ports"][0].rsplit(":", 1)[1]
                assert int(published) == port
                assert "/readyz" in gateway_routes()
            else:
                assert port == settings_class_of(name).model_fields["health_port"].default
                assert "/readyz" in worker_health_routes()


def test_stop_grace_period_covers_the_drain() -> None:
    doc = compose()
    for name in SERVICES:
        grace = doc["services"][name]["stop_grace_period"]
        assert grace.endswith("s")
        assert int(grace[:-1]) > worker_drain_seconds(), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthcheck(url: str) -> int:
    test = compose()["services"]["gateway"]["healthcheck"]["test"]
    argv = [sys.executable, "-c", test[HEALTHCHECK_SNIPPET_ARG], url]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode


async def test_healthcheck_command_passes_only_when_ready() -> None:
    ready = {"value": True}

    async def check() -> bool:
        return ready["value"]

    port = _free_port()
    runner = await health.serve("127.0.0.1", port, {"database": check})
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        assert await asyncio.to_thread(_healthcheck, url) == 0
        ready["value"] = False
        assert await asyncio.to_thread(_healthcheck, url) != 0
    finally:
        await runner.cleanup()
    assert await asyncio.to_thread(_healthcheck, url) != 0  # nothing listening


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_service_started_as_compose_does_becomes_healthy_and_stops_in_grace(
    service: str, database: str, amqp_url: str, namespace: str
) -> None:
    """`chatbeto run SERVICE` with the compose environment (URLs and ports swapped for this test's
    own) passes the compose healthcheck, then exits on SIGTERM within stop_grace_period."""
    spec = compose()["services"][service]
    env = {k: v for k, v in os.environ.items() if k not in all_setting_names()}
    env.update({k: v for k, v in spec["environment"].items() if v is not None})
    port = _free_port()
    env.update(DATABASE_URL=database, AMQP_URL=amqp_url, AMQP_NAMESPACE=namespace)
    env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    variable = "GATEWAY_PORT" if service == "gateway" else port_variable(service)
    env[variable] = str(port)
    exe = shutil.which("chatbeto", path=str(Path(sys.executable).parent)) or "chatbeto"
    proc = await asyncio.create_subprocess_exec(
        exe,
        *spec["command"],
        env=env,
        cwd=str(ROOT / "tests"),  # no .env there
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = urlsplit(spec["healthcheck"]["test"][-1])._replace(netloc=f"127.0.0.1:{port}").geturl()
    try:

        async def healthy() -> bool:
            if proc.returncode is not None:
                return True
            return await asyncio.to_thread(_healthcheck, url) == 0

        await wait_for(healthy, timeout=60, interval=0.5)
        if proc.returncode is not None:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            if "not built yet" in err:
                pytest.skip(f"{service} is not built yet")
            pytest.fail(f"{service} exited {proc.returncode}: {err[-2000:]}")
        proc.send_signal(signal.SIGTERM)
        grace = int(spec["stop_grace_period"].rstrip("s"))
        assert await asyncio.wait_for(proc.wait(), grace) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_compose_openai_stub_serves_the_openai_api() -> None:
    """The stub service's entrypoint and command, on a free port of this host's loopback."""
    spec = compose()["services"][STUB]
    command = list(spec["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    port = _free_port()
    command[command.index("--port") + 1] = str(port)
    assert spec["entrypoint"][0] == "python"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *spec["entrypoint"][1:], *command, stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/v1/models"

    def models() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        assert await wait_for(lambda: asyncio.to_thread(models), timeout=30, interval=0.2)
    finally:
        proc.terminate()
        await proc.wait()


def test_make_up_and_down_wrap_compose() -> None:
    makefile = (ROOT / "Makefile").read_text()
    up = re.search(r"^up:.*\n\t(.*)$", makefile, re.M)
    down = re.search(r"^down:.*\n\t(.*)$", makefile, re.M)
    assert up and up.group(1).startswith("docker compose up")
    assert down and down.group(1).startswith("docker compose down")


# --- .env.example ------------------------------------------------------------------------------


def test_env_example_documents_every_setting_and_contract_variable() -> None:
    missing = (all_setting_names() | set(CONTRACT_DEFAULTS)) - env_example_names()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_values_are_valid(clean_env: pytest.MonkeyPatch) -> None:
    values = env_example_values()
    for name, default in CONTRACT_DEFAULTS.items():
        if name in values:
            assert values[name] == default, name
    for cls in settings_classes():
        cls(_env_file=ENV_EXAMPLE)  # raises on a bad value


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def test_dockerfile_is_multistage_nonroot_with_the_cli_entrypoint() -> None:
    steps = dockerfile_instructions()
    froms = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(froms) >= 2
    final = steps[froms[-1] :]
    assert all("slim" in arg for op, arg in steps if op == "FROM")
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert [arg for op, arg in final if op == "ENTRYPOINT"] == ['["chatbeto"]']
    cmd = [arg for op, arg in final if op == "CMD"][-1]
    parser().parse_args(yaml.safe_load(cmd))
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "GATEWAY_HOST=0.0.0.0" in env and "HEALTH_HOST=0.0.0.0" in env


def test_dockerfile_copies_every_package_root() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    copied = [
        arg.split()[0]
        for op, arg in dockerfile_instructions()
        if op == "COPY" and "--from" not in arg
    ]
    for root in roots:
        assert any(root == c or root.startswith(c + "/") for c in copied), root
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "shared", "services", "tools"):
        assert needed not in ignored
    for secret in (".env", "**/.venv", "**/.git"):
        assert secret in ignored


def test_image_install_step_builds_a_complete_wheel(tmp_path: Path) -> None:
    """What `pip install .` does in the build stage, from the files the Dockerfile copies."""
    context = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    context.mkdir()
    # Exactly the Dockerfile's COPY lines (README.m[d] only when it exists).
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, context)
    for name in ("shared", "services", "tools"):
        shutil.copytree(ROOT / name, context / name, ignore=skip)
    # With build isolation, as in the image: setuptools comes from the registry as declared.
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist")]
    done = subprocess.run([*argv, str(context)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("chatbeto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "chatbeto_tools/cli.py",
        *(m.replace(".", "/") + ".py" for m in SERVICES.values()),
    ):
        assert module in names
    migrations = {n for n in names if n.startswith("chatbeto/migrations/") and n.endswith(".sql")}
    assert len(migrations) == len(list((ROOT / "shared/chatbeto/migrations").glob("*.sql")))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "chatbeto = chatbeto_tools.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


# --- Kubernetes --------------------------------------------------------------------------------


def k8s_documents(folder: Path = K8S) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == "Deployment"}


def pod_env(spec: dict[str, Any]) -> dict[str, str]:
    """What a container's process sees: its ConfigMap and Secret, then its own env."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents()}
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env |= by_name["ConfigMap", source["configMapRef"]["name"]]["data"]
        if "secretRef" in source:
            env |= by_name["Secret", source["secretRef"]["name"]]["stringData"]
    env |= {e["name"]: e["value"] for e in spec.get("env", [])}
    return env


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    assert len(built) == len(k8s_documents())
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "chatbeto"


def test_manifests_match_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import SchemaNotFoundError

    operator_kinds = set()
    for doc in k8s_documents() + k8s_documents(K8S / "examples"):
        try:
            kubernetes_validate.validate(doc, "1.29.0", strict=True)
        except SchemaNotFoundError:
            operator_kinds.add(doc["kind"])
    assert operator_kinds == {"Cluster", "RabbitmqCluster"}  # the operators' own, in examples/


def test_deployments_run_each_service_with_probes_on_real_routes_and_ports() -> None:
    found = deployments()
    assert set(found) == set(SERVICES)
    cli = parser()
    for name, deployment in found.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = cli.parse_args(container["args"])
        assert (args.command, args.service) == ("run", name)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = pod_env(container)
        if name == "gateway":
            routes, listen = gateway_routes(), int(env.get("GATEWAY_PORT", "8080"))
            assert env["GATEWAY_HOST"] == "0.0.0.0"
        else:
            routes, listen = worker_health_routes(), int(env[port_variable(name)])
            assert env["HEALTH_HOST"] == "0.0.0.0"
            assert listen == settings_class_of(name).model_fields["health_port"].default
        for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            probe = container[kind]["httpGet"]
            assert probe["path"] == path and path in routes, f"{name} {kind}"
            port = probe["port"]
            assert ports.get(port, port) == listen, f"{name} {kind} port"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == listen
        assert "/metrics" in routes


def test_pods_request_resources_run_unprivileged_and_drain() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in k8s_documents()
        if d["kind"] in ("Deployment", "Job")
    }
    assert "chatbeto-migrate" in pods
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if name in SERVICES:
            assert pod["terminationGracePeriodSeconds"] > worker_drain_seconds(), name


def test_gateway_autoscales_and_migrate_job_runs_migrate() -> None:
    docs = k8s_documents()
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert parser().parse_args(container["args"]).command == "migrate"


def test_k8s_config_names_only_real_settings_and_secrets_are_placeholders() -> None:
    docs = k8s_documents()
    known = all_setting_names()
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert {"DATABASE_URL", "AMQP_URL"} <= set(secret["stringData"])
    assert all("CHANGE-ME" in v for v in secret["stringData"].values())
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    for name in (*secret["stringData"], *config["data"]):
        assert name in known, name
    for deployment in deployments().values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert set(pod_env(container)) <= known
    text = "".join(p.read_text() for p in K8S.glob("*.yaml"))
    missing = {n for n in known if n not in text}
    assert not missing, f"deploy/k8s never mentions {sorted(missing)}"
    for name, value in config["data"].items():
        if CONTRACT_DEFAULTS.get(name):
            assert value == CONTRACT_DEFAULTS[name], name


# --- docs --------------------------------------------------------------------------------------


def test_readme_configuration_table_lists_every_variable() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    first_cells = re.findall(r"^\|([^|\n]*)\|", readme.read_text(), re.M)
    table = {n for cell in first_cells for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    missing = (all_setting_names() | set(CONTRACT_DEFAULTS)) - table
    assert not missing, f"README's configuration table lacks {sorted(missing)}"


def test_deploy_doc_covers_each_service() -> None:
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    for word in (*SERVICES, "migrate", "DLQ", "backup", "upgrade", "replicas"):
        assert word.lower() in text.lower(), word


def test_deploy_doc_lists_the_real_ports() -> None:
    rows = {
        m[0]: m[1]
        for m in re.findall(r"^\| `([a-z-]+)` \|(.*)$", (ROOT / "docs/DEPLOY.md").read_text(), re.M)
    }
    for name in SERVICES:
        cls = settings_class_of(name)
        field = "gateway_port" if name == "gateway" else "health_port"
        assert f" {cls.model_fields[field].default} (" in rows[name], name


def test_commands_in_the_docs_exist() -> None:
    cli = parser()
    pattern = r"(?:^|exec gateway\s+|deploy/gateway\s+--\s+)chatbeto\s+([a-z][^\n`]*)"
    found = 0
    for path in (ROOT / "docs" / "DEPLOY.md", *K8S.glob("*.yaml")):
        for command in re.findall(pattern, path.read_text(), re.M):
            cli.parse_args(command.split())  # exits on an unknown command or argument
            found += 1
    assert found >= 5
