"""docs/how-to/add-a-resource.md, followed literally on every database.

The page keeps the only copy of the code. Each block the reader acts on has an HTML comment
just above it, which MkDocs leaves out of sight:

- `<!-- file: PATH -->`: a new file, shown whole;
- `<!-- diff: PATH -->`: an edit of an existing file: lines starting with `+` are added, `-`
  removed, ` ` kept (context); a line starting with `@@` skips unchanged lines;
- `<!-- function: GLOB -->`: replaces the function of the same name in the one file that
  matches GLOB (the generated migration's `downgrade()`);
- `<!-- run -->`: commands, one a line; a `# "text"` comment is output the command must print.

The test renders a project, does what the blocks say in the page's order, reviews the
generated migration as the page tells the reader to, and ends with the page's `scripts/check`
(ruff, ruff format, mypy, alembic upgrade and check, the whole test suite).
"""

import re
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, DatabaseServer, render, run

PAGE = REPO_ROOT / "docs" / "how-to" / "add-a-resource.md"
MARKED_BLOCK = re.compile(
    r"^<!-- (?P<kind>[a-z]+)(?:: (?P<target>\S+))? -->\n"
    r"```(?P<language>[a-z]*)\n(?P<body>.*?)^```$",
    re.M | re.S,
)
KINDS = {"file", "diff", "function", "run"}
EXPECTED_OUTPUT = re.compile(r'#\s*"([^"]+)"')


@dataclass(frozen=True)
class Block:
    kind: str
    target: str | None
    body: str


def page_blocks(text: str) -> list[Block]:
    """The marked blocks of the page, in order; a marker that marks nothing fails."""
    blocks = [
        Block(match["kind"], match["target"], match["body"])
        for match in MARKED_BLOCK.finditer(text)
    ]
    assert len(blocks) == text.count("<!--"), "a marker is not right above a fenced block"
    for block in blocks:
        assert block.kind in KINDS, f"unknown marker kind {block.kind!r}"
        assert (block.target is None) == (block.kind == "run"), f"bad marker: {block}"
    return blocks


def apply_diff(source: str, diff: str) -> str:
    """`source` with each hunk of `diff` applied; each hunk's old lines must occur once."""
    hunks: list[list[str]] = [[]]
    for line in diff.splitlines():
        if line.startswith("@@"):
            hunks.append([])
        else:
            hunks[-1].append(line)
    for hunk in filter(None, hunks):
        old, new = [], []
        for line in hunk:
            sign, content = (line[:1] or " "), line[1:]
            assert sign in " +-", f"not a diff line: {line!r}"
            if sign != "+":
                old.append(content)
            if sign != "-":
                new.append(content)
        before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
        found = ("\n" + source).count("\n" + before)
        assert found == 1, f"the page's diff expects these lines once, found {found}:\n{before}"
        source = ("\n" + source).replace("\n" + before, "\n" + after, 1)[1:]
    return source


def replace_function(source: str, function: str) -> str:
    """`source` with its top-level function of the same name as `function` replaced."""
    name = re.match(r"(?:async )?def (\w+)\(", function)
    assert name, f"not a function: {function!r}"
    pattern = re.compile(rf"^(?:async )?def {name[1]}\(.*?(?=^\S|\Z)", re.M | re.S)
    found = pattern.findall(source)
    assert len(found) == 1, f"expected one `def {name[1]}`, found {len(found)}"
    trailing = found[0][len(found[0].rstrip()) :]
    return pattern.sub(lambda _: function.rstrip() + trailing, source)


