"""Create .env from .env.example with a fresh random JWT_SECRET; never overwrite .env."""

import secrets
import sys
from pathlib import Path

PLACEHOLDER = "JWT_SECRET=change-me"


def main() -> None:
    env = Path(".env")
    if env.exists():
        print(".env exists; left unchanged")
        return
    example = Path(".env.example").read_text(encoding="utf-8")
    if PLACEHOLDER not in example:
        sys.exit(f".env.example has no '{PLACEHOLDER}' line to fill in")
    # 48 random bytes from the operating system's CSPRNG, URL-safe encoded (64 characters).
    secret = secrets.token_urlsafe(48)
    env.write_text(example.replace(PLACEHOLDER, f"JWT_SECRET={secret}"), encoding="utf-8")
    env.chmod(0o600)
    print("Wrote .env with a new JWT_SECRET")


if __name__ == "__main__":
    main()
