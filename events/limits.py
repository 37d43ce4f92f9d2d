"""Length limits of the contract's text fields, named once: every column, form and
producer check that holds such a field reads its limit from here."""

from __future__ import annotations

__all__ = ["NAME_MAX"]

NAME_MAX = 200
"""Characters in an id or a name: a model, a user, a project, a policy, a rule or key name,
an actor (``set_by``, ``acknowledged_by``, ...), a producing service."""
