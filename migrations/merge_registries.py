"""Copier migration: merge, by meaning, the lists a team and the template both add to.

Copier merges a file line by line. Three files hold lists that nearly every team extends
and that the template extends too: the dependencies in `pyproject.toml`, the tables
imported in `app/models/__init__.py` (and its `__all__`), and the routers mounted in
`app/api/router.py`. When both sides add or remove entries at the same place, Copier
leaves conflict markers although both changes are wanted. Run by `copier update` after
the update (see `_migrations` in copier.yml), this script resolves exactly those
conflicts: every entry of the template's new side stays, and every entry the team added
is kept beside it, unless the template removed it (a dependency of the old release) or it
no longer exists (a name the template's module stopped defining).

Anything else in a conflict (a changed line, code it does not recognise) is left as
Copier left it, for the team to resolve; so is any file it cannot parse afterwards.

Usage (from the project's root): python merge_registries.py TEMPLATE_CLONE
with VERSION_FROM in the environment, as Copier sets it for migrations.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

OURS, BASE, SEPARATOR, THEIRS = (
    "<<<<<<< before updating",
    "||||||| last update",
    "=======",
    ">>>>>>> after updating",
)
# copier.yml's `_subdirectory`: where the rendered files live in the template repository.
TEMPLATE_SUBDIRECTORY = "template"
PYPROJECT = "pyproject.toml"
PYTHON_REGISTRIES = ("app/models/__init__.py", "app/api/router.py")
REQUIREMENT_LINE = re.compile(r'^\s*"(?P<requirement>[^"]+)",?\s*(?:#.*)?$')

Segment = tuple[list[str], list[str]] | list[str]  # a conflict (ours, theirs), or common lines


def segments(text: str) -> list[Segment] | None:
    """The file as common runs of lines and conflicts; None if the markers are malformed."""
    result: list[Segment] = []
    common: list[str] = []
    ours: list[str] = []
    theirs: list[str] = []
    state = "common"
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if bare == OURS and state == "common":
            result.append(common)
            common, ours, theirs, state = [], [], [], "ours"
        elif bare == BASE and state == "ours":
            state = "base"
        elif bare == SEPARATOR and state in {"ours", "base"}:
            state = "theirs"
        elif bare == THEIRS and state == "theirs":
            result.append((ours, theirs))
            state = "common"
        elif bare in {OURS, BASE, THEIRS}:
            return None
        elif state == "common":
            common.append(line)
        elif state == "ours":
            ours.append(line)
        elif state == "theirs":
            theirs.append(line)
    if state != "common":
        return None
    result.append(common)
    return result


def conflicts(parts: list[Segment]) -> list[tuple[list[str], list[str]]]:
    return [part for part in parts if isinstance(part, tuple)]


# --- pyproject.toml ------------------------------------------------------------------------


def requirement_name(line: str) -> str | None:
    match = REQUIREMENT_LINE.match(line)
    if match is None:
        return None
    try:
        return canonicalize_name(Requirement(match["requirement"]).name)
    except InvalidRequirement:
        return None


def requirement_names(text: str) -> set[str]:
    return {name for line in text.splitlines() if (name := requirement_name(line))}


def with_comma(line: str) -> str:
    body, newline = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")) :] or "\n"
    code, _, comment = body.partition("#")
    if code.rstrip().endswith(","):
        return line
    stripped = code.rstrip()
    return f"{stripped},{code[len(stripped) :]}{'#' + comment if comment else ''}{newline}"


def merge_requirements(ours: list[str], theirs: list[str], shipped: set[str]) -> list[str] | None:
    """The template's lines, then the team's added requirements and comments; None unless
    both sides are nothing but requirements, comments and blank lines."""
    for line in ours + theirs:
        if requirement_name(line) is None and line.strip() and not line.strip().startswith("#"):
            return None
    known = shipped | {name for line in theirs if (name := requirement_name(line))}
    theirs_lines = {line.strip() for line in theirs}
    carried = [
        line
        for line in ours
        if ((name := requirement_name(line)) is not None and name not in known)
        or (line.strip().startswith("#") and line.strip() not in theirs_lines)
    ]
    if not carried:
        return list(theirs)
    merged = list(theirs)
    for index in range(len(merged) - 1, -1, -1):
        if requirement_name(merged[index]) is not None:
            merged[index] = with_comma(merged[index])
            break
    return merged + [with_comma(line) if requirement_name(line) else line for line in carried]


def resolve_pyproject(text: str, template_clone: Path) -> tuple[str, list[str]] | None:
    version_from = os.environ.get("VERSION_FROM", "")
    old = git_show(template_clone, f"{version_from}:{TEMPLATE_SUBDIRECTORY}/pyproject.toml.jinja")
    parts = segments(text)
    if not version_from or old is None or parts is None:
        return None
    shipped = requirement_names(old)  # every requirement the old release could render
    resolved: list[str] = []
    kept: list[str] = []
    for part in parts:
        if not isinstance(part, tuple):
            resolved += part
            continue
        merged = merge_requirements(*part, shipped)
        if merged is None:
            return None
        kept += [name for line in part[0] if (name := requirement_name(line)) and line in merged]
        resolved += merged
    result = "".join(resolved)
    try:
        tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        return None
    return result, kept


# --- Python modules that register things ---------------------------------------------------


def defined_names(module: str) -> set[str] | None:
    """Names a project module defines or imports at its top level (a package's also
    include its submodules); None if it is not in the project."""
    path = Path(*module.split("."))
    names: set[str] = set()
    if path.is_dir():
        names |= {child.stem for child in path.glob("*.py")} | {
            child.name for child in path.iterdir() if (child / "__init__.py").is_file()
        }
        path = path / "__init__.py"
    else:
        path = path.with_suffix(".py")
    if not path.is_file():
        return names or None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).partition(".")[0] for alias in node.names}
    return names


def isort_key(name: str) -> tuple[int, str]:
    # ruff's order: CONSTANTS, then Classes, then the rest.
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def all_names(node: ast.stmt) -> list[str] | None:
    if (
        isinstance(node, ast.Assign)
        and [getattr(target, "id", None) for target in node.targets] == ["__all__"]
        and isinstance(node.value, ast.List | ast.Tuple)
        and all(isinstance(item, ast.Constant) for item in node.value.elts)
    ):
        return [str(item.value) for item in node.value.elts if isinstance(item, ast.Constant)]
    return None


def include_call(node: ast.stmt) -> str | None:
    """The module a `<router>.include_router(<module>.router)` line mounts, else None."""
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "include_router"
        and node.value.args
        and isinstance(node.value.args[0], ast.Attribute)
        and isinstance(node.value.args[0].value, ast.Name)
    ):
        return node.value.args[0].value.id
    return None


class PythonRegistry:
    """The resolved module's text, with the team's imports, mounts and names added."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    @property
    def tree(self) -> ast.Module:
        return ast.parse("".join(self.lines))

    def bound(self) -> set[str]:
        names: set[str] = set()
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom | ast.Import):
                names |= {(alias.asname or alias.name) for alias in node.names}
            elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
        return names

    def replace(self, node: ast.stmt, text: str) -> None:
        assert node.end_lineno is not None
        self.lines[node.lineno - 1 : node.end_lineno] = [text]

    def add_import(self, module: str, names: list[str]) -> None:
        imports = [
            node
            for node in self.tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        ]
        for node in imports:
            if node.module == module and all(alias.asname is None for alias in node.names):
                merged = sorted({alias.name for alias in node.names} | set(names), key=isort_key)
                self.replace(node, f"from {module} import {', '.join(merged)}\n")
                return
        line = f"from {module} import {', '.join(sorted(names, key=isort_key))}\n"
        same_package = [node for node in imports if (node.module or "").split(".")[0] == "app"]
        later = [node for node in same_package if (node.module or "") > module]
        if later:
            self.lines.insert(later[0].lineno - 1, line)
        elif same_package:
            self.lines.insert(same_package[-1].end_lineno or same_package[-1].lineno, line)
        else:
            raise ValueError(f"no import of the app to put `{line.strip()}` beside")

    def add_mount(self, statement: str) -> None:
        mounts = [node for node in self.tree.body if include_call(node) is not None]
        if not mounts:
            raise ValueError(f"no router to mount `{statement.strip()}` beside")
        self.lines.insert(mounts[-1].end_lineno or mounts[-1].lineno, statement)

    def add_to_all(self, names: list[str]) -> None:
        for node in self.tree.body:
            current = all_names(node)
            if current is not None:
                merged = sorted(set(current) | set(names), key=isort_key)
                body = "".join(f'    "{name}",\n' for name in merged)
                self.replace(node, f"__all__ = [\n{body}]\n")
                return
        raise ValueError("no __all__ to add names to")


