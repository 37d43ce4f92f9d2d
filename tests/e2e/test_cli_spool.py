"""``budget spool``: a host's dead letters shown, and sent again once what refused them
is fixed, each counted once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import test_cli
from test_cli import UNREACHABLE_NATS, Budget, stored_events

from budget.spool import Spool, SpooledEvent
from events import Topology, UsageRecorded, encode

from support import usage_event

# test_cli's fixtures: a `budget` command on this test's schema and subject prefix
base_env, budget = test_cli.base_env, test_cli.budget
REFUSED = "refused by NATS: the NATS user 'host' may not publish to it"


def bury(budget: Budget, topology: Topology, event: UsageRecorded | None = None) -> str:
    """A usage event in the spool's dead letters, as a refused publish leaves it."""
    event = event or usage_event()
    spool = Spool(Path(budget.env["BUDGET_SPOOL_DIR"]))
    letter = SpooledEvent(
        str(event.event_id), topology.event_subject(UsageRecorded.SUBJECT), encode(event)
    )
    spool.update(bury=[(letter, REFUSED)])
    spool.close()
    return letter.event_id


def test_show_lists_the_dead_letters_with_why(budget: Budget, topology: Topology) -> None:
    spool_dir = budget.env["BUDGET_SPOOL_DIR"]
    assert budget.ok("spool", "show").splitlines() == [
        f"0 events wait in the spool at {spool_dir}",
        "0 dead letters",
        f"(no spool file in {spool_dir}: nothing was ever spooled there; is BUDGET_SPOOL_DIR"
        " the host's spool_dir?)",
    ]
    event_id = bury(budget, topology)
    lines = budget.ok("spool", "show").splitlines()
    assert lines[:2] == [f"0 events wait in the spool at {spool_dir}", "1 dead letters:"]
    [letter] = lines[2:]
    assert letter.split()[:2] == [event_id, topology.event_subject(UsageRecorded.SUBJECT)]
    assert letter.endswith(REFUSED)


def test_resend_sends_the_dead_letters_named_once_nats_takes_them(
    budget: Budget, nats_url: str, topology: Topology
) -> None:
    event = usage_event()
    event_id = bury(budget, topology, event)
    for args, says in (
        ((), "name the dead letters' event ids, or give --all"),
        ((event_id, "--all"), "name the dead letters' event ids, or give --all"),
        (("0190c3a0-0000-7000-8000-000000000000",), "no dead letter has the event id 0190c3a0"),
    ):
        refused = budget.run("spool", "resend", *args)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        [line] = refused.stderr.splitlines()
        assert says in line, line
    away = budget.run("spool", "resend", event_id, BUDGET_NATS_URL=UNREACHABLE_NATS)
    assert away.returncode == 2, away
    assert "the 1 dead letters wait in the spool" in away.stderr
    assert budget.ok("spool", "show").splitlines()[:2] == [
        f"1 events wait in the spool at {budget.env['BUDGET_SPOOL_DIR']}",
        "0 dead letters",
    ]

    budget.ok("migrate")
    assert budget.ok("spool", "resend", "--all").strip() == (
        "0 dead letters back in the spool; NATS acknowledged 1 events, 0 still wait in the"
        " spool, 0 dead letters"
    )
    assert asyncio.run(stored_events(nats_url, topology)) == 1
    bury(budget, topology, event)  # refused again, and sent again: stored once
    assert budget.ok("spool", "resend", event_id).startswith("1 dead letters back in the spool;")
    assert asyncio.run(stored_events(nats_url, topology)) == 1


def test_a_spool_directory_that_is_a_file_is_one_line_naming_it(
    budget: Budget, tmp_path: Path
) -> None:
    """It showed "0 events wait in the spool", as if the host's spool were empty."""
    a_file = tmp_path / "spool-file"
    a_file.write_text("")
    for args in (("spool", "show"), ("spool", "resend", "--all")):
        done = budget.run(*args, BUDGET_SPOOL_DIR=str(a_file))
        assert (done.returncode, done.stdout) == (2, ""), done
        [line] = done.stderr.splitlines()
        assert line == (
            f"budget: the spool directory {a_file} (BUDGET_SPOOL_DIR) is not a directory;"
            " give the host's spool_dir"
        )
