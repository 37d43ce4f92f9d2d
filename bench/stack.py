"""The embedded stack ``budget up`` runs, for the benchmarks: every worker and service as
its own process, on a private data directory."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from budget.config import Settings
from projections.registry import PROJECTIONS
from services.ops import prepare
from services.stack import SERVICES, StackInfo, serve_stack

__all__ = ["embedded_stack"]


@contextlib.asynccontextmanager
async def embedded_stack(
    name: str, *, workers: Sequence[str] = (), **settings: Any
) -> AsyncIterator[tuple[StackInfo, Settings]]:
    """The running stack and settings pointing at it (``settings`` override the defaults);
    ``workers``: which to run, by default every one ``budget up`` runs."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    stop = asyncio.Event()
    ready: asyncio.Future[StackInfo] = asyncio.get_running_loop().create_future()
    base = Settings(spool_dir=data_dir / "spool", **settings)

    async def prepare_stack(nats_url: str, database_url: str) -> None:
        await prepare(nats_url, database_url, base)

    stack = asyncio.create_task(
        serve_stack(
            data_dir,
            list(workers or [*PROJECTIONS, *SERVICES]),
            prepare=prepare_stack,
            on_ready=ready.set_result,
            stop=stop,
            out=io.StringIO(),  # the banner is for people
        )
    )
    try:
        info = await ready
        yield (
            info,
            base.model_copy(update={"nats_url": info.nats_url, "database_url": info.database_url}),
        )
    finally:
        stop.set()
        await stack
