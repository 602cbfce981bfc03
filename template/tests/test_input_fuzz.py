"""Hostile text in any input of any endpoint never gets a server error, nor leaks a secret.

The operations come from the app's own OpenAPI document, so this module covers every
variant of the template (each database, with or without the example resource, any list
of roles) and every endpoint added later, unchanged. A request starts valid, signed in
as the user or the administrator; then hostile text replaces one or more of its inputs
(a path, query, header, form or JSON field, or an extra one): NUL, a lone surrogate,
text beyond the field's length, astral and right-to-left characters, whitespace,
ordinary random text, or in JSON a value of the wrong type. The answer must not be a
5xx (a 503 with Retry-After is the database asking for a retry), and neither the answer
nor the warnings and errors logged may carry a password hash, a token, the password or
the signing secret.

Hypothesis draws such requests at random; a sweep also sends each kind of hostile text
to each input once, so that no input depends on luck.
"""

import functools
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from hypothesis import HealthCheck, assume, find, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.core.config import Settings
from tests.conftest import PASSWORD, TEST_SECRET, MakeUser, SignedIn, make_settings

# Generous limits, so that hostile logins and registrations reach the code behind them
# instead of a 429. (A 429 is still a fine answer.)
FUZZ_LIMITS: dict[str, object] = {
    "login_max_failures": 10_000,
    "login_max_failures_per_address": 10_000,
    "login_max_failures_per_account": 10_000,
    "register_max_per_address_per_hour": 10_000,
}
MAX_EXAMPLES = 500
# Reproducible in CI: the same examples on every run, and nothing saved between runs.
FUZZ = hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

Schema = dict[str, Any]
T = TypeVar("T")
HTTP_METHODS = ("get", "put", "post", "patch", "delete")
# Operations that end the caller's session would make the examples after them meaningless.
SESSION_ENDING_WORDS = ("logout", "log-out", "signout", "sign-out")
# httpx refuses longer URLs (and servers in front of the app far shorter ones).
MAX_URL_CHARACTERS = 65_536
BCRYPT_HASH = re.compile(r"\$2[abxy]\$\d\d\$")
LOG_FORMAT = logging.Formatter("%(levelname)s %(name)s %(message)s")

NUL = "\x00"
LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")
UNUSUAL_TEXT = (
    "\U0001f600",  # an emoji: four bytes in UTF-8, two UTF-16 code units
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # emoji joined by zero-width joiners
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # mathematical letters
    "\u202eevil\u202c",  # a right-to-left override
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic
    "e\u0301",  # a combining accent
    "\u200b",  # a zero-width space
    "\ufeff",  # a byte order mark
    "\uffff",  # a noncharacter
    "\U0010ffff",  # the last code point
)
WHITESPACE = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2028\u2029\u3000"
EMOJI = "\U0001f600"  # four bytes in UTF-8
# Over-long text in characters of one byte and of four bytes in UTF-8.
LONG_TEXT_CHARACTERS = ("a", EMOJI)
LENGTHS_WITHOUT_LIMIT = (300, 5000)

# What kind of value it is (for messages), the value, and whether it goes inside a
# valid value (such as the local part of an email address) rather than replace it.
Hostile = tuple[str, Any, bool]


def _containing(special: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.text(max_size=8), special, st.text(max_size=8)).map("".join)


def hostile_text(max_length: int | None) -> st.SearchStrategy[tuple[str, Any]]:
    """Text a careful service refuses or stores, and a careless one chokes on."""
    lengths = LENGTHS_WITHOUT_LIMIT if max_length is None else (max_length + 1, 5000)
    kinds: list[st.SearchStrategy[tuple[str, Any]]] = [
        _containing(st.just(NUL)).map(lambda text: ("NUL", text)),
        _containing(st.sampled_from(LONE_SURROGATES)).map(lambda text: ("lone surrogate", text)),
        st.builds(
            lambda character, length: ("over-long", character * length),
            st.sampled_from(LONG_TEXT_CHARACTERS),
            st.sampled_from(lengths),
        ),
        st.lists(st.sampled_from(UNUSUAL_TEXT), min_size=1, max_size=6).map(
            lambda parts: ("unusual unicode", "".join(parts))
        ),
        st.text(st.characters(min_codepoint=0x10000), min_size=1).map(
            lambda text: ("astral", text)
        ),
        st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=20).map(
            lambda text: ("whitespace only", text)
        ),
        st.text().map(lambda text: ("text", text)),
    ]
    if max_length is not None:
        # As long as allowed, in characters of four bytes each.
        kinds.append(st.just(("astral at max length", EMOJI * max_length)))
    return st.one_of(kinds)


