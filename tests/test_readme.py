"""The README runs: every ``sh``, ``bash``, ``python`` and ``console`` block of README.md, in order, in one
shell session, as a reader would type them, against a real Redis-protocol server, ``acetrack sim`` and
real ``acetrack worker`` / ``acetrack serve`` processes that the blocks themselves start.

Conventions, each an HTML comment on the line just before a block's fence:

- ``<!-- readme-test: skip REASON -->``: the block is not run; it is reported as skipped with REASON.
- ``<!-- readme-test: file NAME -->``: the block is written to NAME in the session's folder, for a later
  block to run (a Python file is compiled here, so a syntax error fails at once).

Inside a block, a line ``# -> TEXT`` says the output of the command above it (the block's stdout and
stderr together) contains TEXT. A command in the background (a line ending in ``&``) may print later:
its TEXT is looked for until it comes (``test_background_output``); and after a block that starts one,
the test waits for the ports such commands listen on, as a reader would before typing on. In a
``console`` block, ``$ `` lines are the commands and every other line is output to find. Each block
must also exit 0.

The only changes made to a block: ``redis://localhost:6379/0`` becomes the test's server, and the
ports 8090 (the simulator), 8080 (the HTTP API) and 9000 (the webhook receiver) become free ones, so
parallel runs do not collide. Blocks in other languages (``json``, ``yaml``) are illustrations and
are not run; a block with no language fails ``test_every_block_is_labelled``. The pages under docs/
are reference pages whose blocks name placeholders (``ID``, ``DELIVERY_ID``): they are not run here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from servers import free_port, wait_port
from support import require_real_redis

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_LANGUAGES = frozenset({"sh", "bash", "python", "console"})
ILLUSTRATIONS = frozenset({"json", "yaml"})
MARK = re.compile(r"<!--\s*readme-test:\s*(skip|file)\s+(.*?)\s*-->")
EXPECT = re.compile(r"^\s*# -> (.+?)\s*$")
BACKGROUND = re.compile(r"&\s*(#.*)?$")
README_REDIS_URL = "redis://localhost:6379/0"
#: the README's ports, by what listens on them
README_PORTS = {"sim": 8090, "api": 8080, "receiver": 9000}
MAX_README_LINES = 300
#: programs the README's blocks run besides acetrack's own
READER_TOOLS = ("bash", "curl", "redis-cli")
#: a guard against a hang, not a measure of speed: what a block starts prints within seconds
HANG_GUARD_S = 120.0


@dataclass
class Block:
    """One fenced block of the README."""

    line: int
    language: str
    text: str
    mark: str | None = None
    argument: str = ""

    @property
    def name(self) -> str:
        return f"L{self.line}-{self.language or 'unlabelled'}"

    def expected(self) -> list[tuple[str, bool]]:
        """Each text the output must contain, and whether a command in the background prints it (the
        ``# -> TEXT`` line follows a line ending in ``&``): that one may come later."""
        if self.language == "console":
            return [(line.strip(), False) for line in self.text.splitlines() if line.strip() and line[:2] != "$ "]
        out, command = [], ""
        for line in self.text.splitlines():
            match = EXPECT.match(line)
            if match:
                out.append((match[1], self.language != "python" and bool(BACKGROUND.search(command))))
            elif line.strip() and not line.lstrip().startswith("#"):
                command = line
        return out

    def script(self) -> str:
        """What the shell runs for this block (a ``python`` block runs as a file of its own)."""
        if self.language == "console":
            return "\n".join(line[2:] for line in self.text.splitlines() if line.startswith("$ "))
        return self.text

    def background(self) -> bool:
        return self.language != "python" and any(BACKGROUND.search(line) for line in self.script().splitlines())


def readme_blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path``, with the ``readme-test`` mark on the line before it, if any."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("```"):
            start, language = number, line[3:].strip()
            end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
            mark = MARK.search(lines[start - 1]) if start > 0 else None
            block = Block(start + 1, language, "\n".join(lines[start + 1 : end]) + "\n")
            if mark:
                block.mark, block.argument = mark[1], mark[2]
            blocks.append(block)
            number = end
        number += 1
    return blocks


@dataclass
class Session:
    """One bash process that sources each block in turn, so exports and background jobs carry over."""

    folder: Path
    ports: dict[str, int]
    redis_url: str
    shell: subprocess.Popen[str]
    #: what a block's background commands are to print: (block, its output file, the text)
    later: list[tuple[Block, Path, str]] = field(default_factory=list)

    def localize(self, text: str) -> str:
        text = text.replace(README_REDIS_URL, self.redis_url)
        for role, port in README_PORTS.items():
            text = re.sub(rf"\b{port}\b", str(self.ports[role]), text)
        return text

    def run(self, block: Block) -> tuple[int, Path]:
        """Source the block in the session; returns its exit status and the file with its output."""
        stem = self.folder / f"block-{block.line}"
        script, out, status = stem.with_suffix(".sh"), stem.with_suffix(".out"), stem.with_suffix(".status")
        if block.language == "python":
            program = stem.with_suffix(".py")
            program.write_text(self.localize(block.text))
            script.write_text(f"python {program.name}\n")
        else:
            script.write_text(self.localize(block.script()))
        assert self.shell.stdin is not None
        # stdin from /dev/null: a block (or a job it starts) must not read the session's own commands
        self.shell.stdin.write(f"source {script.name} > {out.name} 2>&1 < /dev/null; echo $? > {status.name}.tmp; ")
        self.shell.stdin.write(f"mv {status.name}.tmp {status.name}\n")
        self.shell.stdin.flush()
        while not status.exists():
            assert self.shell.poll() is None, f"the session's shell ended ({self.shell.returncode}) in {block.name}"
            time.sleep(0.1)
        return int(status.read_text()), out

    def listening_ports(self, block: Block) -> list[int]:
        """The ports a background block's commands listen on: those it, or a file it names, mentions."""
        texts = [block.text] + [p.read_text() for p in self.folder.glob("*.py") if p.name in block.text]
        return [self.ports[role] for role, port in README_PORTS.items() if any(str(port) in t for t in texts)]

    def close(self) -> None:
        # the shell and every job it started share its process group (no job control in a script)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.shell.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.shell.wait(15)
                time.sleep(0.5)  # let the jobs' own SIGTERM handling finish before the next signal
            except subprocess.TimeoutExpired:
                continue
        if self.shell.stdin is not None:
            self.shell.stdin.close()


def session_env() -> dict[str, str]:
    """A reader's environment: this interpreter's scripts first on PATH, no ``ACETRACK_*`` setting."""
    bin_dir = Path(sys.executable).parent
    if shutil.which("acetrack", path=str(bin_dir)) is None:
        pytest.fail(f"no 'acetrack' script beside {sys.executable}: install the project (pip install -e .)")
    missing = [tool for tool in READER_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the README's blocks use {missing}: install them (apt-get install curl redis-tools)")
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
    return {**keep, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1", "COLUMNS": "160"}


@pytest.fixture(scope="module")
def session(
    real_redis_url: str | None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    url = require_real_redis(real_redis_url, request)
    with redis.Redis.from_url(url) as admin:
        admin.flushall()
    folder = tmp_path_factory.mktemp("readme")
    shell = subprocess.Popen(
        ["bash"],
        cwd=folder,
        env=session_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    ports = {role: free_port() for role in README_PORTS}
    live = Session(folder, ports, url, shell)
    yield live
    live.close()


BLOCKS = readme_blocks()


def test_every_block_is_labelled() -> None:
    unknown = [b.name for b in BLOCKS if b.language not in RUN_LANGUAGES | ILLUSTRATIONS]
    assert not unknown, f"label these README blocks with a language ({sorted(RUN_LANGUAGES | ILLUSTRATIONS)})"
    fences = [line for line in README.read_text().splitlines() if line.startswith("```")]
    assert len(fences) == 2 * len(BLOCKS), "a fence the extraction missed (or one left open)"
    assert any(b.language in RUN_LANGUAGES and b.mark is None for b in BLOCKS)


def test_readme_is_a_manual_of_at_most_300_lines() -> None:
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_at_files(page: Path) -> None:
    targets = re.findall(r"\]\((?!https?://)([^)#]*)", page.read_text())
    # client/ is the producer client's package, merged from its own branch
    missing = [t for t in targets if t and not (page.parent / t).exists() and not t.startswith("client/")]
    assert not missing
    if page == README:
        assert {"docs/configuration.md", "docs/deploy.md", "docs/http-api.md", "docs/operating.md"} <= set(targets)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in RUN_LANGUAGES], ids=lambda b: b.name)
