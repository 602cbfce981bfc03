"""Users managing themselves, and administrators managing users."""

import uuid
from typing import Any

from app.core.db import UnitOfWork
from app.core.roles import ADMIN_ROLE
from app.core.security import PasswordHasher
from app.models.types import utcnow
from app.models.user import Principal, User
from app.repositories.errors import DuplicateKeyError
from app.repositories.session import SessionRepository
from app.repositories.user import UserRepository
from app.schemas.user import PasswordChange, UserAdminUpdate, UserSelfUpdate
from app.services.account_mail import AccountMail
from app.services.errors import (
    Conflict,
    EmailTaken,
    InvalidCredentials,
    LastAdministrator,
    NotFound,
)

USER_NOT_FOUND = "User not found"


class UserService:
    """Users managing themselves and administrators managing users; each change is one
    transaction."""

    def __init__(self, uow: UnitOfWork, hasher: PasswordHasher, mail: AccountMail) -> None:
        self.uow = uow
        self.users = UserRepository(uow)
        self.sessions = SessionRepository(uow)
        self.hasher = hasher
        self.mail = mail

    async def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        async with self.uow.transaction():
            return await self.users.page(offset, limit)

    async def get(self, user_id: uuid.UUID) -> Principal:
        async with self.uow.transaction():
            user = await self.users.get_principal(user_id)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        return user

    async def update_self(self, user_id: uuid.UUID, changes: UserSelfUpdate) -> User:
        """Change the caller's name or email. A new email needs the current password (a
        stolen token alone must not move the account's resets to another address),
        starts unverified and gets a verification link; the old one gets a notice."""
        values = changes.model_dump(exclude_unset=True, exclude={"current_password"})
        async with self.uow.transaction():
            user = await self._load(user_id)
        old_email = user.email
        if values.get("email", old_email) != old_email:
            if changes.current_password is None:
                raise InvalidCredentials("Give current_password to change the email")
            await self._check_password(user, changes.current_password)
            values["email_verified"] = False
        for field, value in values.items():
            setattr(user, field, value)
        user.updated_at = utcnow()
        try:
            async with self.uow.transaction():
                await self.users.save(user)
        except DuplicateKeyError:
            raise EmailTaken() from None
        if user.email != old_email:
            self.mail.email_changed(user.id, old_email, user.email)
        return user

    async def _check_password(self, user: User, password: str) -> None:
        """Raise InvalidCredentials unless `password` is the user's; outside any
        transaction, since bcrypt takes long."""
        valid, _ = await self.hasher.verify_and_update(password, user.hashed_password)
        if not valid:
            raise InvalidCredentials("Current password is incorrect")

    async def change_password(self, caller: Principal, change: PasswordChange) -> None:
        """Change the caller's password and end their other sessions: whoever knew the
        old password is signed out."""
        # No transaction stays open while bcrypt runs.
        async with self.uow.transaction():
            user = await self._load(caller.id)
        await self._check_password(user, change.current_password)
        user.hashed_password = await self.hasher.hash(change.new_password)
        user.updated_at = now = utcnow()
        async with self.uow.transaction():
            await self.users.save(user)
            await self.sessions.revoke_all(user.id, now, keep=caller.session_id)

    async def _load(self, user_id: uuid.UUID) -> User:
        user = await self.users.load(user_id)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        return user

    async def administer(self, user_id: uuid.UUID, changes: UserAdminUpdate) -> User:
        values = changes.model_dump(exclude_unset=True)
        async with self.uow.transaction():
            user, another_admin = await self._lock_for_admin_change(user_id)
            loses_admin = _is_active_admin(user) and (
                values.get("role", ADMIN_ROLE) != ADMIN_ROLE or values.get("is_active") is False
            )
            if loses_admin and not another_admin:
                raise LastAdministrator()
            # A new role or a deactivation signs the user out everywhere: no session
            # continues under what it was opened with.
            signed_out = (
                values.get("is_active") is False or values.get("role", user.role) != user.role
            )
            for field, value in values.items():
                setattr(user, field, value)
            user.updated_at = now = utcnow()
            await self.users.save(user)
            if signed_out:
                await self.sessions.revoke_all(user.id, now)
        return user

    async def delete(self, user_id: uuid.UUID) -> None:
        async with self.uow.transaction():
            user, another_admin = await self._lock_for_admin_change(user_id)
            if _is_active_admin(user) and not another_admin:
                raise LastAdministrator()
            await self.users.delete(user)

    async def _lock_for_admin_change(self, user_id: uuid.UUID) -> tuple[User, bool]:
        """Lock the user and the active administrators; say whether another one remains.

        Every change that could remove an administrator takes the administrators' row
        locks first (the first statement of its transaction), always in the same order,
        so two such changes run one after the other and the second sees what the first
        did.
        """
        admins = await self.users.lock_active_with_role(ADMIN_ROLE)
        user = await self.users.load(user_id, for_update=True)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        return user, any(admin_id != user.id for admin_id in admins)


