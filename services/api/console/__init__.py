"""The web console: server-rendered pages over the same query functions as the API."""

from fastapi import APIRouter

__all__ = ["console_router"]

console_router = APIRouter(include_in_schema=False)
