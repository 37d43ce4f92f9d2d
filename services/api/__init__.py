"""``budget api``: the HTTP API and the web console, as one service."""
