"""Copier migration: carry a project's changes to `scripts/prestart.sh` over to `scripts/prestart`.

Copier deletes every file that the new template version no longer ships, customised or
not, and renders files under a new name from scratch. So when the template renames
`scripts/prestart.sh` to `scripts/prestart` (the name the Dockerfile runs), a team's edits
to the old script would silently disappear from the working tree. This script, run by
`copier update` after the update (see `_migrations` in copier.yml), puts them back: it
three-way merges the team's old file (from HEAD: `copier update` refuses a dirty tree, so
HEAD is the project as it was), the template's old file (from the template's own history)
and the template's new file, like Copier does for every other file. Overlapping edits get
Copier's conflict markers and are recorded as a merge conflict, so
`git diff --diff-filter=U` lists them.

It does nothing unless the update just removed `scripts/prestart.sh`: on a project that
never had that file, or whose own `scripts/prestart.sh` the template never shipped (Copier
leaves such a file alone), it exits at once.

Usage (from the project's root): python carry_over_prestart.py TEMPLATE_CLONE
with VERSION_FROM in the environment, as Copier sets it for migrations.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

OLD = "scripts/prestart.sh"
NEW = "scripts/prestart"
# copier.yml's `_subdirectory`: where the rendered files live in the template repository.
TEMPLATE_SUBDIRECTORY = "template"
# The labels Copier itself gives the three sides of an update conflict.
LABELS = ("before updating", "last update", "after updating")


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> bytes | None:
    """Output of a git command, or None when it fails (a missing file, say)."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


def merge(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, bool]:
    """Three-way merge with `git merge-file`; the result and whether it has conflicts."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder, name) for name in ("ours", "base", "theirs")]
        for path, content in zip(paths, (ours, base, theirs), strict=True):
            path.write_bytes(content)
        labels = [argument for label in LABELS for argument in ("-L", label)]
        result = subprocess.run(
            ["git", "merge-file", "-p", *labels, *map(str, paths)],
            capture_output=True,
            check=False,
        )
    if result.returncode < 0 or result.returncode > 127:
        sys.exit(f"git merge-file failed: {result.stderr.decode(errors='replace')}")
    return result.stdout, result.returncode > 0


def record_conflict(path_in_repo: str, mode: str, ours: bytes, base: bytes, theirs: bytes) -> None:
    """Mark the file unmerged in the index, as a failed merge would, so tools see it."""
    entries = [f"0 {'0' * 40}\t{path_in_repo}"]
    for stage, content in ((1, base), (2, ours), (3, theirs)):
        blob = git("hash-object", "-w", "--stdin", stdin=content)
        if blob is None:
            return
        entries.append(f"{mode} {blob.decode().strip()} {stage}\t{path_in_repo}")
    git("update-index", "--index-info", stdin="\n".join(entries).encode() + b"\n")


def main() -> None:
    template_clone = Path(sys.argv[1])
    version_from = os.environ.get("VERSION_FROM", "")
    old, new = Path(OLD), Path(NEW)
    if old.exists():
        return  # the update did not remove it: the team's own file, or nothing was renamed
    prefix = (git("rev-parse", "--show-prefix") or b"").decode().strip()
    ours = git("show", f"HEAD:{prefix}{OLD}")
    if ours is None:
        return  # the project had no scripts/prestart.sh before this update
    listing = (git("ls-tree", "HEAD", "--", f"{prefix}{OLD}") or b"100755").decode()
    mode = listing.split()[0]

    base = b""
    if version_from:
        shipped = git("show", f"{version_from}:{TEMPLATE_SUBDIRECTORY}/{OLD}", cwd=template_clone)
        base = shipped if shipped is not None else b""
    # If the new version ships no scripts/prestart, there is no template change to merge.
    theirs = new.read_bytes() if new.exists() else base

    merged, conflicted = merge(ours, base, theirs)
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_bytes(merged)
    new.chmod(int(mode[-3:], 8))
    if conflicted:
        record_conflict(f"{prefix}{NEW}", mode, ours, base, theirs)
        print(f"{OLD} is now {NEW}; your changes conflict with the template's: resolve them")
    elif merged != theirs:
        print(f"{OLD} is now {NEW}; your changes to it were carried over")


if __name__ == "__main__":
    main()
