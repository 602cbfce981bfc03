"""migrations/merge_registries.py: the conflicts it resolves by meaning, and those it leaves.

tests/test_upgrade.py runs it for real, inside `copier update` from 0.1.0; these cases pin
down each rule on small files.
"""

import importlib.util
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import REPO_ROOT


def load() -> ModuleType:
    path = REPO_ROOT / "migrations" / "merge_registries.py"
    spec = importlib.util.spec_from_file_location("merge_registries", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


registries = load()


def conflict(common_before: str, ours: str, theirs: str, common_after: str = "") -> str:
    return (
        textwrap.dedent(common_before)
        + "<<<<<<< before updating\n"
        + textwrap.dedent(ours)
        + "=======\n"
        + textwrap.dedent(theirs)
        + ">>>>>>> after updating\n"
        + textwrap.dedent(common_after)
    )


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def test_dependencies_keep_the_teams_addition_and_drop_what_the_template_removed() -> None:
    merged = registries.merge_requirements(
        lines('    "python-json-logger>=4.2,<5",\n    "tenacity>=9,<10"\n'),
        lines('    "orjson>=3.13,<4",\n    # metrics\n    "prometheus-client>=0.26,<0.27"\n'),
        {"python-json-logger", "fastapi"},
    )
    text = "dependencies = [\n" + "".join(merged) + "]\n"
    assert tomllib.loads(text)["dependencies"] == [
        "orjson>=3.13,<4",
        "prometheus-client>=0.26,<0.27",
        "tenacity>=9,<10",
    ]


def test_dependencies_keep_a_comment_of_the_team() -> None:
    merged = registries.merge_requirements(
        lines('    # retries for the ledger API\n    "tenacity>=9,<10",\n'),
        lines('    "orjson>=3.13,<4",\n'),
        set(),
    )
    assert "".join(merged) == (
        '    "orjson>=3.13,<4",\n    # retries for the ledger API\n    "tenacity>=9,<10",\n'
    )


def test_dependencies_leave_a_conflict_with_anything_else_in_it() -> None:
    assert (
        registries.merge_requirements(
            lines('    "tenacity>=9,<10",\n]\nname = "x"\n'), lines('    "orjson",\n'), set()
        )
        is None
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with the modules the registries import from."""
    models = tmp_path / "app" / "models"
    models.mkdir(parents=True)
    for name, source in {
        "__init__.py": "",
        "item.py": "class Item: ...\n",
        "note.py": "class Note: ...\n",
        "session.py": "class AuthSession: ...\n",
        "user.py": "class User: ...\n",  # no LoginThrottle any more
    }.items():
        (models / name).write_text(source)
    routes = tmp_path / "app" / "api" / "routes"
    routes.mkdir(parents=True)
    for name in ("__init__", "auth", "items", "reports", "sessions", "users"):
        (routes / f"{name}.py").write_text("router = None\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tables_keep_the_teams_model_and_lose_the_one_the_template_removed(
    project: Path,
) -> None:
    text = conflict(
        '"""Tables."""\n\nfrom app.models.item import Item\n',
        """\
        from app.models.note import Note
        from app.models.user import LoginThrottle, User

        __all__ = ["Item", "LoginThrottle", "Note", "User"]
        """,
        """\
        from app.models.session import AuthSession
        from app.models.user import User

        __all__ = [
            "AuthSession",
            "Item",
            "User",
        ]
        """,
    )
    merged, kept = registries.resolve_python(text)
    assert kept == ["Note"]
    assert merged == textwrap.dedent(
        '''\
        """Tables."""

        from app.models.item import Item
        from app.models.note import Note
        from app.models.session import AuthSession
        from app.models.user import User

        __all__ = [
            "AuthSession",
            "Item",
            "Note",
            "User",
        ]
        '''
    )


def test_routers_keep_the_teams_router_beside_the_templates(project: Path) -> None:
    text = conflict(
        "from fastapi import APIRouter\n\n",
        "from app.api.routes import auth, items, reports, users\n",
        "from app.api.routes import auth, items, sessions, users\n",
        """\

        api_router = APIRouter(prefix="/api/v1")
        api_router.include_router(auth.router)
        api_router.include_router(users.router)
        <<<<<<< before updating
        api_router.include_router(items.router)
        api_router.include_router(reports.router)
        =======
        api_router.include_router(sessions.router)
        api_router.include_router(items.router)
        >>>>>>> after updating
        """,
    )
    merged, kept = registries.resolve_python(text)
    assert kept == ["reports", "reports.router"]
    assert "from app.api.routes import auth, items, reports, sessions, users\n" in merged
    assert merged.endswith(
        "api_router.include_router(sessions.router)\n"
        "api_router.include_router(items.router)\n"
        "api_router.include_router(reports.router)\n"
    )


@pytest.mark.parametrize(
    "ours",
    ["def helper() -> None:\n    pass\n", "from app.models.note import Note as Memo\n"],
    ids=["code", "an import alias"],
)
def test_anything_else_in_a_conflict_is_left_to_the_team(project: Path, ours: str) -> None:
    text = conflict(
        "from app.models.item import Item\n", ours, "from app.models.user import User\n"
    )
    assert registries.resolve_python(text) is None


def test_malformed_markers_are_left_alone() -> None:
    assert registries.segments("<<<<<<< before updating\na\n>>>>>>> after updating\n") is None
    assert registries.segments("a\n=======\nb\n") == [["a\n", "=======\n", "b\n"]]