def review_migration(revision: Path, database: str) -> None:
    """What the page tells the reader to check in the generated revision, before editing it."""
    text = revision.read_text(encoding="utf-8")
    upgrade, downgrade = text.split("\ndef upgrade() -> None:")[1].split("\ndef downgrade()")
    operations = sorted(set(re.findall(r"\b(?:op|batch_op)\.(\w+)\(", upgrade)))
    expected = ["create_index", "create_table"]
    assert operations == sorted(
        [*expected, "batch_alter_table"] if database == "sqlite" else expected
    ), text
    assert re.search(r'op\.create_table\(\s*"notes"', upgrade), text
    for part in ('ondelete="CASCADE"', "AutoString(length=5000)", '"ix_notes_owner_id_created_at"'):
        assert part in upgrade, f"{part} not in the generated upgrade():\n{text}"
    stamp = "mysql.DATETIME(fsp=6)" if database == "mysql" else "sa.DateTime()"
    assert f'sa.Column("created_at", {stamp}' in upgrade, text
    # The page replaces downgrade() because autogenerate drops the index first.
    assert "drop_index" in downgrade, text


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def database_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """(database, DATABASE_URL, TEST_DATABASE_URL): fresh databases, dropped afterwards."""
    database: str = request.param
    if database == "sqlite":
        yield database, "sqlite:///./app.db", "sqlite:///./test.db"
        return
    server = DatabaseServer(database)
    token = secrets.token_hex(4)
    names = [f"howto_{token}_app", f"howto_{token}_test"]
    urls = [server.create(name) for name in names]
    try:
        yield database, urls[0], urls[1]
    finally:
        for name in names:
            server.drop(name)


def test_the_page_marks_every_file_it_lists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    listing = re.search(r"The files you will touch:\n\n```text\n(.*?)```", text, re.S)
    assert listing, "the page lists no files"
    listed = [line.split()[0] for line in listing[1].splitlines()]
    targets = [b.target for b in page_blocks(text) if b.target is not None]
    # `<date>_<rev>` in the listing stands for any text; a target may be a glob.
    samples = {path: re.sub(r"<[^>]+>", "x", path) for path in listed}
    unmarked = [p for p, sample in samples.items() if not any(fnmatch(sample, t) for t in targets)]
    assert not unmarked, f"listed, but no block of the page makes them: {unmarked}"
    unlisted = [t for t in targets if not any(fnmatch(s, t) for s in samples.values())]
    assert not unlisted, f"made by the page, but not listed: {unlisted}"


def test_diffs_apply_only_to_the_lines_they_show() -> None:
    source = "a\nb\nc\nd\n"
    assert apply_diff(source, " a\n-b\n+B\n@@\n d\n+e") == "a\nB\nc\nd\ne\n"
    with pytest.raises(AssertionError, match="once, found 0"):
        apply_diff(source, " a\n-c\n+C")


def test_following_the_page_gives_a_working_resource(
    tmp_path: Path, database_urls: tuple[str, str, str]
) -> None:
    database, database_url, test_database_url = database_urls
    project = render(tmp_path / "demo-service", database=database)
    env = {"DATABASE_URL": database_url, "TEST_DATABASE_URL": test_database_url}
    run("uv sync --quiet", project)
    versions = project / "alembic" / "versions"
    revisions_before = set(versions.glob("*.py"))

    commands: list[str] = []
    results: list[subprocess.CompletedProcess[str]] = []
    for block in page_blocks(PAGE.read_text(encoding="utf-8")):
        if block.kind == "run":
            for line in block.body.splitlines():
                command = shlex.join(shlex.split(line, comments=True))
                if not command:
                    continue
                commands.append(command)
                results.append(run(command, project, env))
                for expected in EXPECTED_OUTPUT.findall(line):
                    printed = results[-1].stdout + results[-1].stderr
                    assert expected in printed, f"`{command}` did not print {expected!r}"
            continue
        assert block.target is not None
        if block.kind == "file":
            path = project / block.target
            assert not path.exists(), f"the page creates {block.target}, which exists"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.body, encoding="utf-8")
        elif block.kind == "diff":
            path = project / block.target
            edited = apply_diff(path.read_text(encoding="utf-8"), block.body)
            path.write_text(edited, encoding="utf-8")
        else:
            matches = list(project.glob(block.target))
            assert len(matches) == 1, f"{block.target} matches {matches}"
            (path,) = matches
            if path.parent == versions:
                review_migration(path, database)
            edited = replace_function(path.read_text(encoding="utf-8"), block.body)
            path.write_text(edited, encoding="utf-8")

    new_revisions = set(versions.glob("*.py")) - revisions_before
    assert [p.name.endswith("_add_notes.py") for p in new_revisions] == [True], new_revisions
    # The page ends with scripts/check: its pytest ran the page's tests, and all passed.
    assert commands[-1] == "scripts/check", commands
    report = results[-1].stdout
    assert re.search(r"^tests/test_notes\.py \.+ +\[", report, re.M), report[-3000:]
    summary = report.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
