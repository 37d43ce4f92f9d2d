"""compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from events import Topology
from events.permissions import OWN_USERS
from projections.engine import metrics as engine_metrics
from projections.registry import WORKERS as PROJECTION_WORKERS
from services import metrics as service_metrics
from services.database_roles import (
    API_ROLE,
    DOOR_ROLES,
    ENFORCER_ROLE,
    NOTIFIER_ROLE,
    QUERY_ROLE,
)
from services.nats_config import DEFAULT_USERS, compose_config, password_variable
from services.postgres_auth import SERVICE_ROLE
from services.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
# The postgres service's variable naming each door role's password file.
ROLE_PASSWORD_FILES = {
    API_ROLE: "BUDGET_API_DATABASE_PASSWORD_FILE",
    QUERY_ROLE: "BUDGET_QUERY_DATABASE_PASSWORD_FILE",
    ENFORCER_ROLE: "BUDGET_ENFORCER_DATABASE_PASSWORD_FILE",
    NOTIFIER_ROLE: "BUDGET_NOTIFIER_DATABASE_PASSWORD_FILE",
}
# One service per projection worker (a group counts as one) and per other service.
WORKERS = {f"{name}-projector": ["worker", name] for name in PROJECTION_WORKERS}
WORKERS |= {name: [name] for name in SERVICES}
HTTP_SERVICES = ("api",)  # published on a port, health-checked over HTTP
APP_SERVICES = ("migrate", *WORKERS)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _health_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def test_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"nats", "postgres", *APP_SERVICES} <= set(services)


def test_nats_runs_jetstream_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.11")
    # wget exists in the alpine variant only; the plain image is FROM scratch.
    assert nats["image"].endswith("-alpine")
    command = nats["command"]
    assert "-js" in command
    assert command[command.index("-sd") + 1] == "/data"
    assert any(v.endswith(":/data") for v in nats["volumes"])
    health = _health_test(nats)
    assert health.startswith("wget ")
    # the config's monitoring address (test_nats_takes_the_default_users_... checks it)
    assert "http://127.0.0.1:8222/healthz?js-enabled-only=true" in health


def test_postgres_has_a_volume_and_pg_isready(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    health = _health_test(pg)
    assert health.startswith("pg_isready")
    env = pg["environment"]
    assert f"-U {env['POSTGRES_USER']}" in health and f"-d {env['POSTGRES_DB']}" in health
    # Over TCP: the image's init scripts run on a server listening on its socket only.
    assert "-h 127.0.0.1" in health


def test_postgres_gives_the_services_a_role_of_their_own(
    services: dict[str, dict[str, Any]],
) -> None:
    """The superuser is the image's; the init script, mounted where the image runs it on
    the first start, makes the services' role (tests/integration/test_postgres_auth.py
    runs it on a real server)."""
    pg = services["postgres"]
    env = pg["environment"]
    assert env["POSTGRES_USER"] != SERVICE_ROLE
    mounts = {v.split(":")[1]: v.split(":")[0] for v in pg["volumes"]}
    script = mounts["/docker-entrypoint-initdb.d/10-service-role.sql"]
    assert (ROOT / script) == ROOT / "deploy" / "postgres" / "service-role.sql"
    assert f"ALTER ROLE {SERVICE_ROLE} LOGIN NOSUPERUSER" in (ROOT / script).read_text()
    secret = env["BUDGET_DATABASE_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in pg["secrets"]
    # then the network doors' roles, which own nothing
    doors = mounts["/docker-entrypoint-initdb.d/20-door-roles.sql"]
    assert (ROOT / doors) == ROOT / "deploy" / "postgres" / "door-roles.sql"
    for role in DOOR_ROLES.values():
        assert f"ALTER ROLE {role} LOGIN NOSUPERUSER" in (ROOT / doors).read_text()
    assert set(ROLE_PASSWORD_FILES) == set(DOOR_ROLES.values())
    for variable in ROLE_PASSWORD_FILES.values():
        assert f'cat "${variable}"' in (ROOT / doors).read_text()
        assert env[variable].removeprefix("/run/secrets/") in pg["secrets"]


def test_migrate_waits_for_healthy_servers_and_runs_once(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["budget", "migrate"]
    assert migrate["depends_on"] == {
        "nats": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert migrate["restart"] == "no"  # the string, not YAML's boolean


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_start_after_migrate(services: dict[str, dict[str, Any]], name: str) -> None:
    worker = services[name]
    assert worker["command"] == ["budget", *WORKERS[name]]
    assert worker["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert worker["restart"] in ("unless-stopped", "always", "on-failure")
    assert "container_name" not in worker, "workers must be scalable"
    if name in HTTP_SERVICES:
        assert all(p.startswith("127.0.0.1:") for p in worker["ports"]), "loopback by default"
    else:
        assert "ports" not in worker


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_configured_for_the_servers(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert service["build"] == "."
    env = service["environment"]
    assert env["BUDGET_NATS_URL"] == "nats://nats:4222"
    pg_env = services["postgres"]["environment"]
    url = env["BUDGET_DATABASE_URL"]
    match = re.fullmatch(r"postgresql://(\w+)@postgres:5432/(\w+)", url)  # no password
    assert match, url
    # A network door has a role of its own (services.database_roles), the others the
    # services' role, which owns the database; never the superuser.
    role = DOOR_ROLES.get(name, SERVICE_ROLE)
    assert match.group(1) == role != pg_env["POSTGRES_USER"]
    assert match.group(2) == pg_env["POSTGRES_DB"]
    # The role's password: the secret the init script gave it (the entrypoint reads it).
    password_file = env["BUDGET_DATABASE_PASSWORD_FILE"]
    assert password_file == pg_env[ROLE_PASSWORD_FILES.get(role, "BUDGET_DATABASE_PASSWORD_FILE")]
    assert password_file.removeprefix("/run/secrets/") in service["secrets"]
    if role != SERVICE_ROLE:  # nor the owner's password
        owner_secret = pg_env["BUDGET_DATABASE_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert owner_secret not in service["secrets"]
    # The superuser's password stays with the postgres service.
    superuser_secret = pg_env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert superuser_secret not in service["secrets"]
    assert "POSTGRES_PASSWORD_FILE" not in env


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_spool_on_a_volume_their_user_may_write(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """The image runs as a user who may not write /app, the working directory: the
    default spool (.budget/spool) could not be made there."""
    service = services[name]
    spool = Path(service["environment"]["BUDGET_SPOOL_DIR"])
    mounted = [Path(v.split(":")[1]) for v in service.get("volumes", [])]
    [volume] = [target for target in mounted if spool.is_relative_to(target)]
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\S+)", dockerfile, re.M)
    assert user is not None
    # Docker gives a new named volume the owner of its mount point in the image.
    made = re.search(r"mkdir -p (\S+) && chown -R (\S+) (\S+)", dockerfile)
    assert made is not None, "the Dockerfile makes no folder for the budget user"
    folder, owner, owned = made.groups()
    assert owner == user[1]
    assert spool.is_relative_to(owned) and volume.is_relative_to(owned)
    assert Path(folder) in (spool, volume)


def test_the_database_passwords_are_secrets_with_no_default(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    pg = services["postgres"]
    env = pg["environment"]
    files = {
        env["POSTGRES_PASSWORD_FILE"],
        env["BUDGET_DATABASE_PASSWORD_FILE"],
        *(env[variable] for variable in ROLE_PASSWORD_FILES.values()),
    }
    assert files == {f"/run/secrets/{secret}" for secret in pg["secrets"]}
    # the superuser's, the services' role's and each door's differ
    assert len(files) == 2 + len(ROLE_PASSWORD_FILES)
    for secret in pg["secrets"]:
        assert compose["secrets"][secret]["file"].startswith("./secrets/")
    text = (ROOT / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD:" not in text and "${POSTGRES_PASSWORD" not in text
    for service in services.values():
        env = service.get("environment") or {}
        assert "POSTGRES_PASSWORD" not in env and "PGPASSWORD" not in env
        # A password variable names a file, or one the operator must set (``${X:?...}``).
        for key, value in env.items():
            required = str(value).startswith(f"${{{key}:?")
            assert "password" not in key.lower() or key.endswith("_FILE") or required, key
    # The secret stays out of git and out of the image.
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()


def test_the_entrypoint_turns_the_secret_into_a_pgpass_file(tmp_path: Path) -> None:
    secret = tmp_path / "budget_database_password"
    secret.write_text("pa:ss\\word\n")
    shown = tmp_path / "shown"
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "container-entrypoint.sh"), "sh", "-c", f"env > {shown}"],
        env={
            "BUDGET_DATABASE_PASSWORD_FILE": str(secret),
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == result.stderr == ""
    passfile = tmp_path / ".pgpass"
    assert passfile.read_text() == "*:*:*:*:pa\\:ss\\\\word\n"
    assert passfile.stat().st_mode & 0o777 == 0o600
    environment = shown.read_text()
    assert f"PGPASSFILE={passfile}" in environment.splitlines()
    assert "pa:ss" not in environment


def test_dockerfile_runs_the_entrypoint() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["sh", "/app/scripts/container-entrypoint.sh"]' in dockerfile


def test_references_resolve(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"
            if service["depends_on"][target]["condition"] == "service_healthy":
                assert "healthcheck" in services[target], target
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
        # a secret file a setting names is mounted: else the service stops at start
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        for setting, value in (service.get("environment") or {}).items():
            if str(value).startswith("/run/secrets/"):
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in mounted, f"{name}: {setting} names {secret}, not mounted"


def test_dockerfile_installs_the_repo() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "pip install --no-deps ." in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)


def test_dockerfile_dependency_step_reads_pyproject() -> None:
    """The RUN line that turns pyproject's dependencies into requirements, run here by sh."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r'^RUN (python -c ".*tomllib.*") > /tmp/requirements\.txt', dockerfile, re.M)
    assert match, "dependency step not found"
    result = subprocess.run(
        ["sh", "-c", match.group(1).replace("python ", f"{sys.executable} ", 1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", "budget", "events", "projections", "services"]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, p) for p in patterns), path
    for path in [".venv", ".git", ".budget"]:
        assert any(fnmatch.fnmatch(path, p) for p in patterns), path


def test_api_is_health_checked_over_http(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    port = api["environment"]["BUDGET_API_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in _health_test(api)
    assert api["environment"]["BUDGET_API_HOST"] == "0.0.0.0"
    assert any(p.endswith(f":{port}") for p in api["ports"])


@pytest.mark.parametrize("name", sorted(set(WORKERS) - set(HTTP_SERVICES)))
def test_workers_are_health_checked_by_their_heartbeat(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    heartbeat = services[name]["environment"]["BUDGET_HEARTBEAT_FILE"]
    assert heartbeat in _health_test(services[name])


def test_nats_takes_the_default_users_with_required_passwords(
    services: dict[str, dict[str, Any]],
) -> None:
    nats = services["nats"]
    command = nats["command"]
    config = command[command.index("-c") + 1]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    text = (ROOT / mounted[config]).read_text()
    assert compose_config(Topology()) in text, "regenerate deploy/nats/budget.conf"
    # monitoring (/connz names users and subjects) on the container's loopback only
    assert re.search(r'^http: "127\.0\.0\.1:8222"$', text, re.M) and "-m" not in command
    for user, _role in DEFAULT_USERS:
        variable = password_variable(user)
        assert f"${variable}" in text
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", nats["environment"][variable])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_connect_to_nats_as_service_and_migrate_as_admin(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], name: str
) -> None:
    """The running services' credential may not change a stream (nor so lower the log's
    limits); migrate, which declares the streams, alone holds the admin's; the HTTP API,
    the enforcer and the notifier each its own (it may do only what that process does:
    events.permissions)."""
    user = {"migrate": "admin", **OWN_USERS}.get(name, "service")
    env = services[name]["environment"]
    assert env["BUDGET_NATS_USER"] == user
    assert "BUDGET_NATS_PASSWORD" not in env
    secret = env["BUDGET_NATS_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in services[name]["secrets"]
    # The secret holds the password the NATS server knows the user by.
    assert compose["secrets"][secret]["environment"] == password_variable(user)
    # and no other NATS password: a service has no use for the admin's, the API, the
    # enforcer and the notifier for the services'
    nats_secrets = {s for s in services[name]["secrets"] if s.startswith("nats_")}
    assert nats_secrets == {secret}


# -- Prometheus -------------------------------------------------------------------------------


def _prometheus_file(services: dict[str, dict[str, Any]], path: str) -> Path:
    """The host file behind ``path`` in the prometheus container (its config mount)."""
    mounts = [v.split(":") for v in services["prometheus"]["volumes"]]
    for source, target, *_ in mounts:
        if path.startswith(target + "/") and source.startswith("."):
            return ROOT / source / path.removeprefix(target + "/")
    raise AssertionError(f"{path} is not in a mounted folder")


def _sample_names() -> set[str]:
    """Every sample name the services' metrics expose (counters with _total, histograms
    with _bucket, _count and _sum)."""
    names = set()
    for module in (engine_metrics, service_metrics):
        for metric in vars(module).values():
            if not isinstance(metric, Counter | Gauge | Histogram):
                continue
            (family,) = metric.describe()
            if isinstance(metric, Counter):
                names.add(f"{family.name}_total")
            elif isinstance(metric, Histogram):
                names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum"))
            else:
                names.add(family.name)
    return names


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_every_service_serves_metrics_on_the_compose_network_only_to_the_token(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], name: str
) -> None:
    env = services[name]["environment"]
    assert env["BUDGET_METRICS_HOST"] == "0.0.0.0"  # the prometheus container must reach it
    port = env["BUDGET_METRICS_PORT"]
    published = [p.split(":")[-1] for p in services[name].get("ports", [])]
    assert port not in published, "metrics stay off the host's ports"
    # ... and answer only the bearer of the metrics token: a secret file, no default.
    assert "BUDGET_METRICS_TOKEN" not in env
    secret = env["BUDGET_METRICS_TOKEN_FILE"].removeprefix("/run/secrets/")
    assert secret in services[name]["secrets"]
    assert compose["secrets"][secret]["file"].startswith("./secrets/")


def test_prometheus_scrapes_every_service(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v3")
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"]), "loopback by default"
    assert "/-/ready" in _health_test(prometheus)
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    config = yaml.safe_load(_prometheus_file(services, config_path).read_text())
    (job,) = config["scrape_configs"]
    # Bearing the token the services ask for: their secret, mounted in prometheus too.
    token_file = job["authorization"]["credentials_file"]
    assert job["authorization"].get("type", "Bearer") == "Bearer"
    assert token_file == services["api"]["environment"]["BUDGET_METRICS_TOKEN_FILE"]
    assert token_file.removeprefix("/run/secrets/") in prometheus["secrets"]
    targets = {(name, sd["port"]) for sd in job["dns_sd_configs"] for name in sd["names"]}
    expected = {
        (name, int(services[name]["environment"]["BUDGET_METRICS_PORT"])) for name in WORKERS
    }
    assert targets == expected
    for rule_file in config["rule_files"]:
        assert _prometheus_file(services, rule_file).exists(), rule_file


def test_alerting_rules_watch_lag_dead_letters_and_deliveries(
    services: dict[str, dict[str, Any]],
) -> None:
    config_path = next(
        a.split("=", 1)[1] for a in services["prometheus"]["command"] if "config.file" in a
    )
    config = yaml.safe_load(_prometheus_file(services, config_path).read_text())
    rules = [
        rule
        for rule_file in config["rule_files"]
        for group in yaml.safe_load(_prometheus_file(services, rule_file).read_text())["groups"]
        for rule in group["rules"]
    ]
    exprs = " ".join(rule["expr"] for rule in rules)
    for watched in (
        "budget_projection_lag_events",
        "budget_dead_letters_total",
        "budget_alert_deliveries_total",
    ):
        assert watched in exprs, watched
    # Every metric a rule reads is one the services expose (a renamed metric fails here).
    known = _sample_names()
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        used = set(re.findall(r"\bbudget_\w+", rule["expr"]))
        assert used <= known, (rule["alert"], used - known)


def test_the_alerting_rules_pass_their_promtool_cases() -> None:
    """promtool (Debian's prometheus package; ./run-tests installs it) evaluates each case
    of rules_test.yml against rules.yml."""
    folder = ROOT / "deploy" / "prometheus"
    done = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yml"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alerting_rule_has_a_promtool_case() -> None:
    """deploy/prometheus/rules_test.yml (``promtool test rules``) fires each rule."""
    folder = ROOT / "deploy" / "prometheus"
    rules = yaml.safe_load((folder / "rules.yml").read_text())
    cases = yaml.safe_load((folder / "rules_test.yml").read_text())
    assert cases["rule_files"] == ["rules.yml"]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for test in cases["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == alerts


def test_compose_gives_each_named_host_app_a_user_of_its_own() -> None:
    """So host apps under Compose neither read each other's replies nor share limits; the
    HTTP API may publish usage or ask as none of them."""
    text = compose_config(Topology(), hosts=["billing", "search-bot"])
    api_permissions = '{user: "api"'
    for default in compose_config(Topology()).split(api_permissions)[0].split("\n"):
        assert default in text  # the defaults, unchanged
    api = text.split(api_permissions)[1].split("\n")[1]
    for name in ("billing", "search-bot"):
        assert f"${password_variable(name)}" in text
        assert f'"_INBOX.{name}.>"' in text and f'"budget.rpc.{name}.>"' in text
        assert f'"budget.events.usage.recorded.{name}", "budget.rpc.{name}.>"' in api
    assert password_variable("search-bot") == "BUDGET_NATS_SEARCH_BOT_PASSWORD"
    with pytest.raises(ValueError, match="not one of service, host, alerts, admin, api"):
        compose_config(Topology(), hosts=["alerts"])


def test_nats_moves_an_older_releases_event_log_into_the_services_account(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The entrypoint, run by sh as compose would (``$$`` is compose's ``$``), on a data
    directory of a release without NATS accounts; then again, which changes nothing."""
    shell, flag, script, name = services["nats"]["entrypoint"]
    script = script.replace("$$", "$").replace("/data", str(tmp_path))
    old = tmp_path / "jetstream" / "$G" / "streams" / "BUDGET"
    old.mkdir(parents=True)
    for _ in range(2):
        done = subprocess.run([shell, flag, script, name, "true"], check=False)
        assert done.returncode == 0
        assert (tmp_path / "jetstream" / "SERVICES" / "streams" / "BUDGET").is_dir()
        assert not (tmp_path / "jetstream" / "$G").exists()
