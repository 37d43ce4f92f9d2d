"""``budget doctor`` against real servers and running services: all ok, then each kind of
problem the seed's troubleshooting list names, each shown with its line and its fix."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
import test_cli
from test_cli import (
    GPT_4O_CALL,
    UNREACHABLE_NATS,
    Budget,
    Service,
    delete_streams,
    eventually,
    publish_events,
)

from events import AlertRule, AlertRuleSet, Topology, utc_now
from projections.registry import GROUPS, PROJECTIONS, WORKERS

from support import usage_event

# test_cli's fixtures: a `budget` command on this test's schema and subject prefix, migrated
base_env, budget, deployment = test_cli.base_env, test_cli.budget, test_cli.deployment
WITHIN = 60.0  # for the workers to start and catch up
NO_PRICES_READ = (
    "not checked: read from the reports projection, not found current (see projections)"
)


def doctor(cli: Budget, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli.run("doctor", *args, **env)


def lines_of(done: subprocess.CompletedProcess[str], status: str, check: str) -> list[str]:
    """The detail of each ``status`` line of ``check`` (and the fix under a problem)."""
    found = []
    lines = done.stdout.splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"{status} +{re.escape(check)} +", line):
            detail = line.split(maxsplit=len(check.split()) + 1)[-1]
            below = lines[index + 1] if index + 1 < len(lines) else ""
            fix = below.strip().removeprefix("fix: ") if below.startswith(" ") else ""
            found.append(f"{detail} | {fix}" if fix else detail)
    return found


def start_stack(cli: Budget, workers: Iterable[str] = PROJECTIONS) -> dict[str, Service]:
    services = {name: cli.start("worker", name) for name in workers}
    for name in ("enforcer", "query-service"):
        services[name] = cli.start(name)
    return services


def settled(cli: Budget) -> subprocess.CompletedProcess[str]:
    """Until the doctor finds nothing wrong (the workers have started and caught up with
    every event)."""
    return eventually(
        lambda: doctor(cli, "--max-lag", "0"),
        lambda done: done.returncode == 0,
        WITHIN,
        "an all-ok doctor",
    )


def test_a_running_stack_is_all_ok_then_each_problem_shows_with_its_fix(
    deployment: Budget, tmp_path: Path, nats_url: str, topology: Topology
) -> None:
    services = start_stack(deployment)
    idle = settled(deployment)
    assert lines_of(idle, "ok", "prices") == ["no call recorded in the last 30 days"]
    deployment.record(*GPT_4O_CALL)

    done = eventually(
        lambda: settled(deployment),
        lambda done: lines_of(done, "ok", "prices") != lines_of(idle, "ok", "prices"),
        WITHIN,
        "the call in the rollups",
    )
    assert done.stderr == ""
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["ok"] * len(
        done.stdout.splitlines()
    ), done.stdout
    assert lines_of(done, "ok", "configuration") == ["valid; budget.enabled: true"]
    assert lines_of(done, "ok", "nats") == ["reachable"]
    assert lines_of(done, "ok", "postgresql") == ["reachable"]
    assert len(lines_of(done, "ok", "streams")) == 1
    for name in PROJECTIONS:
        assert lines_of(done, "ok", f"projection {name}") == [f"consumer {name}-v1, lag 0"]
    assert lines_of(done, "ok", "enforcer") == ["answers"]
    assert lines_of(done, "ok", "query service") == ["answers"]
    assert lines_of(done, "ok", "alert channels") == [
        "enabled: nats, log, ui (disabled: webhook, email)"
    ]
    assert lines_of(done, "ok", "alert rules") == ["7 rules, each with an enabled channel"]
    assert lines_of(done, "ok", "cooldowns") == ["no cooldown is holding back an alert now"]
    assert lines_of(done, "ok", "prices") == ["every model called in the last 30 days has a price"]

    # A refusal raises a policy-violation alert, whose rule then holds back repeats.
    deployment.ok(
        "policy",
        "set",
        "--name",
        "Cap",
        "--limit",
        "0.000001",
        "--action",
        "block",
        "--scope",
        "user",
        "--key",
        "alice",
        "--id",
        "cap",
    )
    refused = eventually(
        lambda: deployment.run("check", "gpt-4o", "--tokens", "2000", "--user", "alice"),
        lambda done: done.returncode == 1,
        WITHIN,
        "the enforcer refusing alice",
    )
    assert refused.stdout.startswith("refused: block by policy 'Cap'")
    cooling = eventually(
        lambda: doctor(deployment),
        lambda done: bool(lines_of(done, "note", "cooldowns")),
        WITHIN,
        "a cooldown noted",
    )
    [note] = lines_of(cooling, "note", "cooldowns")
    assert re.fullmatch(
        r"rule default-policy-violation \(15 min\) holds back repeats about policy cap, key"
        r" alice until \d{4}-\d\d-\d\d \d\d:\d\d UTC"
        r" \(and late ones of events since \d{4}-\d\d-\d\d \d\d:\d\d\)"
        r" \| lower the rule's cooldown_minutes if those repeats matter",
        note,
    ), note

    # A model without a price.
    deployment.record(
        "--model", "no-such-model-doctor", "--provider", "openai", "--input-tokens", "10"
    )
    unpriced = eventually(
        lambda: doctor(deployment),
        lambda done: bool(lines_of(done, "problem", "prices")),
        WITHIN,
        "the unpriced model reported",
    )
    assert unpriced.returncode == 1
    [line] = lines_of(unpriced, "problem", "prices")
    assert line.startswith(
        "openai/no-such-model-doctor: 1 of 1 calls in the last 30 days have no price"
        " | check the name against `budget prices list --provider openai`, or add it to"
        " price_overrides in config.yaml; then `budget reprice --since "
    ), line
    # The window it gives holds the call just recorded (``--until`` is exclusive).
    until = re.search(r"--until (\d{4}-\d\d-\d\d)`", line)
    assert until is not None, line
    assert date.fromisoformat(until[1]) > datetime.now(UTC).date(), line

    # A priced model's call recorded without a price (a tracked function that returned no
    # usage and was given no estimate): its name and the price lists are not to blame.
    unpriced_call = usage_event(cost=None, model="gpt-4o-mini")
    asyncio.run(publish_events(nats_url, topology, [unpriced_call]))
    no_usage = eventually(
        lambda: doctor(deployment),
        lambda done: any("gpt-4o-mini" in line for line in lines_of(done, "problem", "prices")),
        WITHIN,
        "the priced model's unpriced call reported",
    )
    [line] = [line for line in lines_of(no_usage, "problem", "prices") if "gpt-4o-mini" in line]
    assert re.fullmatch(
        r"openai/gpt-4o-mini: 1 of 1 calls in the last 30 days have no price"
        r" \| gpt-4o-mini has a price now: `budget reprice --since \S+ --until \S+` prices"
        r" the calls recorded before it had one; the others lacked what it is priced by, as"
        r" their unpriced_reason says \(`budget report history --start \S+ --end \S+`\)",
        line,
    ), line

    # Every channel disabled: the rules' alerts go nowhere.
    silent = tmp_path / "silent.yaml"
    silent.write_text(
        "budget: {}\nalert_channels:\n"
        + "".join(f"  {c}: {{enabled: false}}\n" for c in ("nats", "log", "ui"))
    )
    done = doctor(deployment, BUDGET_CONFIG=str(silent))
    assert done.returncode == 1
    assert lines_of(done, "problem", "alert channels") == [
        "every alert channel is disabled"
        " | set `enabled: true` for one under alert_channels in config.yaml"
    ]
    rules = lines_of(done, "problem", "alert rules")
    assert len(rules) == 7
    assert (
        "rule default-anomaly ('Unusual hourly spend') sends to nats, log, ui, webhook, email,"
        " none of them enabled: its alerts go nowhere | enable one of its channels under"
        " alert_channels in config.yaml, or give the rule an enabled channel"
    ) in rules

    # A projection's worker stopped, an event after: a problem, though one event is within
    # the default lag allowance (a worker batch), as nothing applies the next ones either.
    assert services["reports"].stop() == 0
    deployment.record(*GPT_4O_CALL)
    behind = eventually(
        lambda: doctor(deployment),
        lambda done: "1 events behind" in " ".join(lines_of(done, "problem", "projection reports")),
        WITHIN,
        "the reports projection behind",
    )
    [line] = lines_of(behind, "problem", "projection reports")
    assert re.fullmatch(
        r"no worker reads consumer reports-v1; 1 events behind \(checkpoint at stream"
        r" sequence \d+\) \| start `budget worker reports` \(or `budget up`\); its log says"
        r" why it stopped",
        line,
    ), line
    # The unpriced model is still in the rollups, but they are behind: not read as current.
    assert lines_of(behind, "note", "prices") == [NO_PRICES_READ]

    # The enforcer and the query service stopped.
    for name in ("enforcer", "query-service"):
        assert services[name].stop() == 0
    done = doctor(deployment)
    [enforcer] = lines_of(done, "problem", "enforcer")
    assert enforcer.endswith(
        " | start `budget enforcer` (or `budget up`); until then calls under BLOCK"
        " and THROTTLE policies are refused (allowed with fail_open)"
    ), enforcer
    [query] = lines_of(done, "problem", "query service")
    assert query.endswith(
        " | start `budget query-service` (or `budget up`); host apps' reads"
        " (policies, alerts, reports) wait on it"
    ), query


def test_projections_run_in_a_group_as_budget_up_runs_them_are_all_ok(
    deployment: Budget,
) -> None:
    start_stack(deployment, WORKERS)
    deployment.record(*GPT_4O_CALL)
    done = eventually(
        lambda: settled(deployment),
        lambda done: (
            lines_of(done, "ok", "prices") == ["every model called in the last 30 days has a price"]
        ),
        WITHIN,
        "the call in the rollups",
    )
    for name in PROJECTIONS:
        consumer = "group-history-reports-spend" if name in GROUPS["usage"] else f"{name}-v1"
        assert lines_of(done, "ok", f"projection {name}") == [f"consumer {consumer}, lag 0"]


def test_nats_unreachable_is_a_problem_and_what_needs_it_is_not_checked(
    deployment: Budget,
) -> None:
    done = doctor(deployment, BUDGET_NATS_URL=UNREACHABLE_NATS)
    assert done.returncode == 1
    [nats] = lines_of(done, "problem", "nats")
    assert nats.startswith(f"cannot reach NATS at {UNREACHABLE_NATS} ("), nats
    assert nats.endswith(") | start it with `budget up` or set BUDGET_NATS_URL"), nats
    assert lines_of(done, "ok", "postgresql") == ["reachable"]
    assert lines_of(done, "note", "projections") == [
        "not checked: needs NATS, its streams and PostgreSQL"
    ]
    assert lines_of(done, "note", "services") == ["not checked: needs NATS"]
    assert lines_of(done, "note", "prices") == [NO_PRICES_READ]
    assert lines_of(done, "ok", "alert rules") == ["7 rules, each with an enabled channel"]


def test_an_unreadable_nats_password_file_is_a_problem_and_the_rest_is_checked(
    deployment: Budget, tmp_path: Path
) -> None:
    missing = tmp_path / "nats.password"
    done = doctor(deployment, BUDGET_NATS_USER="service", BUDGET_NATS_PASSWORD_FILE=str(missing))
    assert done.returncode == 1, done
    assert lines_of(done, "problem", "nats") == [
        f"cannot read the NATS password file {missing} (BUDGET_NATS_PASSWORD_FILE): No such"
        " file or directory | correct the file or the setting the message names"
    ]
    assert lines_of(done, "ok", "postgresql") == ["reachable"]
    assert lines_of(done, "note", "services") == ["not checked: needs NATS"]


def test_an_unmigrated_deployment_is_told_to_migrate(budget: Budget) -> None:
    done = doctor(budget)
    assert done.returncode == 1
    assert lines_of(done, "problem", "migrations") == [
        "the database has no Budget Manager tables | run `budget migrate` (`budget up` does it)"
    ]
    [streams] = lines_of(done, "problem", "streams")
    assert streams.endswith(
        "| run `budget migrate` (`budget up` does it), or set BUDGET_SUBJECT_PREFIX"
    )


def test_workers_that_never_ran_have_no_consumer(deployment: Budget) -> None:
    done = doctor(deployment)
    assert done.returncode == 1
    for name in PROJECTIONS:
        consumers, workers = f"{name}-v1", f"`budget worker {name}`"
        if name in GROUPS["usage"]:
            consumers = f"group-history-reports-spend or {consumers}"
            workers = f"`budget worker usage` or {workers}"
        assert lines_of(done, "problem", f"projection {name}") == [
            f"no consumer {consumers}: its worker has never run; 0 events behind (checkpoint"
            f" at stream sequence 0) | start {workers} (or `budget up`)"
        ]
    assert lines_of(done, "note", "prices") == [NO_PRICES_READ]


def test_a_log_recreated_since_a_projection_was_built_is_a_problem_with_its_fix(
    deployment: Budget, nats_url: str, topology: Topology
) -> None:
    asyncio.run(publish_events(nats_url, topology, [usage_event(user=u) for u in "abc"]))
    deployment.ok("projections", "rebuild", "spend")  # version 2, built from those 3
    asyncio.run(delete_streams(nats_url, topology))
    deployment.ok("migrate")  # a new, empty log, which host apps then fill past 3
    asyncio.run(publish_events(nats_url, topology, [usage_event(user=u) for u in "defg"]))

    done = doctor(deployment)
    assert done.returncode == 1
    assert lines_of(done, "problem", "projection spend") == [
        f"spend-v2: the message at its checkpoint (stream sequence 3 of"
        f" {topology.event_stream.name}) is not the one it applied there: this is not the log"
        " it was built from (recreated, lost, or left in another NATS account)"
        " | restore that log, or rebuild from this one (`budget projections rebuild spend`)"
    ]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"BUDGET_ENABLED": "false"},
            "budget.enabled is false: trackers publish nothing and allow every call"
            " | set `enabled: true` under `budget:` in config.yaml (or BUDGET_ENABLED=true)",
        ),
        (
            {"BUDGET_FLUSH_INTERVAL": "often"},
            "environment variable BUDGET_FLUSH_INTERVAL: ",
        ),
    ],
)
def test_configuration_problems(deployment: Budget, env: dict[str, str], says: str) -> None:
    done = doctor(deployment, **env)
    assert done.returncode == 1
    [line] = lines_of(done, "problem", "configuration")
    assert line.startswith(says), line


def test_alerts_a_channel_does_not_deliver_are_a_problem_with_their_fix(
    deployment: Budget, tmp_path: Path, nats_url: str, topology: Topology
) -> None:
    """A webhook receiver that is down, then no notifier at all, then alerts given up:
    each the doctor tells, where it said all was well while no alert reached anyone."""
    config = tmp_path / "dead-webhook.yaml"
    config.write_text(
        "budget: {}\nalert_channels:\n"
        "  webhook: {enabled: true, url: 'http://127.0.0.1:9/hook', timeout: 2}\n"
    )
    dead = {"BUDGET_CONFIG": str(config)}
    for name in ("policies", "alerts"):
        deployment.start("worker", name)
    notifier = deployment.start("notifier", **dead)
    # A rule that sends to no channel at all: said so (it read "sends to , none of them").
    nowhere = AlertRule(rule_id="nowhere", name="Nowhere", channels=(), policy_ids=("none",))
    rule_set = AlertRuleSet(occurred_at=utc_now(), rule=nowhere)
    asyncio.run(publish_events(nats_url, topology, [rule_set]))
    deployment.ok("policy", "set", "--name", "Tiny", "--limit", "0.005", "--id", "tiny")
    deployment.record(*GPT_4O_CALL)  # past the whole limit: three thresholds at once

    failing = eventually(
        lambda: doctor(deployment, **dead),
        lambda done: bool(lines_of(done, "problem", "alert deliveries")),
        WITHIN,
        "the failing webhook reported",
    )
    assert failing.returncode == 1
    assert lines_of(failing, "problem", "alert rules") == [
        "rule nowhere ('Nowhere') sends to no channel: its alerts go nowhere"
        " | give the rule an enabled channel"
    ]
    [line] = lines_of(failing, "problem", "alert deliveries")
    assert re.fullmatch(
        r"webhook: 3 alerts not sent, the oldest queued \d{4}-\d\d-\d\d \d\d:\d\d UTC;"
        r" sending fails: ConnectionError: webhook unreachable: .+"
        r" \| make the webhook receiver take them \(`budget alerts show [0-9a-f-]{36}`\);"
        r" each is retried for a day, then given up",
        line,
    ), line

    # No notifier: alerts raised now are never tried (shown as queued 10 minutes ago, past
    # the 5 a running notifier never takes).
    assert notifier.stop() == 0
    deployment.ok("policy", "set", "--name", "Tinier", "--limit", "0.001", "--id", "tinier")
    database_url = deployment.env["BUDGET_DATABASE_URL"]

    def backdated() -> int:
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "UPDATE alert_outbox SET created_at = created_at - interval '10 minutes'"
                " WHERE status = 'pending' AND attempts = 0 AND channel = 'nats'"
                " AND created_at > now() - interval '5 minutes'"
            ).rowcount

    assert eventually(backdated, lambda count: count == 3, WITHIN, "Tinier's alerts queued")
    untried = lines_of(doctor(deployment, **dead), "problem", "alert deliveries")
    nats = [u for u in untried if u.startswith("nats: ")]
    assert len(nats) == 1 and re.fullmatch(
        r"nats: 3 alerts queued since \d{4}-\d\d-\d\d \d\d:\d\d UTC, never tried"
        r" \| start `budget notifier` \(or `budget up`\); no notifier sends on this channel",
        nats[0],
    ), untried

    # Given up: the webhook's alerts, failing for over a day, fail once more and are dropped.
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE alert_outbox SET failing_since = now() - interval '2 days'"
            " WHERE channel = 'webhook' AND status = 'pending'"
        )
    notifier = deployment.start("notifier", **dead)
    given_up = eventually(
        lambda: doctor(deployment, **dead),
        lambda done: (
            bool(lines_of(done, "note", "alert deliveries"))
            and not lines_of(done, "problem", "alert deliveries")
        ),
        WITHIN,
        "the webhook's alerts given up, the rest sent",
    )
    [note] = lines_of(given_up, "note", "alert deliveries")
    assert re.fullmatch(
        r"webhook: 6 alerts of the last 30 days given up, never delivered there; the newest:"
        r" ConnectionError: webhook unreachable: .+ \| `budget alerts show [0-9a-f-]{36}`;"
        r" `budget alerts list` and the console still have them",
        note,
    ), note
    assert notifier.stop() == 0
