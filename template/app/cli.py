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
from app.services.user import AccountExists, AdminBootstrap


async def create_admin(settings: Settings, email: str, password: str, *, promote: bool) -> str:
    """Create the administrator (or, with `promote`, promote and reset an existing
    account); raises AccountExists when the account exists and `promote` is false."""
    database = Database(settings)
    try:
        hasher = PasswordHasher(settings.bcrypt_rounds)
        try:
            bootstrap = AdminBootstrap(UnitOfWork(database), hasher)
            if promote:
                return await bootstrap.promote(email, password)
            return await bootstrap.create(email, password)
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


def _check_admin_flags(args: argparse.Namespace) -> None:
    if args.promote and not args.reset_password:
        raise SystemExit(
            "create-admin: --promote requires --reset-password: an existing account keeps "
            "no password this command did not set (whoever registered the email chose it)"
        )
    if args.reset_password and not args.promote:
        raise SystemExit("create-admin: --reset-password only goes with --promote")
    if args.promote and args.skip_existing:
        raise SystemExit("create-admin: --promote and --skip-existing contradict each other")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser(
        "create-admin",
        help="create the administrator if the email has no account (safe to repeat)",
        description="Create the administrator when the email has no account. An existing "
        "account is never changed, except with --promote --reset-password, typed by an "
        "operator: it then becomes an active administrator with the password given, and "
        "its sessions are revoked.",
    )
    admin.add_argument("--email", help="defaults to FIRST_ADMIN_EMAIL")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else FIRST_ADMIN_PASSWORD, else a prompt)",
    )
    admin.add_argument(
        "--promote",
        action="store_true",
        help="make an existing account an active administrator (requires --reset-password)",
    )
    admin.add_argument(
        "--reset-password",
        action="store_true",
        help="with --promote: replace the account's password with the one given",
    )
    admin.add_argument(
        "--skip-existing",
        action="store_true",
        help="if the email has an account that is not an active administrator, say so and "
        "exit 0 without changing it (scripts/prestart uses this)",
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
        _check_admin_flags(args)
        email, password = _admin_credentials(args, settings)
        try:
            print(asyncio.run(create_admin(settings, email, password, promote=args.promote)))
        except AccountExists as exc:
            if not args.skip_existing:
                raise SystemExit(f"create-admin: {exc.message}") from None
            print(f"create-admin: warning: {exc.message}", file=sys.stderr)
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
