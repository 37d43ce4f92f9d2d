"""The ``budget`` command given a broken configuration or argument that it used to report
in a library's words (or not at all): one line on stderr naming what is wrong and where,
exit status 2, before anything connects (the servers here are unreachable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

CLI = (sys.executable, "-m", "services.cli")
RECORD = ("record", "--model", "gpt-4o", "--provider", "openai")


def budget(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``budget ARGS`` in ``cwd`` (its config.yaml, if any), against servers nobody
    listens on."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    environ.update(
        BUDGET_NATS_URL="nats://127.0.0.1:1",
        BUDGET_DATABASE_URL="postgresql://budget@127.0.0.1:1/budget",
        BUDGET_SPOOL_DIR=str(cwd / "spool"),
        PYTHONPATH=str(ROOT),
        **env,
    )
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert line.startswith("budget: ") and "Traceback" not in line, done.stderr
    return line


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_bytes(b"budget:\n  nats_url: \xffnats://x\n")
    line = one_error(budget(tmp_path, "spend"))
    assert line == (
        "budget: cannot read config file config.yaml: it is not UTF-8 text; save it as UTF-8"
        " (at byte 20)"
    )


def test_a_nats_password_file_that_is_not_utf8_is_named_and_none_of_it_shown(
    tmp_path: Path,
) -> None:
    password = tmp_path / "nats.password"
    password.write_bytes(b"hunter\xe92")
    line = one_error(
        budget(tmp_path, *RECORD, BUDGET_NATS_USER="host", BUDGET_NATS_PASSWORD_FILE=str(password))
    )
    assert line == (
        f"budget: cannot read the NATS password file {password} (BUDGET_NATS_PASSWORD_FILE):"
        " it is not UTF-8 text; save it as UTF-8"
    )


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("BUDGET_PRICE_OVERRIDES", "budget.price_overrides"),
        ("BUDGET_POLICIES", "budget_policies"),
        ("BUDGET_ALERT_CHANNELS", "alert_channels"),
    ],
)
def test_a_variable_for_a_setting_of_the_file_only_is_refused_not_ignored(
    tmp_path: Path, variable: str, key: str
) -> None:
    line = one_error(budget(tmp_path, "prices", "show", "gpt-4o", **{variable: "{}"}))
    field = variable.removeprefix("BUDGET_").lower()
    assert line == (
        f"budget: environment variable {variable} is not read: {field} is set in the config"
        f" file only ({key} in config.yaml); unset the variable"
    )


def test_an_estimated_cost_above_what_a_check_takes_is_refused_naming_the_option(
    tmp_path: Path,
) -> None:
    line = one_error(budget(tmp_path, "check", "gpt-4o", "--cost", "1e13"))
    assert line == (
        "budget: Invalid value for '--cost': Input should be less than or equal to"
        " 1000000000000 (see --help)"
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ((*RECORD, "--input-tokens", "1000000000001"), "--input-tokens"),
        ((*RECORD, "--output-tokens", "1000000000001"), "--output-tokens"),
        (("check", "gpt-4o", "--tokens", "1000000000001"), "--tokens"),
    ],
)
def test_a_token_count_above_the_contract_names_the_option(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    line = one_error(budget(tmp_path, *args))
    assert line == (
        f"budget: Invalid value for '{option}': Input should be less than or equal to"
        " 1000000000000 (see --help)"
    )


def test_a_data_directory_that_cannot_be_one_is_named_with_the_option(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = one_error(budget(tmp_path, "up", "--data-dir", str(a_file)))
    assert line == (
        f"budget: cannot use {a_file} as the data directory (it is not a directory); fix it"
        " or choose another with --data-dir (or BUDGET_DATA_DIR)"
    )


def test_listing_nats_users_where_no_stack_made_them_says_so(tmp_path: Path) -> None:
    line = one_error(budget(tmp_path, "nats-credential", "list", "--data-dir", "elsewhere"))
    assert line == (
        f"budget: no NATS users in {tmp_path / 'elsewhere'}: `budget up` makes them on its"
        " first start there; start it, or name the data directory it uses with --data-dir"
    )


def test_one_port_for_both_nats_and_the_console_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    line = one_error(
        budget(tmp_path, "up", "--data-dir", str(data), "--nats-port", "5599", "--api-port", "5599")
    )
    assert line == "budget: --nats-port and --api-port are both 5599: give them two ports"
    assert not data.exists()
