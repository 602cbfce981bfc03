"""Bulk-insert the large table for bench/run.py --large; runs inside the rendered project.

bench/run.py copies this file into the rendered service and runs it with `uv run python`, with
the service's environment (DATABASE_URL and the rest). It writes through the service's own
table objects (`app.models.User`, `app.models.Item`) and engine, so table and column names and
the storage of UUIDs (native on PostgreSQL, 32 hex characters on MySQL and SQLite) and of UTC
datetimes are exactly the service's, never guessed.

Users are copies of an existing user's row (same password hash, so they can log in with the
benchmark password) with new ids and emails; items are spread evenly over them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.config import get_settings
from app.core.db import Database
from app.models import Item, User
from sqlalchemy import insert, select

BATCH = 5_000


async def seed(copy_user: str, users: int, items: int, email_pattern: str) -> str:
    database = Database(get_settings())
    user_table, item_table = User.__table__, Item.__table__  # type: ignore[attr-defined]
    started = time.perf_counter()
    now = datetime.now(UTC)
    try:
        async with database.engine.begin() as conn:
            template = (
                (await conn.execute(select(user_table).where(user_table.c.email == copy_user)))
                .mappings()
                .one()
            )
            user_rows: list[dict[str, Any]] = []
            for n in range(users):
                row = dict(template)
                row.update(
                    id=uuid.uuid4(), email=email_pattern.format(n=n), created_at=now, updated_at=now
                )
                user_rows.append(row)
            await conn.execute(insert(user_table), user_rows)

        per_user = items // users
        rows: list[dict[str, Any]] = []
        for owner in user_rows:
            for i in range(per_user):
                # Distinct whole seconds: MySQL's DATETIME keeps no fractions.
                created = now - timedelta(seconds=i + 1)
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "owner_id": owner["id"],
                        "title": f"Large item {i}",
                        "description": "Bulk-inserted by bench/seed_large.py",
                        "created_at": created,
                        "updated_at": created,
                    }
                )
        for start in range(0, len(rows), BATCH):
            async with database.engine.begin() as conn:
                await conn.execute(insert(item_table), rows[start : start + BATCH])
    finally:
        await database.dispose()
    elapsed = time.perf_counter() - started
    return f"inserted {len(user_rows)} users and {len(rows)} items in {elapsed:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-user", required=True, help="email of the user row to copy")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--email-pattern", default="large-{n}@example.com")
    args = parser.parse_args()
    print(asyncio.run(seed(args.copy_user, args.users, args.items, args.email_pattern)))


if __name__ == "__main__":
    main()
