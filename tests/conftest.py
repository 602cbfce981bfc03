"""Fixtures of the template tests: a rendered, installed project per variant."""

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import TIMINGS, VARIANTS, DatabaseServer, Project, Variant, run


@pytest.fixture(scope="session", params=VARIANTS, ids=[v.name for v in VARIANTS])
def project(request: pytest.FixtureRequest, copie_session: Any) -> Iterator[Project]:
    """Render the variant with Copier, install it with uv, give it fresh databases."""
    variant: Variant = request.param
    started = time.perf_counter()
    result = copie_session.copy(extra_answers=variant.all_answers)
    assert result.exit_code == 0, result.exception
    TIMINGS[variant.name]["render"] = time.perf_counter() - started
    path = Path(result.project_dir)
    run("uv sync --quiet", path, timing=(variant.name, "install"))

    created: list[str] = []
    server = None if variant.database == "sqlite" else DatabaseServer(variant.database)
    token = secrets.token_hex(4)
    if server is None:
        test_url, app_url = "sqlite:///./test.db", "sqlite:///./app.db"
    else:
        names = [f"tmpl_{token}_test", f"tmpl_{token}_app"]
        test_url, app_url = (server.create(name) for name in names)
        created += names
    try:
        yield Project(variant, path, test_url, app_url)
    finally:
        for name in created:
            assert server is not None
            server.drop(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    steps = sorted({step for times in TIMINGS.values() for step in times})
    terminalreporter.section("per-variant timings (seconds)")
    terminalreporter.write_line(f"{'variant':40}" + "".join(f"{s:>13}" for s in steps))
    for name, times in TIMINGS.items():
        cells = "".join(f"{times[s]:>13.1f}" if s in times else f"{'-':>13}" for s in steps)
        terminalreporter.write_line(f"{name:40}{cells}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # With pytest-xdist's --dist loadgroup, every test of one variant runs on one worker,
    # so each variant is rendered and installed once.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("project"), Variant):
            item.add_marker(pytest.mark.xdist_group(callspec.params["project"].name))


_REPORTED: set[tuple[str, str, float]] = set()


@pytest.fixture(autouse=True)
def _report_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hand new timings to the test's report, so they reach the xdist controller."""
    yield
    for name, steps in TIMINGS.items():
        for step, seconds in steps.items():
            if (name, step, seconds) not in _REPORTED:
                _REPORTED.add((name, step, seconds))
                request.node.user_properties.append(("timing", (name, step, seconds)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == "timing":
            name, step, seconds = value
            TIMINGS[name][step] = seconds
