"""What the enforcer and the query service tell an asker (a host app, over NATS) when
answering fails: the exception's text, redacted as every other text a process shows. The
log redaction does not reach these answers: they are published, not logged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from pydantic import BaseModel

from budget.redaction import protect
from events.rpc import RpcError
from services.replies import answer

SECRET = "Pl4nted-db-Secret-8c1f"


class _Asked(BaseModel):
    pass


class _Nats:
    """Records what is published: the answers an asker would get."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append(data)


@pytest.mark.parametrize(
    ("failure", "told_as"),
    [
        # libpq's text names the database's address and role: not told at all
        (
            psycopg.OperationalError(f"connection failed: password={SECRET} refused"),
            "svc: database unavailable (OperationalError); its log says why",
        ),
        (OSError(f"cannot read {SECRET}"), "svc: database unavailable (OSError); its log says why"),
        # the asker's own value, quoted back: told, masked
        (
            psycopg.DataError(f"invalid input near {SECRET}"),
            "svc: the database refused the request: invalid input near ***",
        ),
        (
            ValueError(f"postgresql://budget:{SECRET}@db/budget is wrong"),
            "postgresql://budget:***@db/budget is wrong",
        ),
    ],
    ids=["unavailable", "os", "data", "value"],
)
async def test_an_askers_error_answer_holds_no_secret_the_process_knows(
    failure: Exception, told_as: str
) -> None:
    protect(SECRET)  # as the `budget` command protects its settings' secrets

    async def failing(request: object, msg: object) -> BaseModel:
        raise failure

    nats = _Nats()
    msg = SimpleNamespace(subject="t.rpc.host.x", reply="_R_.a.b", data=b"{}", headers=None)
    await answer(cast(Any, nats), cast(Any, msg), _Asked, failing, service="svc")
    [published] = nats.published
    assert RpcError.model_validate_json(published).error == told_as
