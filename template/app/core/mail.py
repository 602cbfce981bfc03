"""Outgoing email: messages rendered from the templates in app/email/, sent by SMTP or
written to the log, retried with backoff, never raising to the caller."""

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app.core import project
from app.core.config import Settings

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "email"
# Seconds one SMTP exchange may take (connect, TLS, login, the message) before it fails.
SMTP_TIMEOUT_SECONDS = 15.0
# Each retry waits this many times longer than the one before.
BACKOFF_FACTOR = 5
RETRIES = 3


@dataclass(frozen=True, slots=True)
class Email:
    to: str
    subject: str
    text: str
    html: str


def recipient_domain(address: str) -> str:
    """What the logs say of a recipient: the domain of the address, never the address."""
    return address.rpartition("@")[2] or "?"


class EmailTemplates:
    """The project's email templates, each a plain-text and an HTML part: `NAME.txt` and
    `NAME.html` in app/email/ (the HTML parts extend `layout.html`).

    Jinja2 with `${ value }` for values and `<% if ... %>` for statements: brace-free
    delimiters, so that the files never read as leftovers of the template this project
    was generated from. Values are escaped in the HTML part; a value the templates do not
    get is an error, not an empty string.
    """

    def __init__(self, directory: Path = TEMPLATES) -> None:
        self.environment = Environment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            variable_start_string="${",
            variable_end_string="}",
            block_start_string="<%",
            block_end_string="%>",
            comment_start_string="<%#",
            comment_end_string="#%>",
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, to: str, subject: str, **values: Any) -> Email:
        values = {"project": project.NAME, "subject": subject, **values}
        return Email(
            to=to,
            subject=subject,
            text=self.environment.get_template(f"{name}.txt").render(values),
            html=self.environment.get_template(f"{name}.html").render(values),
        )


class Transport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    """One SMTP connection per message: sending is rare, and a connection kept open
    would only time out between messages."""

    def __init__(self, settings: Settings) -> None:
        if settings.smtp_host is None:
            raise ValueError("SMTP delivery needs SMTP_HOST")
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.tls = settings.smtp_tls
        self.username = settings.smtp_username
        self.password = settings.smtp_password

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            local_hostname=await asyncio.to_thread(_own_name),
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=None if self.password is None else self.password.get_secret_value(),
            use_tls=self.tls == "ssl",
            start_tls=self.tls == "starttls",
            timeout=SMTP_TIMEOUT_SECONDS,
        )


class LogTransport:
    """Writes each message to the log instead of sending it.

    With `show_content` (local and test only) the log holds the plain-text part, links
    included, so that a developer can follow them without a mail server. Otherwise it
    holds the subject and the recipient's domain: in production a link in the log would
    let anyone who reads the log reset a password.
    """

    def __init__(self, *, show_content: bool) -> None:
        self.show_content = show_content

    async def send(self, message: EmailMessage) -> None:
        recipient = str(message["To"])
        subject = str(message["Subject"])
        if not self.show_content:
            logger.info(
                "Email not sent (EMAIL_DELIVERY=log) to someone at %s: %r; content withheld",
                recipient_domain(recipient),
                subject,
            )
            return
        body = message.get_body(("plain",))
        text = str(body.get_content()) if isinstance(body, MIMEPart) else ""
        logger.info("Email not sent (EMAIL_DELIVERY=log) to %s: %r\n%s", recipient, subject, text)


def transport_for(settings: Settings) -> Transport:
    if settings.email_delivery == "smtp":
        return SmtpTransport(settings)
    return LogTransport(show_content=not settings.is_production)


class Mailer:
    """Builds each message and delivers it, retrying a failed delivery RETRIES times with
    backoff. Failures are logged with the recipient's domain alone."""

    def __init__(self, settings: Settings, transport: Transport | None = None) -> None:
        self.transport = transport or transport_for(settings)
        name, address = parseaddr(settings.email_from)
        self.sender = formataddr((name or project.NAME, address))
        self.sender_domain = recipient_domain(address)
        first = settings.email_retry_seconds
        self.retry_delays: Sequence[float] = [first * BACKOFF_FACTOR**n for n in range(RETRIES)]
        self.templates = EmailTemplates()

    def message(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = email.to
        message["Subject"] = email.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.sender_domain)
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    async def deliver(self, email: Email) -> bool:
        """Send `email`; say whether it went. Never raises for a failed delivery."""
        message = self.message(email)
        domain = recipient_domain(email.to)
        for attempt, delay in enumerate([*self.retry_delays, None], 1):
            try:
                await self.transport.send(message)
                return True
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                if delay is None:
                    logger.error(
                        "Email to someone at %s not sent after %d attempts: %s",
                        domain,
                        attempt,
                        _reason(exc),
                    )
                    return False
                logger.warning(
                    "Email to someone at %s failed (attempt %d, next in %gs): %s",
                    domain,
                    attempt,
                    delay,
                    _reason(exc),
                )
                await asyncio.sleep(delay)
        return False  # not reached: the last attempt returns


@cache
def _own_name() -> str:
    # The name this client greets the server with (EHLO). Looked up once, in a thread:
    # the lookup may ask DNS, which must not stall the event loop.
    return socket.getfqdn()


def _reason(error: Exception) -> str:
    # The class and the SMTP reply code: a server's reply text may quote the address.
    code = getattr(error, "code", None)
    return type(error).__name__ + (f" {code}" if isinstance(code, int) and code > 0 else "")
