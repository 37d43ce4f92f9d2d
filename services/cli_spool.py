"""``budget spool``: what a host process left in its spool, and sending it again.

The spool (``budget.spool``) keeps what NATS did not acknowledge, and in its dead letters
what NATS refused: a credential refused a subject, or an event larger than the server
takes. Once the cause is fixed (the credential given the subject, the server's
``max_payload`` raised), ``resend`` puts the dead letters back in the spool and sends the
spool; the events keep their ids, so one that did arrive is never counted twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import typer

from budget.publisher import EventPublisher
from budget.spool import Spool
from services.cli_context import require_nats, settings, tracker

__all__ = ["spool_app"]

spool_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _spool() -> Spool:
    """The configured spool; ``ValueError`` if its path is not a directory (a host's spool
    there would fail: showing it empty would reassure wrongly)."""
    directory = settings().spool_dir
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"the spool directory {directory} (BUDGET_SPOOL_DIR) is not a directory;"
            " give the host's spool_dir"
        )
    return Spool(directory)


@spool_app.command("show")
def show() -> None:
    """How many events wait in the spool (BUDGET_SPOOL_DIR), and each dead letter: its
    event id, subject, when NATS refused it and why."""
    spool = _spool()
    try:
        waiting, dead = len(spool), spool.dead_letters()
    finally:
        spool.close()
    typer.echo(f"{waiting} events wait in the spool at {spool.directory}")
    typer.echo(f"{len(dead)} dead letters" + (":" if dead else ""))
    for letter in dead:
        when = dt.datetime.fromtimestamp(letter.dead_at, dt.UTC).isoformat(timespec="seconds")
        typer.echo(f"  {letter.event.event_id}  {letter.event.subject}  {when}  {letter.reason}")
    if not spool.path.exists():  # a mistyped path would read as an empty spool
        typer.echo(
            f"(no spool file in {spool.directory}: nothing was ever spooled there; is"
            " BUDGET_SPOOL_DIR the host's spool_dir?)"
        )


@spool_app.command("resend")
def resend(
    event_ids: Annotated[
        list[str] | None, typer.Argument(help="dead letters to send again, by event id")
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all", help="every dead letter (see `budget spool show`)")
    ] = False,
) -> None:
    """Put dead letters back in the spool once what refused them is fixed, and send the
    spool now; prints what NATS acknowledged and what waits or was refused again."""
    if bool(event_ids) == all_dead:
        raise typer.BadParameter("name the dead letters' event ids, or give --all")
    spool = _spool()
    try:
        known = {letter.event.event_id for letter in spool.dead_letters()}
        unknown = sorted(set(event_ids or ()) - known)
        if unknown:
            raise ValueError(
                f"no dead letter has the event id {', '.join(unknown)} in {spool.directory}"
                " (see `budget spool show`)"
            )
        revived = spool.revive(None if all_dead else set(event_ids or ()))
        queued, dead_before = len(spool), len(spool.dead_letters())
    finally:
        spool.close()
    typer.echo(asyncio.run(_send(len(revived), queued, dead_before)))


async def _send(revived: int, queued: int, dead_before: int) -> str:
    """Send the spool (``queued`` events, beside ``dead_before`` dead letters); what
    became of it, in one line. What NATS acknowledged is counted from the spool, not from
    this send: the tracker's own re-send, started as it connects, may take some first."""
    async with tracker() as started:
        publisher = started.publisher
        assert isinstance(publisher, EventPublisher)  # a CLI tracker publishes
        require_nats(publisher, f"the {revived} dead letters wait in the spool")
        await publisher.resend_spool()
        waiting, dead = len(publisher.spool), len(publisher.spool.dead_letters())
    sent = queued - waiting - (dead - dead_before)
    return (
        f"{revived} dead letters back in the spool; NATS acknowledged {sent} events,"
        f" {waiting} still wait in the spool, {dead} dead letters"
        + (" (refused again: see `budget spool show`)" if dead else "")
    )
