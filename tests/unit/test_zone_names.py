"""A zone given by a person (a report's tz, a new policy's timezone) is one of the IANA
database's, the same on every host: not whatever ``ZoneInfo`` loads from the host's
folder (``localtime`` is the host's own zone, another on each host), and a bad one is
one line naming the argument, in the Python API too."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from budget.policies import PolicyFieldError, settable_policy
from budget.report_format import Report
from budget.reports import ReportGenerator
from events import BudgetPolicy
from events.policy import iana_zone
from events.queries import ReportQuery
from services.api.console.forms import zone
from services.api.console.policy_form import zones

NOT_ZONES = ("localtime", "Factory", "posixrules", "right/UTC", "posix/Europe/Berlin")


@pytest.mark.parametrize("name", NOT_ZONES)
def test_what_the_hosts_zone_folder_holds_besides_the_zones_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="IANA name"):
        iana_zone(name)
    with pytest.raises(ValidationError, match="IANA name"):
        ReportQuery(kind="summary", tz=name)
    with pytest.raises(PolicyFieldError, match="IANA name") as refused:
        settable_policy(BudgetPolicy(name="x", limit_amount=Decimal(1), timezone=name))
    assert refused.value.field == "timezone"
    assert str(zone(name)) == "UTC"  # the console reads an unknown reader's zone as UTC


def test_localtime_is_refused_as_the_hosts_own_zone() -> None:
    with pytest.raises(ValueError, match="'localtime' is this host's own, another on each host"):
        iana_zone("localtime")


@pytest.mark.parametrize(
    "name", ("EST5EDT", "Etc/GMT-2", "America/Havana", "Asia/Kathmandu", "UTC", "US/Eastern")
)
def test_the_databases_zones_and_links_are_accepted(name: str) -> None:
    assert iana_zone(name) == name
    assert ReportQuery(kind="trend", tz=name).tz == name


@pytest.mark.parametrize(
    ("name", "hint"),
    [("UTC+2", "Etc/GMT-2"), ("gmt-5", "Etc/GMT+5"), ("UTC+14", "Etc/GMT-14")],
)
def test_a_fixed_offset_is_told_its_iana_name(name: str, hint: str) -> None:
    with pytest.raises(ValueError) as refused:
        iana_zone(name)
    assert str(refused.value) == (
        f"unknown time zone {name!r}; use an IANA name (a fixed offset of {name} is {hint})"
    )


def test_an_offset_no_etc_zone_has_gets_no_hint() -> None:
    with pytest.raises(ValueError) as refused:
        iana_zone("UTC-14")  # Etc/GMT+14 does not exist: -12 is the last
    assert str(refused.value) == "unknown time zone 'UTC-14'; use an IANA name"


def test_a_policy_in_the_log_keeps_a_zone_the_host_loads() -> None:
    """The contract decodes what it accepted before (a logged policy is never lost)."""
    assert BudgetPolicy(name="x", limit_amount=Decimal(1), timezone="localtime").timezone


class _Unasked:
    async def report(self, query: ReportQuery) -> Report:
        raise AssertionError("a bad zone is refused before anything is asked")


@pytest.mark.parametrize("kind", ("summary", "trend", "projection"))
async def test_the_python_api_refuses_a_bad_zone_in_one_line_naming_tz(kind: str) -> None:
    generator = ReportGenerator(_Unasked())  # type: ignore[arg-type]
    method = getattr(generator, f"generate_{kind}_report")
    with pytest.raises(ValueError) as refused:
        await method(tz="Mars/Olympus")
    assert str(refused.value) == "tz: unknown time zone 'Mars/Olympus'; use an IANA name"
    with pytest.raises(ValueError) as refused:
        await method(tz=5)
    assert str(refused.value) == "tz: an IANA time zone's name, not int"


def test_the_policy_form_suggests_only_zones_a_policy_may_be_set_in() -> None:
    suggested = zones()
    assert "Europe/Berlin" in suggested and "EST5EDT" in suggested
    assert not {"localtime", "Factory"} & set(suggested)
