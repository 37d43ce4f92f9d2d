"""The id in a PUT's path is the one that counts, whatever the body says."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from services.api.problems import Problem

__all__ = ["with_path_id"]

M = TypeVar("M", bound=BaseModel)


def with_path_id(model: M, field: str, value: str) -> M:
    """``model`` with ``field`` set to the path's ``value``; a 422 naming ``path.<field>``
    when that is not a valid id."""
    if getattr(model, field) == value:
        return model
    try:
        return type(model).model_validate({**model.model_dump(), field: value})
    except ValueError:
        kind = field.removesuffix("_id")
        raise Problem(
            422,
            f"path.{field}: use letters, digits and _ . : - (at most 100)",
            errors=[{"field": f"path.{field}", "message": f"not a valid {kind} id"}],
        ) from None
