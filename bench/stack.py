"""The embedded stack ``budget up`` runs, for the benchmarks: every worker and service as
its own process, on a private data directory.

As ``budget up`` does, the HTTP service gets a free port (``BUDGET_API_PORT``, recorded in
``<data_dir>/api-port``) and the data directory (``BUDGET_DATA_DIR``), and the first start
creates an admin key in ``<data_dir>/admin.key``; ``api_access`` waits until the service
answers with that key."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from budget.config import Settings
from services.api.keys import first_admin_key
from services.ops import nats_client, prepare
from services.stack import STACK_WORKERS, StackInfo, kept_port, serve_stack

__all__ = ["ApiAccess", "BeforeWorkers", "api_access", "embedded_stack"]

BeforeWorkers = Callable[[str, str, Settings], Awaitable[None]]
"""``async before_workers(nats_url, database_url, settings)``: runs once the stack is
prepared (migrations, streams, projections' first versions), before any worker starts."""


@dataclass(frozen=True)
class ApiAccess:
    url: str
    """``http://127.0.0.1:<port>``"""
    port: int
    admin_key: str


@contextlib.asynccontextmanager
async def embedded_stack(
    name: str,
    *,
    workers: Sequence[str] = (),
    data_dir: Path | None = None,
    before_workers: BeforeWorkers | None = None,
    service_env: Mapping[str, str] | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[StackInfo, Settings]]:
    """The running stack and settings pointing at it (``settings`` override the defaults);
    ``workers``: which to run, by default every one ``budget up`` runs. ``data_dir``: keep
    the stack's data there (a later run on it finds its data again), else a new
    temporary directory. ``service_env``: more ``BUDGET_*`` settings for the stack's
    processes."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
    base = Settings(spool_dir=data_dir / "spool", data_dir=data_dir, **settings)

    async def prepare_stack(nats_url: str, database_url: str) -> None:
        await prepare(nats_url, database_url, base)
        if before_workers is not None:
            await before_workers(nats_url, database_url, base)
        async with nats_client(nats_url) as nc:
            await first_admin_key(nc.jetstream(), base.topology, data_dir / "admin.key")

    stack = asyncio.create_task(
        serve_stack(
            data_dir,
            list(workers or STACK_WORKERS),
            prepare=prepare_stack,
            on_ready=ready.set_result,
            stop=stop,
            out=io.StringIO(),  # the banner is for people
            extra_env={
                "BUDGET_API_PORT": str(kept_port(data_dir / "api-port")),
                "BUDGET_DATA_DIR": str(data_dir),
                **(service_env or {}),
            },
        )
    )
    try:
        info = await _first(ready, stack)
        yield (
            info,
            base.model_copy(update={"nats_url": info.nats_url, "database_url": info.database_url}),
        )
    finally:
        stop.set()
        await stack


async def _first(ready: asyncio.Future[StackInfo], stack: asyncio.Task[int]) -> StackInfo:
    """The stack's info once ready; the stack's own exception if it failed to start."""
    either: list[asyncio.Future[Any]] = [ready, stack]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        stack.result()  # raises what stopped it
        raise RuntimeError("the stack stopped before it was ready")
    return ready.result()


async def api_access(info: StackInfo, within: float = 60) -> ApiAccess:
    """The stack's HTTP service once it answers ``/readyz`` and accepts the admin key
    (the ``api_keys`` worker has applied it)."""
    port = int((info.data_dir / "api-port").read_text().strip())
    url = f"http://127.0.0.1:{port}"
    key = (info.data_dir / "admin.key").read_text().strip()
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                ready = await http.get("/readyz")
                if ready.status_code == 200:
                    answer = await http.get(
                        "/api/v1/policies", headers={"Authorization": f"Bearer {key}"}
                    )
                    if answer.status_code == 200:
                        return ApiAccess(url, port, key)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP service at {url} did not accept the admin key")
            await asyncio.sleep(0.2)