def _is_active_admin(user: User) -> bool:
    return user.role == ADMIN_ROLE and user.is_active


class AccountExists(Conflict):
    """The email belongs to an account that is not an active administrator."""


class AdminBootstrap:
    """Creates the first administrator. An account that already exists is changed only on
    an operator's explicit request (`promote`), and then never keeps a password it did
    not set: whoever registered the email first must not become the administrator."""

    def __init__(self, uow: UnitOfWork, hasher: PasswordHasher) -> None:
        self.uow = uow
        self.users = UserRepository(uow)
        self.sessions = SessionRepository(uow)
        self.hasher = hasher

    async def create(self, email: str, password: str) -> str:
        """Create `email` as an administrator unless it has an account; say what was done.

        Raises AccountExists for an account that is not an active administrator: nothing
        about it changes (not its role, its active flag or its password).
        """
        async with self.uow.transaction():
            user = await self.users.load_by_email(email)
        if user is None:
            user = await self._insert(email, await self.hasher.hash(password))
            if user is None:
                return f"Created administrator {email}"
        if _is_active_admin(user):
            return f"{email} is already an administrator; nothing changed"
        state = "an inactive administrator" if user.role == ADMIN_ROLE else f"role {user.role}"
        raise AccountExists(
            f"{email} already has an account ({state}); nothing changed. To make it an "
            "active administrator with a new password, an operator runs: "
            f"python -m app.cli create-admin --email {email} --promote --reset-password"
        )

    async def promote(self, email: str, password: str) -> str:
        """Make `email` an active administrator whose password is `password`, creating the
        account if there is none. An existing account's sessions are all revoked, so
        nobody stays signed in with the password it had before."""
        hashed_password = await self.hasher.hash(password)
        async with self.uow.transaction():
            found = await self.users.load_by_email(email)
            user = None if found is None else await self.users.load(found.id, for_update=True)
            if user is not None:
                user.role = ADMIN_ROLE
                user.is_active = True
                user.hashed_password = hashed_password
                user.email_verified = True
                user.updated_at = now = utcnow()
                await self.users.save(user)
                await self.sessions.revoke_all(user.id, now)
                return f"Promoted {email} to active administrator with the new password"
        if await self._insert(email, hashed_password) is None:
            return f"Created administrator {email}"
        return await self.promote(email, password)  # created meanwhile: promote that one

    async def _insert(self, email: str, hashed_password: str) -> User | None:
        """Insert the administrator; if another process (a replica starting at the same
        time) inserted the email first, return that account instead."""
        try:
            async with self.uow.transaction():
                # The operator who runs create-admin vouches for the address.
                await self.users.save(
                    User(
                        email=email,
                        hashed_password=hashed_password,
                        role=ADMIN_ROLE,
                        email_verified=True,
                    )
                )
        except DuplicateKeyError:
            async with self.uow.transaction():
                existing = await self.users.load_by_email(email)
            if existing is None:  # inserted and deleted again in that instant
                raise
            return existing
        return None