def test_block(block: Block, session: Session) -> None:
    if block.mark == "skip":
        pytest.skip(block.argument)
    if block.mark == "file":
        target = session.folder / block.argument
        target.write_text(session.localize(block.text))
        if target.suffix == ".py":
            compile(target.read_text(), str(target), "exec")
        assert target.read_text().strip()
        return
    status, out = session.run(block)
    assert status == 0, f"{block.name} exited {status}:\n{out.read_text()}"
    if block.background():
        for port in session.listening_ports(block):
            wait_port(port, timeout_s=60)
    output = out.read_text()
    for text, later in block.expected():
        if later:
            session.later.append((block, out, session.localize(text)))
        else:
            assert session.localize(text) in output, f"{block.name}: {text!r} not in its output:\n{output}"


def test_background_output(session: Session) -> None:
    """What the background commands of the blocks print (a webhook received, a hook's line) comes."""
    waiting = list(session.later)
    assert waiting, "the README's background blocks show no output to look for"
    give_up = time.monotonic() + HANG_GUARD_S
    while waiting and time.monotonic() < give_up:
        waiting = [(block, out, text) for block, out, text in waiting if text not in out.read_text()]
        time.sleep(0.2)
    assert not waiting, [(block.name, text, out.read_text()) for block, out, text in waiting]
