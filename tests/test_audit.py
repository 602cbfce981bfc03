"""Every variant's resolved dependencies, checked against PyPI's vulnerability records.

pip-audit cannot work here (PyPI's per-version JSON answers 404, so it skips every package
and still reports success). PyPI's per-project JSON does answer and lists the known
vulnerabilities of the latest release, so a package is audited when it is at its latest
release; one held below it is reported as not audited, never counted as clean.
"""

import json
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from tests.support import Project, run

# Vulnerabilities that no release fixes and that a choice of answer brings in.
# Each is explained in docs/security.md; the test fails if one appears that is not here.
ACCEPTED = {
    # python-jose depends on ecdsa unconditionally; the Minerva timing attack concerns
    # ECDSA signing, which a service signing its tokens with HMAC (HS256) never performs.
    ("ecdsa", "CVE-2024-23342"),
}


# A failed look-up (name resolution, a reset connection, a 5xx) is retried with growing
# pauses before the test gives up; a package PyPI does not know (404) fails at once.
RETRY_PAUSES = (1, 2, 4, 8, 16, 30)


def fetch_json(url: str) -> dict:
    for pause in (*RETRY_PAUSES, None):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code < 500 or pause is None:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if pause is None:
                raise
        time.sleep(pause)
    raise AssertionError("unreachable")


@cache
def pypi_record(name: str) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """Latest version and its vulnerabilities (each as its id and aliases)."""
    data = fetch_json(f"https://pypi.org/pypi/{name}/json")
    vulnerabilities = tuple(
        (v["id"], *v.get("aliases", [])) for v in data.get("vulnerabilities", [])
    )
    return data["info"]["version"], vulnerabilities


def test_resolved_dependencies_have_no_known_vulnerabilities(project: Project) -> None:
    listed = run("uv pip list --format json --python .venv/bin/python", project.path).stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert "fastapi" in installed, listed
    with ThreadPoolExecutor(max_workers=4) as pool:
        records = dict(zip(installed, pool.map(pypi_record, installed), strict=True))

    vulnerable, not_audited, accepted = [], [], []
    for name, version in sorted(installed.items()):
        latest, vulnerabilities = records[name]
        if version != latest:
            not_audited.append(f"{name} {version} (latest {latest})")
            continue
        for ids in vulnerabilities:
            if any((name, vid) in ACCEPTED for vid in ids):
                accepted.append(f"{name} {version}: {', '.join(ids)}")
            else:
                vulnerable.append(f"{name} {version}: {', '.join(ids)}")

    print(f"\n{project.variant.name}: audited {len(installed) - len(not_audited)} packages")
    for line in accepted:
        print(f"  accepted (see docs/security.md): {line}")
    if not_audited:
        message = f"{project.variant.name}: not audited (below latest): " + "; ".join(not_audited)
        print(f"  {message}")
        warnings.warn(message, stacklevel=1)
    assert not vulnerable, "known vulnerabilities:\n" + "\n".join(vulnerable)