WRONG_JSON_TYPE: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
).map(lambda value: ("wrong JSON type", value))

# In place of a whole JSON body: anything but an object.
NOT_AN_OBJECT: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.integers(), max_size=3)
).map(lambda value: ("not an object", value))


def hostile_json(max_length: int | None) -> st.SearchStrategy[tuple[str, Any]]:
    # Hostile text, and now and then a value of the wrong type.
    return st.one_of(hostile_text(max_length), WRONG_JSON_TYPE)


# For the sweep, in JSON: values of the wrong type for a field, and bodies not objects.
WRONG_TYPES: tuple[Any, ...] = (None, 0, [""], {})
NOT_OBJECTS: tuple[Any, ...] = (None, 0, "text", [1])


def one_of_each_kind(item: "Input") -> list[Hostile]:
    """For the sweep: one hostile value of each kind for `item`."""
    if item.name == WHOLE_BODY:
        return [("not an object", value, False) for value in NOT_OBJECTS]
    longer = LENGTHS_WITHOUT_LIMIT[0] if item.max_length is None else item.max_length + 1
    values: list[Hostile] = [
        ("NUL", f"a{NUL}b", False),
        ("NUL", NUL, True),
        ("lone surrogate", f"a{LONE_SURROGATES[0]}b", False),
        ("lone surrogate", LONE_SURROGATES[-1], True),
        ("over-long", "a" * longer, False),
        ("over-long", EMOJI * longer, False),
        ("over-long", "a" * LENGTHS_WITHOUT_LIMIT[-1], False),
        ("unusual unicode", "".join(UNUSUAL_TEXT), False),
        ("whitespace only", WHITESPACE, False),
    ]
    if item.max_length is not None:
        values.append(("astral at max length", EMOJI * item.max_length, False))
    if item.location == "json" and item.name != EXTRA:
        values += [("wrong JSON type", value, False) for value in WRONG_TYPES]
    return values


def encoded(text: str, *, form: bool = False) -> str:
    """Percent-encoded UTF-8, lone surrogates included (as the invalid UTF-8 they make)."""
    raw = text.encode("utf-8", "surrogatepass")
    return quote_plus(raw, safe="") if form else quote(raw, safe="")


class Components:
    """Resolves the `$ref`s, `allOf`s and `anyOf`s of the OpenAPI document's schemas."""

    def __init__(self, document: Schema) -> None:
        self.schemas: dict[str, Schema] = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema or len(schema.get("allOf", ())) == 1:
            if "$ref" in schema:
                target = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
                rest = {key: value for key, value in schema.items() if key != "$ref"}
            else:
                target = schema["allOf"][0]
                rest = {key: value for key, value in schema.items() if key != "allOf"}
            schema = {**self.resolve(target), **rest}
        return schema

    def alternatives(self, schema: Schema) -> list[Schema]:
        """The schema's non-null alternatives, resolved."""
        schema = self.resolve(schema)
        union = schema.get("anyOf") or schema.get("oneOf")
        if union is None:
            return [] if schema.get("type") == "null" else [schema]
        return [choice for option in union for choice in self.alternatives(option)]

    def first(self, schema: Schema) -> Schema:
        return next(iter(self.alternatives(schema)), {})


@dataclass(frozen=True)
class Input:
    """One named input of an operation: a parameter, or a field of its body."""

    location: str  # path, query, header, cookie, json or form
    name: str
    schema: Schema  # the first non-null alternative
    required: bool

    @property
    def label(self) -> str:
        return f"{self.location} {self.name}"

    @property
    def max_length(self) -> int | None:
        value = self.schema.get("maxLength")
        return value if isinstance(value, int) else None


