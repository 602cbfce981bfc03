"""Rules that must hold however many worker processes serve the requests.

Each check sends its requests at once, from as many threads over as many connections, so
the kernel spreads them over the workers; the state the rules need lives in the database.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from benchkit.report import Check
from benchkit.shell import API, JSON_TYPE, HttpRequest, expect, http, login_request

# The roles of a default rendering, least to most privileged.
FIRST_ROLE, ADMIN_ROLE = "user", "admin"
DEMOTION_ROUNDS = 5


def concurrently(base_url: str, requests: Sequence[HttpRequest]) -> list[int]:
    """Send every request at the same moment, each over its own connection; the statuses."""
    start = threading.Barrier(len(requests))

    def send(request: HttpRequest) -> int:
        start.wait()
        return http(base_url, request)[0]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def user_id(base_url: str, token: str) -> str:
    me = expect(base_url, HttpRequest("GET", f"{API}/users/me", token=token), [200])
    return str(me["id"])


def set_role(user: str, role: str, token: str) -> HttpRequest:
    body = json.dumps({"role": role})
    return HttpRequest("PATCH", f"{API}/users/{user}", body, JSON_TYPE, token)


def check_login_throttling(
    base_url: str, email: str, password: str, max_failures: int, workers: int
) -> Check:
    """Failures counted by every worker lock the account for all of them."""
    failures = max_failures + 3
    wrong = concurrently(base_url, [login_request(email, "wrong-" + password)] * failures)
    right = concurrently(base_url, [login_request(email, password)] * 4)
    met = set(wrong) <= {401, 429} and right == [429] * 4
    detail = (
        f"{workers} worker(s): {failures} wrong passwords at once gave "
        f"{dict(sorted(Counter(wrong).items()))}; then the right password, 4 at once, gave "
        f"{dict(sorted(Counter(right).items()))} (429 expected for all 4)"
    )
    return Check("login throttling holds across workers", met, detail)


def check_last_administrator(
    base_url: str, first_email: str, second_email: str, login: Callable[[str], str], workers: int
) -> Check:
    """Two administrators demoting each other at once: one succeeds, one gets 409.

    A change of role ends the changed user's sessions, so both sign in afresh each round.
    """
    emails = (first_email, second_email)
    first, second = (user_id(base_url, login(email)) for email in emails)
    outcomes: list[list[int]] = []
    for _ in range(DEMOTION_ROUNDS):
        # Make both administrators again, through whichever one still is.
        tokens = [login(email) for email in emails]
        for user in (first, second):
            for token in tokens:
                status, _ = http(base_url, set_role(user, ADMIN_ROLE, token))
                if status == 200:
                    break
        first_token, second_token = (login(email) for email in emails)
        demotions = [set_role(second, FIRST_ROLE, first_token)]
        demotions.append(set_role(first, FIRST_ROLE, second_token))
        outcomes.append(sorted(concurrently(base_url, demotions)))
    # Each account as the administrator that remains sees it.
    admins = 0
    tokens = [login(email) for email in emails]
    for user in (first, second):
        for token in tokens:
            status, body = http(base_url, HttpRequest("GET", f"{API}/users/{user}", token=token))
            if status == 200:
                admins += body["role"] == ADMIN_ROLE and body["is_active"]
                break
    met = all(o == [200, 409] for o in outcomes) and admins == 1
    detail = (
        f"{workers} worker(s): {DEMOTION_ROUNDS} rounds of two administrators demoting each "
        f"other at once gave {outcomes} ([200, 409] expected each time); "
        f"{admins} active administrator(s) afterwards (1 expected)"
    )
    return Check("last administrator holds across workers", met, detail)
