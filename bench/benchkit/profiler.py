"""Optional py-spy sampling of the server during measured runs, and a text summary of it.

Profiles are written in py-spy's "raw" (collapsed stacks) format, which flamegraph.pl and
speedscope read; the summary lists the functions with the most samples of their own and the
application and library frames with the most samples below them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchkit.service import Project, Server
from benchkit.shell import log, run_cmd, uv_executable

LIBRARY_MARKERS = (
    "sqlalchemy",
    "sqlmodel",
    "asyncpg",
    "aiomysql",
    "pymysql",
    "aiosqlite",
    "pydantic",
    "fastapi",
    "starlette",
    "jwt",
    "jose",
    "passlib",
)


class Profiler:
    def __init__(self, project: Project, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.exe = project.path / ".venv" / "bin" / "py-spy"
        out_dir.mkdir(parents=True, exist_ok=True)
        if not self.exe.exists():
            log("installing py-spy into the rendered project's venv")
            run_cmd(
                [
                    uv_executable(),
                    "pip",
                    "install",
                    "--python",
                    str(project.path / ".venv"),
                    "py-spy",
                ],
                cwd=project.path,
                env=project.env,
                what="uv pip install py-spy",
            )

    def start(self, server: Server, name: str, duration: float) -> subprocess.Popen[bytes]:
        if server.proc is None:
            raise RuntimeError("the server is not running")
        cmd = [str(self.exe), "record", "--pid", str(server.proc.pid)]
        cmd += ["--duration", str(max(1, int(duration))), "--rate", "250", "--nonblocking"]
        cmd += ["--format", "raw", "--output", str(self.out_dir / f"{name}.txt")]
        if server.workers > 1:
            cmd.append("--subprocesses")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, proc: subprocess.Popen[bytes], name: str) -> str:
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"{name}: py-spy did not finish"
        path = self.out_dir / f"{name}.txt"
        if proc.returncode != 0 or not path.exists():
            return f"{name}: py-spy failed: {stderr.decode(errors='replace').strip()[-500:]}"
        return summarize_profile(path)


def summarize_profile(path: Path, top: int = 15) -> str:
    """Top functions by own samples, and app/library frames by inclusive samples."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
        # A sampled thread waiting in threading (the anyio pool's idle workers) is not work.
        if frames[-1].startswith(("Condition.wait", "Event.wait", "Thread._bootstrap")):
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return f"{path.stem}: no samples"
    lines = [f"{path.stem}: {total} busy samples", "  own samples:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    lines.append("  inclusive, app/ and libraries:")
    interesting = [
        (frame, count)
        for frame, count in inclusive.items()
        if "(app/" in frame or any(marker in frame for marker in LIBRARY_MARKERS)
    ]
    for frame, count in sorted(interesting, key=lambda kv: -kv[1])[: 2 * top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def frame_name(frame: str) -> str:
    """`func (/x/.venv/lib/python3.11/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, location = frame.partition(" (")
    file_path = location.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in file_path:
        file_path = file_path.split("site-packages/", 1)[1]
    elif "/lib/python3" in file_path:
        file_path = "stdlib/" + file_path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    elif "/app/" in file_path:
        file_path = "app/" + file_path.split("/app/", 1)[1]
    return f"{name} ({file_path})" if file_path else name
