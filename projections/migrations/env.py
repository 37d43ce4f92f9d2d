"""Alembic environment: runs online against the URL that ``projections.migrate`` passes."""

from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url, "projections.migrate sets sqlalchemy.url"
with create_engine(url).connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
