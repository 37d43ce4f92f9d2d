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
    "failure",
    [
        psycopg.OperationalError(f"connection failed: password={SECRET} refused"),
        psycopg.DataError(f"invalid input near {SECRET}"),
        ValueError(f"postgresql://budget:{SECRET}@db/budget is wrong"),
        OSError(f"cannot read {SECRET}"),
    ],
    ids=["unavailable", "data", "value", "os"],
)
async def test_an_askers_error_answer_holds_no_secret_the_process_knows(
    failure: Exception,
) -> None:
    protect(SECRET)  # as the `budget` command protects its settings' secrets

    async def failing(request: object, msg: object) -> BaseModel:
        raise failure

    nats = _Nats()
    msg = SimpleNamespace(subject="t.rpc.host.x", reply="_R_.a.b", data=b"{}", headers=None)
    await answer(cast(Any, nats), cast(Any, msg), _Asked, failing, service="svc")
    [published] = nats.published
    told = RpcError.model_validate_json(published).error
    assert told.startswith(("svc: ", "postgresql://")), told  # the reason is still told...
    assert SECRET not in told and "***" in told  # ...with the secret masked
