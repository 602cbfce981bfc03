"""Domain errors. main.py maps each to an HTTP status; services know nothing of HTTP."""


class DomainError(Exception):
    message = "Request failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class NotFound(DomainError):
    message = "Not found"


class Conflict(DomainError):
    message = "Conflict"


class EmailTaken(Conflict):
    message = "A user with this email already exists"


class LastAdministrator(Conflict):
    message = "The last active administrator cannot be demoted, deactivated or deleted"


class NotAuthenticated(DomainError):
    message = "Not authenticated"


class InvalidCredentials(NotAuthenticated):
    message = "Incorrect email or password"


class PermissionDenied(DomainError):
    message = "Not enough privileges"


class TooManyAttempts(DomainError):
    message = "Too many failed login attempts; try again later"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__()
        self.retry_after_seconds = retry_after_seconds


class TooManyRegistrations(TooManyAttempts):
    message = "Too many registrations from this address; try again later"


class InvalidRefreshToken(NotAuthenticated):
    # One answer for every refresh token that does not work, whatever the reason.
    message = "Invalid or expired refresh token"


class InvalidInput(DomainError):
    message = "Invalid request"


class InvalidLinkToken(InvalidInput):
    # One answer for every token from an email that does not work, whatever the reason.
    message = "Invalid or expired link; request a new one"


class EmailNotVerified(PermissionDenied):
    message = "Verify your email address first: follow the link emailed to you"
