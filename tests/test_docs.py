"""The documentation site builds without a warning and keeps up with the template.

The pages that list the Copier questions, the settings and the rendered files are checked
against copier.yml, `Settings` in the template's config.py and a real render, so a question,
setting or file added without its documentation fails here.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, render
from tests.test_audit import ACCEPTED

DOCS = REPO_ROOT / "docs"
CONFIG_PY = REPO_ROOT / "template" / "app" / "core" / "config.py"
RENDERED_CI = REPO_ROOT / "template" / ".github" / "workflows" / "ci.yml.jinja"
# A setting without a default must be given; the page says so with "none".
REQUIRED = object()
# Answers that render every optional file: the default database has the outage tests.
ALL_FILES_ANSWERS = {"project_name": "Demo Service", "database": "postgresql"}


def section(page: str, heading: str) -> str:
    """The text under `## heading`, up to the next heading of that level."""
    text = (DOCS / page).read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/{page} has no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows whose first cell is a `code` name, by that name, as their stripped cells."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def copier_questions() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((REPO_ROOT / "copier.yml").read_text(encoding="utf-8"))
    return {name: spec for name, spec in config.items() if not name.startswith("_")}


def test_every_copier_question_has_a_row_on_the_questions_page() -> None:
    questions = set(copier_questions())
    documented = set(table_rows(section("questions.md", "Summary")))
    assert questions, "no questions found in copier.yml"
    assert not questions - documented, f"missing from docs/questions.md: {questions - documented}"
    assert not documented - questions, f"not questions in copier.yml: {documented - questions}"


def test_questions_page_states_each_type_default_and_choice() -> None:
    rows = table_rows(section("questions.md", "Summary"))
    problems = []
    for name, spec in copier_questions().items():
        if name not in rows:
            continue  # reported by the test above
        kind, default, allowed = rows[name][:3]
        if not kind.startswith(f"`{spec['type']}`"):
            problems.append(f"{name}: type is {spec['type']}, page says {kind}")
        value = spec.get("default")
        if value is not None and "{{" not in str(value):
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            if f"`{shown}`" not in default:
                problems.append(f"{name}: default is {shown!r}, page says {default}")
        for choice in (spec.get("choices") or {}).values():
            if f"`{choice}`" not in allowed:
                problems.append(f"{name}: choice {choice!r} missing from {allowed}")
    assert not problems, "\n".join(problems)


def settings_defaults() -> dict[str, object]:
    """Each field of `Settings`, upper-cased, with its default (REQUIRED if it has none)."""
    tree = ast.parse(CONFIG_PY.read_text(encoding="utf-8"))
    settings = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    fields: dict[str, object] = {}
    for node in settings.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field":
            value = next((k.value for k in value.keywords if k.arg == "default"), None)
        fields[node.target.id.upper()] = REQUIRED if value is None else ast.literal_eval(value)
    assert fields, "no settings found: has config.py changed shape?"
    return fields


def shown_default(value: object) -> str:
    """How the configuration page writes a default: as the environment variable would be set."""
    if value is REQUIRED:
        return "none"
    if value is None or value == []:
        return "empty"
    if isinstance(value, list):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_every_setting_has_a_row_with_its_default_on_the_configuration_page() -> None:
    defaults = settings_defaults()
    rows = table_rows(section("configuration.md", "Settings of the service"))
    missing = set(defaults) - set(rows)
    assert not missing, f"settings missing from docs/configuration.md: {sorted(missing)}"
    stale = set(rows) - set(defaults)
    assert not stale, f"docs/configuration.md lists settings config.py lacks: {sorted(stale)}"
    wrong = [
        f"{name}: default {shown_default(value)}, page says {rows[name][0]}"
        for name, value in defaults.items()
        if not rows[name][0].startswith(shown_default(value))
    ]
    assert not wrong, "\n".join(wrong)


def tree_paths(text: str) -> set[str]:
    """File paths of a `tree`-style listing: one entry a line, directories ending in '/'."""
    lines = text.splitlines()
    paths, parents = set(), []
    for line in lines[1:]:  # the first line is the project folder itself
        match = re.match(r"^((?:│   |    )*)[├└]── (\S+)", line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match.group(1)) // 4
        name = match.group(2)
        del parents[depth:]
        if name.endswith("/"):
            parents.append(name)
        else:
            paths.add("".join(parents) + name)
    return paths


def test_getting_started_lists_every_rendered_file(tmp_path: Path) -> None:
    project = tmp_path / "demo-service"
    render(project, **ALL_FILES_ANSWERS)
    rendered = {
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(project).parts
    }
    page = section("getting-started.md", "What you get")
    listing = re.search(r"```text\n(.*?)```", page, re.S)
    assert listing, "docs/getting-started.md has no file tree under 'What you get'"
    documented = tree_paths(listing.group(1))
    assert not rendered - documented, f"rendered but not listed: {sorted(rendered - documented)}"
    assert not documented - rendered, f"listed but not rendered: {sorted(documented - rendered)}"


def test_every_accepted_vulnerability_is_explained_on_the_security_page() -> None:
    page = section("security.md", "Accepted vulnerabilities")
    ignored = re.findall(r"--ignore-vuln (\S+)", RENDERED_CI.read_text(encoding="utf-8"))
    accepted = [vulnerability for _package, vulnerability in ACCEPTED]
    assert ignored, "the rendered CI ignores no advisory; update this test and the page"
    unexplained = [vid for vid in [*ignored, *accepted] if vid not in page]
    assert not unexplained, f"not explained in docs/security.md: {unexplained}"


def test_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        # Material prints a banner about its end of life on every build otherwise.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "index.html").is_file()


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ("demo/\n├── a.py\n└── pkg/\n    └── b.py\n", {"a.py", "pkg/b.py"}),
        ("demo/\n├── x/\n│   └── y/\n│       └── z.py  note\n└── w.txt\n", {"x/y/z.py", "w.txt"}),
    ],
    ids=["nested-last", "deeper"],
)
def test_tree_listing_is_read_as_paths(listing: str, expected: set[str]) -> None:
    assert tree_paths(listing) == expected
