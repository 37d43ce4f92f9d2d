"""``budget api``: serve the app with uvicorn until SIGTERM.

The session secret (which signs console cookies) is the ``api_session_secret`` setting
(``BUDGET_API_SESSION_SECRET``) when set (give every replica the same one), else from
``<data_dir>/api-session.secret``, created 0600 on first start.
"""

from __future__ import annotations

import logging

import uvicorn

from budget.config import Settings
from services.api.app import create_app
from services.credentials import generated_secret
from services.metrics import serve_metrics

__all__ = ["serve_api", "session_secret"]

log = logging.getLogger("budget.api")


def session_secret(settings: Settings) -> str:
    if settings.api_session_secret is not None:
        return settings.api_session_secret.get_secret_value()
    return generated_secret(settings.data_dir / "api-session.secret", nbytes=48)


def serve_api(settings: Settings, *, host: str, port: int, secure_cookies: bool) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(
        settings, session_secret=session_secret(settings), secure_cookies=secure_cookies
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # services.api.app.AccessLog writes paths only, never query strings
        log_config=None,
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    serve_metrics(settings, "api")
    log.info("budget api on http://%s:%d/", host, port)
    uvicorn.Server(config).run()
    return 0
