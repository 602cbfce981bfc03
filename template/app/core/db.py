"""The async engine and sessions."""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.dialect import READ_ONLY_OPTIONS, configure_engine, engine_options


class Database:
    """One engine and its session factories, created per application instance.

    `sessionmaker` opens transactional sessions, for anything that writes.
    `read_sessionmaker` opens sessions on the same pool for work that only reads (the
    current user, pages), with the database's cheapest safe way to read: see
    READ_ONLY_OPTIONS in app/core/dialect.py.
    """

    def __init__(self, settings: Settings) -> None:
        options: dict[str, Any] = {
            # A connection the server dropped is replaced instead of failing a request
            # (unless the dialect has a cheaper way, see engine_options()).
            "pool_pre_ping": True,
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds,
            **engine_options(),
        }
        self.engine: AsyncEngine = create_async_engine(settings.database_url, **options)
        configure_engine(self.engine)
        # Objects stay readable after commit: async code cannot lazily reload them.
        self.sessionmaker = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        self.read_sessionmaker = async_sessionmaker(
            self.engine.execution_options(**READ_ONLY_OPTIONS),
            class_=AsyncSession,
            expire_on_commit=False,
        )

    async def dispose(self) -> None:
        await self.engine.dispose()