# An input that the operation does not declare, whose name is hostile too.
EXTRA = "<extra input>"
# The whole JSON body, replaced by a value that is not an object.
WHOLE_BODY = "<whole body>"
AUTHORIZATION = "Authorization"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    parameters: tuple[Input, ...]
    body: str | None  # json or form
    body_schema: Schema
    fields: tuple[Input, ...]
    secured: bool

    @property
    def name(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def fields_and_parameters(self) -> list[Input]:
        """Inputs the service validates side by side: several may be hostile at once."""
        inputs = [item for item in self.parameters if item.location != "path"]
        return [*inputs, *self.fields, Input("query", EXTRA, {}, required=False)]

    @property
    def gates(self) -> list[Input]:
        """Inputs that, hostile, stop the request before any other is looked at: the path
        (404), the token (401) and a body of the wrong shape (422). One at a time, then."""
        gates = [item for item in self.parameters if item.location == "path"]
        if self.secured:
            gates.append(Input("header", AUTHORIZATION, {"type": "string"}, required=True))
        if self.body is not None:
            gates.append(Input(self.body, EXTRA, {}, required=False))
        if self.body == "json":
            gates.append(Input("json", WHOLE_BODY, {}, required=False))
        return gates

    @property
    def inputs(self) -> dict[str, Input]:
        return {item.label: item for item in [*self.fields_and_parameters, *self.gates]}

    @property
    def password_change(self) -> tuple[str, list[str]] | None:
        """For an operation that changes the caller's password: the field holding the
        current password, and those holding the new one."""
        names = [item.name for item in self.fields if "password" in item.name.lower()]
        current = [name for name in names if "current" in name or "old" in name]
        new = [name for name in names if name not in current]
        return (current[0], new) if current and new else None


def discover(document: Schema) -> list[Operation]:
    components = Components(document)
    operations = []
    for path, path_item in document["paths"].items():
        for method in HTTP_METHODS:
            spec = path_item.get(method)
            if spec is None or _ends_the_session(method, path):
                continue
            parameters = tuple(
                Input(
                    parameter["in"],
                    parameter["name"],
                    components.first(parameter.get("schema", {})),
                    parameter.get("required", False),
                )
                for parameter in [*path_item.get("parameters", ()), *spec.get("parameters", ())]
            )
            body, body_schema = _body(method, path, spec, components)
            required = set(body_schema.get("required", ()))
            fields = tuple(
                Input(body or "json", name, components.first(schema), name in required)
                for name, schema in body_schema.get("properties", {}).items()
            )
            secured = bool(spec.get("security", document.get("security")))
            operations.append(
                Operation(method, path, parameters, body, body_schema, fields, secured)
            )
    return operations


def _ends_the_session(method: str, path: str) -> bool:
    # Logging out, or deleting the caller's own account.
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return any(word in path.lower() for word in SESSION_ENDING_WORDS) or (
        method == "delete" and last == "me"
    )


def _body(
    method: str, path: str, spec: Schema, components: Components
) -> tuple[str | None, Schema]:
    content = spec.get("requestBody", {}).get("content")
    if not content:
        return None, {}
    if "application/json" in content:
        return "json", components.resolve(content["application/json"].get("schema", {}))
    if "application/x-www-form-urlencoded" in content:
        form = content["application/x-www-form-urlencoded"]
        return "form", components.resolve(form.get("schema", {}))
    pytest.fail(f"{method.upper()} {path}: no way to build a body of type {sorted(content)}")


class Choices:
    """Where the free parts of a request come from: Hypothesis's data in the property
    tests, and in the sweep the simplest value of each strategy (no optional field, the
    first member of an enum, the lowest number)."""

    def __init__(self, data: st.DataObject | None = None) -> None:
        self.data = data

    def draw(self, strategy: st.SearchStrategy[T], label: str | None = None) -> T:
        if self.data is not None:
            return self.data.draw(strategy, label=label)
        key = repr(strategy)
        if key not in SIMPLEST:
            SIMPLEST[key] = find(strategy, lambda _: True, settings=FIND_SETTINGS)
        value: T = SIMPLEST[key]
        return value

    def note(self, text: str) -> None:
        if self.data is not None:
            note(text)

    def skip(self) -> None:
        """Give up on this request; Hypothesis then does not count it as an example."""
        if self.data is not None:
            assume(False)


FIND_SETTINGS = hypothesis_settings(database=None)
SIMPLEST: dict[str, Any] = {}  # the simplest value of each strategy, by its repr


@dataclass
class Caller:
    role: str
    id: str
    email: str
    token: str


@dataclass
class Prepared:
    """A request ready to send, and what in it is hostile."""

    operation: Operation
    caller: Caller
    url: str
    headers: list[tuple[bytes, bytes]]
    content: bytes | None
    json_body: Any
    hostile: list[str] = field(default_factory=list)

    def describe(self) -> str:
        hostile = "; ".join(self.hostile) or "nothing hostile"
        return f"{self.operation.name} as the {self.caller.role}: {hostile}"


class LogRecorder(logging.Handler):
    """Keeps the warnings and errors logged during one request."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        # The message with its traceback, and every attribute: `extra` fields and the
        # exception's arguments would reach a JSON log line too.
        return [f"{LOG_FORMAT.format(record)} {vars(record)!r}" for record in self.records]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"


def _around(text: str, index: int) -> str:
    """Where in a long log line something was found."""
    return repr(text[max(0, index - 200) : index + 60])


def _json(response: Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _wire(value: Any) -> str:
    """A value as it travels in a URL or a form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _length_between(low: int, high: int | None, text: str) -> bool:
    return low <= len(text) and (high is None or len(text) <= high)


class Fuzzer:
    def __init__(
        self,
        app: FastAPI,
        client: AsyncClient,
        make_user: MakeUser,
        callers: list[SignedIn],
        log: LogRecorder,
    ) -> None:
        self.client = client
        self.make_user = make_user
        self.log = log
        self.operations = {operation.name: operation for operation in discover(app.openapi())}
        self.callers = {signed_in.role: self._caller(signed_in) for signed_in in callers}
        # Everything that must never appear in an answer or a log line, and whose it is.
        self.secrets = {TEST_SECRET: "the signing secret", PASSWORD: "the password"}
        for caller in self.callers.values():
            self.secrets[caller.token] = f"the {caller.role}'s token"
        self.counter = 0

    def _caller(self, signed_in: SignedIn) -> Caller:
        token = signed_in.headers["Authorization"].removeprefix("Bearer ")
        return Caller(signed_in.role, signed_in.id, signed_in.email, token)

    def unique(self) -> int:
        self.counter += 1
        return self.counter

    async def example(self, data: st.DataObject) -> None:
        """One operation, by one caller, with hostile values in one to three inputs."""
        caller = self.callers[data.draw(st.sampled_from(list(self.callers)), label="caller")]
        name = data.draw(st.sampled_from(list(self.operations)), label="operation")
        operation = self.operations[name]
        inputs = [item.label for item in operation.fields_and_parameters]
        options = [st.lists(st.sampled_from(inputs), min_size=1, max_size=3, unique=True)]
        if operation.gates:
            gates = [item.label for item in operation.gates]
            options.append(st.sampled_from(gates).map(lambda label: [label]))
        chosen = data.draw(st.one_of(options), label="hostile inputs")
        failure = await self.exchange(Choices(data), operation, caller, dict.fromkeys(chosen))
        assert failure is None, failure

    async def sweep(self) -> list[str]:
        """Each kind of hostile value in each input of each operation, by each caller."""
        failures = []
        for caller in self.callers.values():
            for operation in self.operations.values():
                for label, item in operation.inputs.items():
                    for hostile in one_of_each_kind(item):
                        failure = await self.exchange(
                            Choices(), operation, caller, {label: hostile}
                        )
                        failures += [failure] if failure else []
        return failures

    async def baseline(self, data: st.DataObject) -> None:
        """Every operation's valid request, by each caller, with nothing hostile in it."""
        for caller in self.callers.values():
            for operation in self.operations.values():
                failure = await self.exchange(Choices(data), operation, caller, {})
                assert failure is None, failure

    async def exchange(
        self,
        choices: Choices,
        operation: Operation,
        caller: Caller,
        hostile: dict[str, Hostile | None],
    ) -> str | None:
        """Send the request; say what is wrong with the outcome, if anything."""
        self.log.records.clear()
        problems: list[str] = []
        prepared = await self.prepare(choices, operation, caller, hostile, problems)
        if len(prepared.url) >= MAX_URL_CHARACTERS:
            choices.skip()  # not a request anyone could send
            return None
        choices.note(prepared.describe())
        response = await self.send(prepared)
        problems += self.check(response)
        if not hostile and response.status_code == 422:
            # Then the examples would test nothing but validation.
            problems.append("the valid request was refused as invalid")
        problems += await self.follow_up(prepared, response)
        problems += self.check_logs()
        if not problems:
            return None
        return "\n".join(
            [
                prepared.describe(),
                f"-> {response.status_code} {response.text[:300]!r}",
                *problems,
            ]
        )

    async def prepare(
        self,
        choices: Choices,
        operation: Operation,
        caller: Caller,
        hostile: dict[str, Hostile | None],
        problems: list[str],
    ) -> Prepared:
        """A valid request for `operation`, but with hostile values in the inputs named
        in `hostile` (the value given, or one drawn when None)."""
        prepared = Prepared(operation, caller, "", [], None, None)
        headers: dict[str, bytes] = {AUTHORIZATION: f"Bearer {caller.token}".encode()}
        cookies: list[str] = []
        path = operation.path
        query: list[str] = []
        for parameter in operation.parameters:
            is_hostile = parameter.label in hostile
            if not (parameter.required or is_hostile or choices.draw(st.booleans())):
                continue
            if parameter.location == "path":
                value = await self.path_value(choices, operation, parameter, caller, problems)
            else:
                value = _wire(self.valid(choices, parameter, caller))
            if is_hostile:
                value = self.hostile_value(
                    choices, prepared, parameter, value, hostile_text, hostile[parameter.label]
                )
            assert isinstance(value, str)
            if parameter.location == "path":
                path = path.replace("{" + parameter.name + "}", encoded(value))
            elif parameter.location == "query":
                query.append(f"{encoded(parameter.name)}={encoded(value)}")
            elif parameter.location == "header":
                headers[parameter.name] = value.encode("utf-8", "surrogatepass")
            else:
                cookies.append(f"{encoded(parameter.name)}={encoded(value)}")
        if f"query {EXTRA}" in hostile:
            name, value = self.extra_input(choices, prepared, "query", hostile[f"query {EXTRA}"])
            query.append(f"{encoded(name)}={encoded(value)}")
        if f"header {AUTHORIZATION}" in hostile:
            target = operation.inputs[f"header {AUTHORIZATION}"]
            token = self.hostile_value(
                choices, prepared, target, caller.token, hostile_text, hostile[target.label]
            )
            headers[AUTHORIZATION] = b"Bearer " + token.encode("utf-8", "surrogatepass")
        if cookies:
            headers["Cookie"] = "; ".join(cookies).encode()

        if operation.body is not None:
            values = self.body_values(choices, prepared, operation, caller, hostile)
            if operation.body == "json":
                if f"json {WHOLE_BODY}" in hostile:
                    given = hostile[f"json {WHOLE_BODY}"]
                    kind, values = choices.draw(NOT_AN_OBJECT) if given is None else given[:2]
                    prepared.hostile.append(f"the whole JSON body = {kind}: {_short(values)}")
                prepared.json_body = values
                prepared.content = json.dumps(values, ensure_ascii=True).encode()
                headers["Content-Type"] = b"application/json"
            else:
                prepared.content = "&".join(
                    f"{encoded(name, form=True)}={encoded(_wire(value), form=True)}"
                    for name, value in values.items()
                ).encode()
                headers["Content-Type"] = b"application/x-www-form-urlencoded"
        prepared.url = path + (f"?{'&'.join(query)}" if query else "")
        prepared.headers = [(name.encode(), value) for name, value in headers.items()]
        return prepared

    def body_values(
        self,
        choices: Choices,
        prepared: Prepared,
        operation: Operation,
        caller: Caller,
        hostile: dict[str, Hostile | None],
    ) -> Any:
        if not operation.fields and "properties" not in operation.body_schema:
            # A body that is not an object: only as a whole can it be hostile.
            return self.valid(
                choices, Input("json", "body", operation.body_schema, required=True), caller
            )
        values: dict[str, Any] = {}
        strategy = hostile_text if operation.body == "form" else hostile_json
        for item in operation.fields:
            is_hostile = item.label in hostile
            if not (item.required or is_hostile or choices.draw(st.booleans())):
                continue
            value = self.valid(choices, item, caller)
            if is_hostile:
                value = self.hostile_value(
                    choices, prepared, item, value, strategy, hostile[item.label]
                )
            values[item.name] = value
        extra = f"{operation.body} {EXTRA}"
        if extra in hostile:
            name, value = self.extra_input(
                choices, prepared, operation.body or "json", hostile[extra]
            )
            values[name] = value
        return values

    def hostile_value(
        self,
        choices: Choices,
        prepared: Prepared,
        target: Input,
        valid: Any,
        strategy: Callable[[int | None], st.SearchStrategy[tuple[str, Any]]],
        given: Hostile | None,
    ) -> Any:
        if given is None:
            kind, value = choices.draw(strategy(target.max_length))
            inside = isinstance(value, str) and choices.draw(st.booleans())
        else:
            kind, value, inside = given
        if inside and isinstance(value, str) and isinstance(valid, str) and valid:
            # Inside a valid value, such as the local part of an email address.
            middle = len(valid) // 3
            kind, value = f"{kind} inside a valid value", valid[:middle] + value + valid[middle:]
        prepared.hostile.append(f"{target.label} = {kind}: {_short(value)}")
        return value

    def extra_input(
        self, choices: Choices, prepared: Prepared, location: str, given: Hostile | None
    ) -> tuple[str, str]:
        if given is None:
            name_kind, name = choices.draw(hostile_text(None).filter(lambda h: h[1] != ""))
            kind, value = choices.draw(hostile_text(None))
        else:
            kind, value, _ = given
            name_kind, name = kind, value  # the same text names the input too
        prepared.hostile.append(
            f"extra {location} input named {name_kind}: {_short(name)} = {kind}: {_short(value)}"
        )
        return str(name), str(value)

    def valid(self, choices: Choices, item: Input, caller: Caller) -> Any:
        """A valid value for the input, by its schema (and, for credentials, its name)."""
        schema = item.schema
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return choices.draw(st.sampled_from(schema["enum"]))
        kind = schema.get("type")
        if kind == "string":
            return self.valid_string(choices, item, caller)
        if kind == "integer":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
            high = schema.get("maximum", schema.get("exclusiveMaximum", low + 101) - 1)
            return choices.draw(st.integers(low, high))
        if kind == "number":
            low = schema.get("minimum", 0)
            return choices.draw(st.floats(low, schema.get("maximum", low + 100)))
        if kind == "boolean":
            return choices.draw(st.booleans())
        if kind == "array":
            items = Input(item.location, item.name, schema.get("items", {}), required=True)
            return [self.valid(choices, items, caller) for _ in range(schema.get("minItems", 0))]
        if kind == "object" or "properties" in schema:
            required = set(schema.get("required", ()))
            return {
                name: self.valid(choices, Input(item.location, name, value, True), caller)
                for name, value in schema.get("properties", {}).items()
                if name in required or choices.draw(st.booleans())
            }
        return None

    def valid_string(self, choices: Choices, item: Input, caller: Caller) -> str:
        schema, name = item.schema, item.name.lower()
        kind = schema.get("format")
        if kind == "email":
            return f"fuzz-{self.unique()}@example.com"
        if kind == "password" or "password" in name:
            return PASSWORD
        if name == "username":  # OAuth2's password flow: the email address
            return caller.email
        if kind == "uuid":
            return str(uuid.uuid4())
        if kind == "date-time":
            return datetime.now(UTC).isoformat()
        if kind == "date":
            return datetime.now(UTC).date().isoformat()
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            # JSON Schema's `$` ends the text; Python's would also allow a final newline.
            pattern = re.sub(r"(?<!\\)\$$", r"\\Z", str(schema["pattern"]))
            matching = st.from_regex(pattern, fullmatch=True)
            return choices.draw(matching.filter(functools.partial(_length_between, low, high)))
        text = f"valid {self.unique()}".ljust(low, "x")
        return text[:high] if high is not None else text

    async def path_value(
        self,
        choices: Choices,
        operation: Operation,
        parameter: Input,
        caller: Caller,
        problems: list[str],
    ) -> str:
        """An id that names something real: an item created for the request, the caller
        (or, to delete, a user made for it); any other uuid at random."""
        if parameter.schema.get("format") != "uuid":
            return _wire(self.valid(choices, parameter, caller))
        collection = operation.path.split("{" + parameter.name + "}", 1)[0].rstrip("/")
        creator = next(
            (
                candidate
                for candidate in self.operations.values()
                if candidate.path == collection
                and candidate.method == "post"
                and candidate.body == "json"
            ),
            None,
        )
        if creator is not None:
            prepared = await self.prepare(choices, creator, caller, {}, problems)
            response = await self.send(prepared)
            problems += [
                f"{creator.name}, for an id: {problem}" for problem in self.check(response)
            ]
            created = _json(response)
            if response.is_success and isinstance(created, dict) and "id" in created:
                return str(created["id"])
        elif collection.rsplit("/", 1)[-1] == "users":
            if operation.method != "delete":
                return caller.id
            victim = await self.make_user()
            self.secrets[victim.headers["Authorization"].removeprefix("Bearer ")] = "a user's token"
            return victim.id
        return str(uuid.uuid4())

    async def send(self, prepared: Prepared) -> Response:
        operation = prepared.operation
        return await self.client.request(
            operation.method.upper(),
            prepared.url,
            headers=prepared.headers,
            content=prepared.content,
        )

    def check(self, response: Response) -> list[str]:
        problems = []
        status = response.status_code
        if status >= 500 and not (status == 503 and "retry-after" in response.headers):
            problems.append(f"a server error, {status}")
        text = response.content.decode("utf-8", "replace")
        if "Traceback" in text:
            problems.append("a traceback in the answer")
        if BCRYPT_HASH.search(text):
            problems.append("a password hash in the answer")
        body = _json(response)
        if response.is_success and isinstance(body, dict) and "access_token" in body:
            # New tokens are the point of a login or a refresh; an access token may equal
            # one held (same second). Neither may appear anywhere else, logs included.
            for kind in ("access_token", "refresh_token"):
                token = str(body.pop(kind, ""))
                if token:
                    self.secrets.setdefault(token, f"a {kind.replace('_', ' ')} issued in the test")
            text = json.dumps(body)
        problems += [
            f"{whose} in the answer" for secret, whose in self.secrets.items() if secret in text
        ]
        return problems

    def check_logs(self) -> list[str]:
        problems = []
        for text in self.log.texts():
            found = BCRYPT_HASH.search(text)
            if found:
                problems.append(f"a password hash in the log: {_around(text, found.start())}")
            problems += [
                f"{whose} in the log: {_around(text, text.index(secret))}"
                for secret, whose in self.secrets.items()
                if secret in text
            ]
        return problems

    async def follow_up(self, prepared: Prepared, response: Response) -> list[str]:
        """Keep the callers usable: follow a change of their email, undo one of their
        password."""
        body = _json(response)
        caller = prepared.caller
        if not response.is_success:
            return []
        if isinstance(body, dict) and body.get("id") == caller.id:
            caller.email = str(body.get("email", caller.email))
            if body.get("role", caller.role) != caller.role or body.get("is_active") is False:
                # The last administrator may not step down; a user may not change roles.
                return ["the caller lost its role or its account"]
        change = prepared.operation.password_change
        sent = prepared.json_body
        if change is None or not isinstance(sent, dict):
            return []
        current, new = change
        password = next((sent[name] for name in new if sent.get(name, PASSWORD) != PASSWORD), None)
        if password is None:
            return []
        restore = {**sent, current: password, **dict.fromkeys(new, PASSWORD)}
        undo = Prepared(
            prepared.operation,
            caller,
            prepared.url,
            prepared.headers,
            json.dumps(restore, ensure_ascii=True).encode(),
            restore,
        )
        answer = await self.send(undo)
        if not answer.is_success:
            return [f"the password it set does not work: {answer.status_code} {answer.text!r}"]
        return []


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    return make_settings(migrated_database, **FUZZ_LIMITS)


@pytest.fixture
async def fuzzer(
    app: FastAPI, client: AsyncClient, make_user: MakeUser, user: SignedIn, admin: SignedIn
) -> AsyncIterator[Fuzzer]:
    log = LogRecorder()
    root = logging.getLogger()
    root.addHandler(log)
    try:
        yield Fuzzer(app, client, make_user, [user, admin], log)
    finally:
        root.removeHandler(log)


@FUZZ
@given(data=st.data())
async def test_hostile_input_gets_no_server_error_and_leaks_nothing(
    fuzzer: Fuzzer, data: st.DataObject
) -> None:
    await fuzzer.example(data)


async def test_each_input_meets_each_kind_of_hostile_value(fuzzer: Fuzzer) -> None:
    failures = await fuzzer.sweep()

    assert not failures, f"{len(failures)} failing requests:\n\n" + "\n\n".join(failures)


@hypothesis_settings(FUZZ, max_examples=3)
@given(data=st.data())
async def test_every_baseline_request_is_valid(fuzzer: Fuzzer, data: st.DataObject) -> None:
    # The requests above are only as good as their valid part: here it is sent alone.
    await fuzzer.baseline(data)
