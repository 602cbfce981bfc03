"""Copier migration: join the template's new Alembic revisions with the team's own.

The template's revisions form one line (`0001`, `0002`, ...). A team's revision made on a
release has that release's newest template revision as its parent; the next release adds
template revisions on the same parent. After that update Alembic sees two heads, and
`alembic upgrade head` refuses to choose between them. This script, run by
`copier update` after the update (see `_migrations` in copier.yml), asks Alembic for the
heads and, when the template's newest revision is one of several, has Alembic write the
merge revision (`alembic merge heads`), which the team commits with the update. The
database then takes both lines in one `alembic upgrade head`.

It changes nothing when there is one head, when none of the heads is the template's (a
team's own branches are its business), or when the project has no Alembic. When it cannot
ask Alembic (no `uv`, or a file left conflicted by the update), it says what to run by hand
and leaves the update as it is.

Usage (from the project's root): python merge_alembic_heads.py
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The template's own revisions are numbered; the team's have Alembic's random ids.
TEMPLATE_REVISION = re.compile(r"^\d{4}$")
MESSAGE = "merge the template's revisions"
BY_HAND = (
    "Join them by hand once the update's conflicts are resolved:\n"
    f'  uv run alembic merge heads -m "{MESSAGE}"\n'
)


def alembic(uv: str, *args: str) -> subprocess.CompletedProcess[str]:
    # `uv run` brings the project's environment up to date with the updated pyproject.toml
    # first; the commands read the revision files only and never touch a database.
    return subprocess.run(
        [uv, "run", "--quiet", "alembic", *args], capture_output=True, text=True, check=False
    )


def heads(output: str) -> list[str]:
    """The revision ids in the output of `alembic heads` (`0005 (head)`, one a line)."""
    return [line.split()[0] for line in output.splitlines() if line.strip().endswith("(head)")]


def main() -> int:
    if not Path("alembic.ini").is_file() or not Path("alembic", "versions").is_dir():
        return 0
    uv = shutil.which("uv")
    if uv is None:
        print(f"merge_alembic_heads: no uv, so the Alembic heads were not checked.\n{BY_HAND}")
        return 0
    listed = alembic(uv, "heads")
    if listed.returncode != 0:
        print(
            "merge_alembic_heads: `alembic heads` failed, so the heads were not checked:\n"
            f"{listed.stderr.strip()[-2000:]}\n{BY_HAND}"
        )
        return 0
    found = heads(listed.stdout)
    if len(found) < 2 or not any(TEMPLATE_REVISION.match(head) for head in found):
        return 0
    merged = alembic(uv, "merge", "heads", "-m", MESSAGE)
    if merged.returncode != 0:
        print(f"merge_alembic_heads: `alembic merge heads` failed:\n{merged.stderr.strip()}")
        print(BY_HAND)
        return 0
    written = [
        os.path.relpath(path)
        for path in re.findall(r"Generating (\S+\.py)", merged.stdout + merged.stderr)
    ]
    print(
        f"merge_alembic_heads: Alembic had {len(found)} heads ({', '.join(found)}); "
        f"joined them in {', '.join(written) or 'a merge revision'}. Commit it with the update."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
