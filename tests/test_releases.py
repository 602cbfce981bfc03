"""The record of releases (releases.toml) agrees with CHANGELOG.md and with git history.

Tags do not travel with every clone; releases.toml does. The upgrade test
(tests/test_upgrade.py) tags the recorded commits in a clone and updates from them.
"""

import re
import subprocess
import tomllib
from dataclasses import dataclass
from datetime import date

import pytest
from packaging.version import InvalidVersion, Version

from tests.support import REPO_ROOT

RELEASES_FILE = REPO_ROOT / "releases.toml"
# `## [0.1.0] - 2026-11-26`; `## [Unreleased]` has no date.
CHANGELOG_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\S+))?\s*$", re.M)


@dataclass(frozen=True)
class Release:
    version: str
    commit: str
    date: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def releases_problems(text: str) -> tuple[list[Release], list[str]]:
    """The releases recorded in `text` (releases.toml), and what is wrong with them."""
    try:
        entries = tomllib.loads(text).get("release", [])
    except tomllib.TOMLDecodeError as exc:
        return [], [f"releases.toml is not TOML: {exc}"]
    releases, problems = [], []
    for number, entry in enumerate(entries, start=1):
        if set(entry) != {"version", "commit", "date"}:
            problems.append(f"release #{number} needs exactly version, commit, date: {entry}")
            continue
        release = Release(**{key: str(value) for key, value in entry.items()})
        try:
            Version(release.version)
        except InvalidVersion:
            problems.append(f"release #{number}: {release.version!r} is not a PEP 440 version")
        if not re.fullmatch(r"[0-9a-f]{40}", release.commit):
            problems.append(f"{release.version}: commit must be 40 hex digits: {release.commit}")
        try:
            date.fromisoformat(release.date)
        except ValueError:
            problems.append(f"{release.version}: date must be YYYY-MM-DD: {release.date}")
        releases.append(release)
    if not releases and not problems:
        problems.append("releases.toml records no release")
    return releases, problems


def changelog_releases(text: str) -> dict[str, str | None]:
    """Released versions in CHANGELOG.md, newest first, with their dates."""
    return {
        match["version"]: match["date"]
        for match in CHANGELOG_HEADING.finditer(text)
        if match["version"] != "Unreleased"
    }


def record_problems(releases: list[Release], changelog: str) -> list[str]:
    """Where the record and the CHANGELOG disagree."""
    problems = []
    in_changelog = changelog_releases(changelog)
    recorded = {release.version: release.date for release in releases}
    for version, day in in_changelog.items():
        if version not in recorded:
            problems.append(f"CHANGELOG.md has {version}, releases.toml does not")
        elif recorded[version] != day:
            problems.append(f"{version}: dated {day} in CHANGELOG.md, {recorded[version]} here")
    problems += [
        f"releases.toml has {version}, CHANGELOG.md does not"
        for version in recorded
        if version not in in_changelog
    ]
    versions = [Version(release.version) for release in releases]
    if versions != sorted(versions) or len(set(versions)) != len(versions):
        problems.append(f"releases must be listed oldest first, once each: {versions}")
    return problems


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


def recorded_releases() -> list[Release]:
    releases, problems = releases_problems(RELEASES_FILE.read_text(encoding="utf-8"))
    assert problems == []
    return releases


def test_the_record_is_well_formed() -> None:
    recorded_releases()


def test_the_record_and_the_changelog_name_the_same_releases() -> None:
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert record_problems(recorded_releases(), changelog) == []


def test_each_recorded_commit_is_the_release_its_changelog_names() -> None:
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.fail("a shallow clone lacks the release commits: run `git fetch --unshallow`")
    for release in recorded_releases():
        found = git("cat-file", "-e", f"{release.commit}^{{commit}}")
        assert found.returncode == 0, f"{release.version}: no commit {release.commit}"
        changelog = git("show", f"{release.commit}:CHANGELOG.md").stdout
        newest = next(iter(changelog_releases(changelog)), None)
        assert newest == release.version, (
            f"{release.commit} is not {release.version}: its CHANGELOG's newest release is {newest}"
        )
        tagged = git("rev-parse", "--verify", "--quiet", f"refs/tags/{release.tag}^{{commit}}")
        if tagged.returncode == 0:  # where the tag travelled, it marks the same commit
            assert tagged.stdout.strip() == release.commit, f"{release.tag} is elsewhere"


GOOD_RECORD = """
[[release]]
version = "0.1.0"
commit = "d3c99e8c959b66ead6977b45d0d4c47171e25c7d"
date = "2026-11-26"
"""
GOOD_CHANGELOG = "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-11-26\n\nFirst.\n"


def test_the_checks_find_a_release_missing_from_either_side() -> None:
    releases, problems = releases_problems(GOOD_RECORD)
    assert problems == []
    assert record_problems(releases, GOOD_CHANGELOG) == []
    newer = GOOD_CHANGELOG.replace("## [0.1.0]", "## [0.2.0] - 2026-12-01\n\n## [0.1.0]")
    assert record_problems(releases, newer) == ["CHANGELOG.md has 0.2.0, releases.toml does not"]
    assert record_problems(releases, GOOD_CHANGELOG.replace("2026-11-26", "2026-11-27")) == [
        "0.1.0: dated 2026-11-27 in CHANGELOG.md, 2026-11-26 here"
    ]
    assert record_problems(releases, "# Changelog\n\n## [Unreleased]\n") == [
        "releases.toml has 0.1.0, CHANGELOG.md does not"
    ]


def test_the_checks_refuse_a_malformed_record() -> None:
    assert releases_problems("")[1] == ["releases.toml records no release"]
    bad = GOOD_RECORD.replace('"0.1.0"', '"first"').replace("d3c99e8c", "zz")
    assert releases_problems(bad)[1] == [
        "release #1: 'first' is not a PEP 440 version",
        "first: commit must be 40 hex digits: zz959b66ead6977b45d0d4c47171e25c7d",
    ]
    twice = GOOD_RECORD + GOOD_RECORD
    releases, problems = releases_problems(twice)
    assert problems == []
    assert record_problems(releases, GOOD_CHANGELOG) == [
        "releases must be listed oldest first, once each: [<Version('0.1.0')>, <Version('0.1.0')>]"
    ]
