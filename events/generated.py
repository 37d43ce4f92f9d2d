"""Fields a model fills with a new value when they are absent (``event_id``, a policy's
or rule's id): on the wire they are required, since a
default made on read would differ from read to read, and a replay would count or apply
the event as another one."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, get_args

from pydantic import BaseModel

__all__ = ["generated_fields", "generated_on_read"]

# Factories whose value is the same on every call: an absent list is an empty list.
_CONSTANT_FACTORIES: tuple[Any, ...] = (list, dict, set, tuple, frozenset)


def generated_on_read(model: BaseModel) -> str | None:
    """The path of the first field of ``model`` (at any depth) whose value was generated
    by validation rather than given, or None."""
    generated, nested = _fields(type(model))
    for name in generated:
        if name not in model.model_fields_set:
            return name
    for name in nested:
        for index, value in _models(getattr(model, name)):
            found = generated_on_read(value)
            if found is not None:
                return f"{name}{index}.{found}"
    return None


def generated_fields(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Per model class name, in ``model`` and every model it may hold: the fields a
    message must give (for the JSON Schemas)."""
    found: dict[str, tuple[str, ...]] = {}
    generated, nested = _fields(model)
    if generated:
        found[model.__name__] = generated
    for name in nested:
        for inner in _model_types(model.model_fields[name].annotation):
            found |= generated_fields(inner)
    return found


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields with a generating default, fields that may hold models that have some)."""
    generated = tuple(
        name
        for name, field in model.model_fields.items()
        if field.default_factory is not None and field.default_factory not in _CONSTANT_FACTORIES
    )
    nested = tuple(
        name
        for name, field in model.model_fields.items()
        if any(_fields(inner) != ((), ()) for inner in _model_types(field.annotation))
    )
    return generated, nested


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _model_types(argument)


def _models(value: object) -> Iterator[tuple[str, BaseModel]]:
    """The models in a field's value, with their index for the path."""
    if isinstance(value, BaseModel):
        yield "", value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield f".{i}", item
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield f".{key}", item
