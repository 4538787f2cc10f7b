"""The README and docs/*.md as a user reads them: every code block runs, every reference exists.

Each document's blocks run in order, in a fresh directory, against the suite's
server (the ``flushed`` fixture: $LESSOR_TEST_REDIS_URL or the embedded one,
passed to the blocks as $LESSOR_REDIS_URL):

- ```python: written to a file and run with this interpreter (exit 0);
- ```sh: run by ``bash -e -o pipefail``; ``.venv/bin/lessor`` and ``lessor``
  are this interpreter's ``python -m lessor``; a command ending in ``&``
  runs in the background until the document is done, its output (stdout and
  stderr) in a file of its own, shown when a later block fails or times out;
- ```text: output, diagrams and lists, never run; after ``<!-- output -->`` it is
  what the block before it printed, line for line (``...`` stands for any text);
- a block after ``<!-- file: NAME -->`` is written to NAME (a module later
  blocks import);
- a block after ``<!-- not run: why -->`` is skipped, and must say why.

Any other block fails the test: a block either runs or says why it cannot.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("python", "sh")
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text, and the comment just before it."""

    doc: Path
    line: int
    lang: str
    text: str
    marker: str

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


_OPEN = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order, each with the HTML comment on the line before it."""
    lines = doc.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opened = _OPEN.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, lang, start = opened.group(1), opened.group(2), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{doc.relative_to(ROOT)}:{start + 1}: a code block is never closed"
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before)
        found.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else ""))
        i += 1
    return found


def plan(block: Block) -> str:
    """What to do with a block: run, file, skip; or fail saying what is wrong with it."""
    if block.marker.startswith("not run"):
        reason = block.marker.removeprefix("not run").strip(" :")
        assert reason, f"{block.where()}: `<!-- not run: why -->` must say why"
        return "skip"
    if block.marker == "output":
        assert block.lang == "text", f"{block.where()}: an `<!-- output -->` block is ```text"
        return "output"
    if block.marker.startswith("file:"):
        assert block.marker.removeprefix("file:").strip(), f"{block.where()}: `<!-- file: NAME -->` needs a name"
        return "file"
    if block.lang == "text":
        return "skip"
    assert block.lang in RUNNABLE, (
        f"{block.where()}: a ```{block.lang or '(no language)'} block must run (```python or ```sh), be "
        "```text, or say why not with `<!-- not run: why -->` on the line before it")
    return "run"


def test_every_block_runs_or_says_why_not():
    every = [b for doc in DOCS for b in blocks(doc)]
    assert len(every) > 20
    for block in every:
        plan(block)
    assert sum(plan(b) == "run" for b in every) >= 10


# --- running a document's blocks ----------------------------------------------------------------


# A line that ends in one `&` (not `&&`): a background job.
_BACKGROUND = re.compile(r"^(?P<command>.*[^&\s])\s*(?<!&)&\s*$")


@dataclass(frozen=True)
class Job:
    """A background job a block started: its command and the file its output goes to."""

    where: str
    command: str
    log: Path

    def report(self, tail_chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no output file)"
        return f"--- background job ({self.where}): {self.command}\n{text[-tail_chars:]}"


class Session:
    """A document's blocks, run in order in one directory, with its background processes ended after."""

    def __init__(self, directory: Path, url: str, timeout_s: float = BLOCK_TIMEOUT_S) -> None:
        self.directory = directory
        self.timeout_s = timeout_s
        bin_dir = directory / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        # `.venv/bin/lessor` and `lessor` in a block are this interpreter's lessor.
        for name, command in (("lessor", f'exec "{sys.executable}" -m lessor "$@"'),
                              ("python", f'exec "{sys.executable}" "$@"')):
            (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
            (bin_dir / name).chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LESSOR_")}
        self.env.update(LESSOR_REDIS_URL=url, COLUMNS="80", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.groups: list[int] = []
        self.jobs: list[Job] = []
        self.count = 0
        self.printed: str | None = None   # what the last block run printed

    def with_job_logs(self, block: Block) -> str:
        """``block``'s shell text with each background job's output sent to a file of its own.

        Before, a job wrote into the files of the block that started it, and a later
        block that hung (a `submit --wait` on a worker started earlier) showed only its
        own output: what the worker was doing was lost.
        """
        lines = block.text.splitlines()
        for i, line in enumerate(lines):
            job = _BACKGROUND.match(line)
            if job is None or line.lstrip().startswith("#"):
                continue
            log = self.directory / f"block_{self.count}_job_{len(self.jobs) + 1}.log"
            self.jobs.append(Job(f"{block.doc.relative_to(ROOT)}:{block.line + 1 + i}", job["command"], log))
            lines[i] = f'{{ {job["command"]}; }} > "{log.name}" 2>&1 &'   # one line: bash's line numbers hold
        return "\n".join(lines) + "\n"

    def run(self, block: Block) -> None:
        self.count += 1
        if block.lang == "python":
            script = self.directory / f"block_{self.count}.py"
            script.write_text(block.text)
            argv = [sys.executable, script.name]
        else:
            script = self.directory / f"block_{self.count}.sh"
            script.write_text(self.with_job_logs(block))
            argv = ["bash", "-e", "-o", "pipefail", script.name]
        out, err = self.directory / f"block_{self.count}.out", self.directory / f"block_{self.count}.err"
        # Files, not pipes: a background job keeps its output open after the block ends.
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(argv, cwd=self.directory, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, start_new_session=True)
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                code = f"no exit within {self.timeout_s:g} s"
        if code != 0:
            jobs = "".join(f"\n{job.report()}" for job in self.jobs)   # a hang's cause is often there
            pytest.fail(f"{block.where()}: the {block.lang} block failed ({code}):\n{block.text}\n"
                        f"--- stdout\n{out.read_text()[-3000:]}\n--- stderr\n{err.read_text()[-3000:]}{jobs}")
        self.printed = out.read_text()

    def check_output(self, block: Block) -> None:
        """The block before printed what ``block`` shows: line for line, ``...`` matching any text."""
        assert self.printed is not None, f"{block.where()}: an output block follows no block that ran"
        printed = [line.rstrip() for line in self.printed.splitlines() if line.strip()]
        expected = [line.rstrip() for line in block.text.splitlines() if line.strip()]
        patterns = [re.compile(".*".join(re.escape(part) for part in line.split("..."))) for line in expected]
        if len(printed) != len(expected) or not all(p.fullmatch(line) for p, line in zip(patterns, printed)):
            pytest.fail(f"{block.where()}: the block before printed\n{self.printed}\nnot\n{block.text}")

    def write(self, block: Block) -> None:
        (self.directory / block.marker.removeprefix("file:").strip()).write_text(block.text)

    def close(self) -> None:
        """End every process the blocks started (background jobs included: one process group per block)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM and self.groups:
                time.sleep(0.2)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_block_of_the_document_runs(doc, flushed, tmp_path):
    session = Session(tmp_path, flushed)
    try:
        for block in blocks(doc):
            action = plan(block)
            if action == "run":
                session.run(block)
            elif action == "file":
                session.write(block)
            elif action == "output":
                session.check_output(block)
    finally:
        session.close()


# --- references: links, tests, checkers, switches, metrics, the ACL, the CLI ------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def test_links_stay_inside_the_repo_and_resolve():
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        assert "../shared" not in doc.read_text(), f"{doc.name} points outside the repo"
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repo"
            assert resolved.exists(), f"{doc.name}: {target} does not exist"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved), f"{doc.name}: no heading #{anchor} in {path or doc.name}"


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def test_the_guarantees_name_real_tests_checkers_and_switches_and_every_checker():
    from lessor.simulations.breakage import Switch

    text = (ROOT / "docs" / "guarantees.md").read_text()
    tests = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text)
    assert len(tests) >= 20
    for path, name in tests:
        assert name in _defined(ROOT / path), f"guarantees.md names {path}::{name}, which does not exist"
    checker_dir = ROOT / "lessor" / "simulations" / "checkers"
    named = set(re.findall(r"`lessor/simulations/checkers/(\w+)\.py`", text))
    for name in named:
        assert (checker_dir / f"{name}.py").exists(), f"guarantees.md names checker {name}, which does not exist"
    every = {p.stem for p in checker_dir.glob("*.py")} - {"__init__", "history"}   # history: not a checker
    assert every <= named, f"checkers no guarantee names: {sorted(every - named)}"
    # A **Switches:** item names switches and the checkers that catch them: nothing else. (Not every
    # switch: the mutation gate, lessor/simulations/mutants.py, holds more than the page lists.)
    switches = {s.value for s in Switch}
    in_lists = {name for item in re.findall(r"\*\*Switches:\*\*(.*?)(?:\n- |\n\n|\Z)", text, flags=re.S)
                for name in re.findall(r"`(\w+)`", item)}
    assert len(in_lists & switches) >= 10
    assert in_lists - switches <= every, f"not switches nor checkers: {sorted(in_lists - switches - every)}"


def test_the_metrics_table_is_what_telemetry_records():
    source = (ROOT / "lessor" / "telemetry.py").read_text()
    recorded = set(re.findall(r'create_\w+\(\s*"(lessor\.[\w.]+)"', source))
    documented = set(re.findall(r"^\| `(lessor\.[\w.]+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.M))
    assert recorded and documented == recorded, (sorted(recorded - documented), sorted(documented - recorded))


def _documented_acl() -> list[str]:
    (block,) = [b for b in blocks(ROOT / "docs" / "operations.md") if b.marker == "acl"]
    return block.text.split()


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def test_the_documented_acl_is_what_lessor_sends_and_suffices(flushed):
    from lessor.doctor import _needed

    rules = _documented_acl()
    assert rules == _needed().replace(" plus ", " ").split(), "docs/operations.md's ACL differs from lessor.doctor"
    if "+" in urlsplit(flushed).scheme:
        pytest.skip("ACL SETUSER goes to one node; the suite's server is a Cluster or Sentinel")
    admin = redis.Redis.from_url(flushed)
    user, password = "lessor-docs-acl", "docs-acl-password"
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "resetkeys", "resetchannels",
                          "-@all", *rules, "+acl|whoami", "+acl|dryrun", "+config|get")
    try:
        url = _with_user(flushed, user, password)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LESSOR_")}
        submit, runs, doctor = _lessor_all(env, ["submit", "square", "--redis-url", url],
                                           ["runs", "--redis-url", url], ["doctor", "--json", "--redis-url", url])
        assert f'"detail": "user {user} may run every command lessor sends"' in doctor
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def test_the_cli_reference_is_the_parser_s_help():
    from lessor.cli.reference import REGENERATE, render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), f"docs/cli.md is out of date: run `{REGENERATE}`"
    reference = (ROOT / "docs" / "cli.md").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSOR_")} | {"COLUMNS": "80"}
    commands = ([], ["submit"], ["bench", "heartbeat"])
    for command, shown in zip(commands, _lessor_all(env, *[[*c, "--help"] for c in commands])):
        assert f"```text\n{shown.rstrip()}\n```" in reference, f"`lessor {' '.join(command)} --help` differs"


def _lessor_all(env: dict, *argvs: list[str]) -> list[str]:
    """Run ``lessor ARGV`` for each at once (they are independent); their outputs, each asserted exit 0."""
    procs = [subprocess.Popen([sys.executable, "-m", "lessor", *argv], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    outputs = []
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        assert proc.returncode == 0, (argv, out, err)
        outputs.append(out)
    return outputs


def test_the_block_rules_catch_an_unmarked_block(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(textwrap.dedent("""\
        ```
        lessor runs
        ```

        <!-- not run: -->
        ```sh
        make test
        ```
        """))
    first, second = blocks(doc)
    with pytest.raises(AssertionError, match="must run"):
        plan(Block(ROOT / "x.md", first.line, first.lang, first.text, first.marker))
    with pytest.raises(AssertionError, match="must say why"):
        plan(Block(ROOT / "x.md", second.line, second.lang, second.text, second.marker))


def test_a_background_job_s_output_is_kept_and_shown_when_a_later_block_times_out(tmp_path):
    session = Session(tmp_path, "redis://127.0.0.1:1", timeout_s=1)
    doc = ROOT / "x.md"
    started = Block(doc, 1, "sh", "true && echo in the foreground\necho the job began | cat; sleep 30 &\n", "")
    try:
        session.run(started)
        assert session.printed == "in the foreground\n"   # the job's output is not the block's
        (job,) = session.jobs
        assert job.where == "x.md:3" and job.command == "echo the job began | cat; sleep 30"
        with pytest.raises(pytest.fail.Exception) as failed:
            session.run(Block(doc, 6, "sh", "sleep 10\n", ""))
    finally:
        session.close()
    message = str(failed.value)
    assert "no exit within 1 s" in message
    assert "--- background job (x.md:3): echo the job began | cat; sleep 30\nthe job began\n" in message
