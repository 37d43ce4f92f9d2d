"""The TLS files the settings name for NATS (``nats_tls_ca``, ``nats_tls_cert``,
``nats_tls_key``): one that cannot be read or is no PEM is one line naming the setting, its
variable and the file, not ``[Errno 2] No such file or directory`` or OpenSSL's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from throwaway_ca import Authority

from budget.config import ConfigError, Settings
from budget.natsconn import client_tls


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("nats_tls_ca", "BUDGET_NATS_TLS_CA"),
        ("nats_tls_cert", "BUDGET_NATS_TLS_CERT"),
        ("nats_tls_key", "BUDGET_NATS_TLS_KEY"),
    ],
)
@pytest.mark.parametrize("problem", ["missing", "a directory", "not PEM"])
def test_a_nats_tls_file_that_cannot_be_used_names_its_setting_and_file(
    tmp_path: Path, setting: str, variable: str, problem: str
) -> None:
    authority = Authority.create(tmp_path / "ca")
    client = authority.issue("host", client=True)
    files = {
        "nats_tls_ca": authority.ca_file,
        "nats_tls_cert": client.cert,
        "nats_tls_key": client.key,
    }
    assert client_tls(Settings(**files)) is not None  # the files as they should be
    wrong = tmp_path / "wrong.pem"
    if problem == "a directory":
        wrong.mkdir()
    elif problem == "not PEM":
        wrong.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as error:
        client_tls(Settings(**{**files, setting: wrong}))
    message = str(error.value)
    assert f"{setting} ({variable})" in message and str(wrong) in message, message
    assert "\n" not in message and "_ssl.c" not in message