def resolve_python(text: str) -> tuple[str, list[str]] | None:
    parts = segments(text)
    if parts is None:
        return None
    registry = PythonRegistry(
        "".join("".join(part[1]) if isinstance(part, tuple) else "".join(part) for part in parts)
    )
    kept: list[str] = []
    try:
        theirs_dump = {ast.dump(node) for node in registry.tree.body}
        for ours, _ in conflicts(parts):
            ours_text = "".join(ours)
            for node in ast.parse(ours_text).body:
                if ast.dump(node) in theirs_dump:
                    continue
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    available = defined_names(node.module) or set()
                    present = registry.bound()
                    names = [
                        alias.name
                        for alias in node.names
                        if alias.asname is None
                        and alias.name in available
                        and alias.name not in present
                    ]
                    if any(alias.asname for alias in node.names):
                        return None
                    if names:
                        registry.add_import(node.module, names)
                        kept += names
                elif (names := all_names(node)) is not None:
                    bound = registry.bound()
                    registry.add_to_all([name for name in names if name in bound])
                elif (module := include_call(node)) is not None:
                    if module in registry.bound():
                        statement = ast.get_source_segment(ours_text, node)
                        registry.add_mount(f"{statement}\n")
                        kept.append(f"{module}.router")
                else:
                    return None  # code this script does not merge: left to the team
        result = "".join(registry.lines)
        ast.parse(result)
    except (SyntaxError, ValueError):
        return None
    return result, kept


