"""Administrative commands: `python -m app.cli --help`."""

import argparse
import asyncio
import getpass
import sys
import time

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings, load_settings
from app.core.db import Database, UnitOfWork
from app.core.security import PasswordHasher, TokenService, password_problem
from app.schemas.user import UserCreate
from app.services.session import SessionService
from app.services.user import AdminBootstrap


async def create_admin(settings: Settings, email: str, password: str) -> str:
    database = Database(settings)
    try:
        hasher = PasswordHasher(settings.bcrypt_rounds)
        try:
            return await AdminBootstrap(UnitOfWork(database), hasher).ensure_admin(email, password)
        finally:
            hasher.close()
    finally:
        await database.dispose()


async def prune_sessions(settings: Settings) -> str:
    database = Database(settings)
    try:
        service = SessionService(UnitOfWork(database), TokenService(settings), settings)
        sessions, tokens = await service.prune()
    finally:
        await database.dispose()
    return f"Deleted {sessions} closed session(s) and {tokens} unusable refresh token(s)"


async def database_reachable(settings: Settings) -> str | None:
    """None when the database answers, else why not."""
    database = Database(settings)
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None
    except (SQLAlchemyError, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        await database.dispose()


def _admin_credentials(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    email = args.email or settings.first_admin_email
    if not email:
        raise SystemExit("create-admin: give --email or set FIRST_ADMIN_EMAIL")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif settings.first_admin_password is not None:
        password = settings.first_admin_password.get_secret_value()
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {email}: ")
    else:
        raise SystemExit(
            "create-admin: set FIRST_ADMIN_PASSWORD, use --password-stdin, or run in a terminal"
        )
    problem = password_problem(password)
    if problem:
        raise SystemExit(f"create-admin: {problem}")
    try:
        UserCreate(email=email, password=password)
    except ValueError as exc:
        raise SystemExit(f"create-admin: invalid email {email!r}") from exc
    return email.lower(), password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser(
        "create-admin",
        help="create the administrator, or promote an existing user (safe to repeat)",
    )
    admin.add_argument("--email", help="defaults to FIRST_ADMIN_EMAIL")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else FIRST_ADMIN_PASSWORD, else a prompt)",
    )
    commands.add_parser(
        "prune-sessions",
        help="delete revoked and expired sessions and expired refresh tokens (safe to repeat)",
    )
    wait = commands.add_parser("wait-for-db", help="wait until the database answers")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)

    settings = load_settings()
    if args.command == "create-admin":
        email, password = _admin_credentials(args, settings)
        print(asyncio.run(create_admin(settings, email, password)))
    elif args.command == "prune-sessions":
        print(asyncio.run(prune_sessions(settings)))
    else:
        deadline = time.monotonic() + args.timeout
        while (problem := asyncio.run(database_reachable(settings))) is not None:
            if time.monotonic() >= deadline:
                raise SystemExit(f"wait-for-db: database not reachable: {problem}")
            time.sleep(1)
        print("Database is reachable")


if __name__ == "__main__":
    main()
