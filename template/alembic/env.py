"""Alembic environment: runs migrations through the service's own async engine, under a
database lock so that replicas starting together migrate one at a time."""

import asyncio
import logging
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import app.models  # noqa: F401  # registers every table on SQLModel.metadata
from app.core.config import load_settings, to_async_url
from app.core.dialect import (
    MIGRATION_DATETIME,
    MIGRATION_OPTIONS,
    engine_options,
    migration_lock,
)
from app.models.types import UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata
logger = logging.getLogger("alembic.env")


def database_url() -> str:
    # Tests pass the URL in; everything else reads DATABASE_URL like the service does.
    url = config.attributes.get("database_url")
    return to_async_url(url) if url else load_settings().database_url


def database_pooler() -> str:
    # With the URL, tests pass the pooler in too (DB_POOLER, "none" if they do not).
    if config.attributes.get("database_url"):
        return str(config.attributes.get("db_pooler", "none"))
    return load_settings().db_pooler


def waiting_for_lock() -> None:
    logger.info("Another process is migrating this database; waiting for it to finish")


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Write UTCDateTime as the database type it stores, so that revisions do not depend
    # on application code that may change later.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        spelling, needed_import = MIGRATION_DATETIME
        if needed_import:
            autogen_context.imports.add(needed_import)
        return spelling
    return False


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **MIGRATION_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
        **MIGRATION_OPTIONS,
    )
    with context.begin_transaction(), migration_lock(connection, waiting_for_lock):
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(
        database_url(),
        poolclass=NullPool,
        hide_parameters=True,
        **engine_options(database_pooler()),
    )
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