# --- driving it ----------------------------------------------------------------------------


def git_show(cwd: Path, spec: str) -> str | None:
    result = subprocess.run(["git", "show", spec], cwd=cwd, capture_output=True, check=False)
    return result.stdout.decode("utf-8") if result.returncode == 0 else None


def tidy(path: str) -> None:
    """Sort and format a resolved module as the project's own ruff would, when it can."""
    uv = shutil.which("uv")
    if uv is None:
        return
    for command in (["check", "--fix", "--select", "I", "--quiet"], ["format", "--quiet"]):
        subprocess.run(
            [uv, "run", "--quiet", "ruff", *command, path], capture_output=True, check=False
        )


def main() -> int:
    template_clone = Path(sys.argv[1])
    resolvers: dict[str, Callable[[str], tuple[str, list[str]] | None]] = {
        PYPROJECT: lambda text: resolve_pyproject(text, template_clone),
        **dict.fromkeys(PYTHON_REGISTRIES, resolve_python),
    }
    for path, resolve in resolvers.items():
        file = Path(path)
        if not file.is_file():
            continue
        text = file.read_text(encoding="utf-8")
        if OURS not in text:
            continue
        try:
            resolved = resolve(text)
        except Exception as exc:  # never break the update: leave the conflict
            print(f"merge_registries: {path}: {exc!r}")
            resolved = None
        if resolved is None:
            print(f"merge_registries: {path}: left the conflict to you")
            continue
        merged, kept = resolved
        file.write_text(merged, encoding="utf-8")
        if path.endswith(".py"):
            tidy(path)
        subprocess.run(["git", "add", "--", path], check=False)
        print(f"merge_registries: {path}: kept yours ({', '.join(kept) or 'nothing new'}) "
              "beside the template's")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
