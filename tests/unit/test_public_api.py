"""The ``budget`` package's public names load on first use: each resolves to the object
its home module defines, and importing one submodule does not import the rest of the
API (a worker, which reads ``budget.config``, never loads the SDK wrappers)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import budget


def test_every_public_name_has_one_home() -> None:
    assert sorted(budget._HOME_OF) == sorted(budget.__all__)


@pytest.mark.parametrize("name", budget.__all__)
def test_each_public_name_is_its_home_modules_object(name: str) -> None:
    home = importlib.import_module(budget._HOME_OF[name])
    assert getattr(budget, name) is getattr(home, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'instrumnet'"):
        budget.instrumnet  # type: ignore[attr-defined]  # noqa: B018


def test_a_submodule_is_reached_from_the_package() -> None:
    probe = "import budget; print(budget.redaction.install_redaction.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "install_redaction"


def test_reading_the_config_does_not_import_the_api() -> None:
    probe = (
        "import sys, budget.config; "
        "print(sorted(m for m in ('budget.alerts', 'budget.instrumentation', "
        "'budget.manager', 'budget.reports', 'budget.tracker', 'openai') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
