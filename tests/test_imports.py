"""The import layers hold (`python -m lessor.tools.imports`), and the checker can fail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from lessor.tools.imports import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lessor_imports_are_clean():
    proc = subprocess.run([sys.executable, "-m", "lessor.tools.imports"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = check(os.path.join(ROOT, "lessor"))
    assert report.modules > 50 and report.edges
    assert not report.cli_imports and not report.runtime_cycles and not report.unresolved
    assert not report.upward and not report.unlisted


def _package(tmp_path, files: dict[str, str]) -> str:
    for name, source in files.items():
        path = tmp_path / "lessor" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return str(tmp_path / "lessor")


def test_the_checker_reports_a_cli_import_from_below_and_cycles(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "cli/__init__.py": "def main(): ...\n",
        "cli/render.py": "from lessor.core import fold\n",                  # downward: fine
        "core/__init__.py": "",
        "core/fold.py": "def f():\n    from lessor.cli import main\n",   # below the CLI, in a function
        "scheduler/__init__.py": "",
        "scheduler/a.py": "from . import b\n",                              # a 2-module runtime cycle
        "scheduler/b.py": "import lessor.scheduler.a\n",
        "scheduler/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lessor.scheduler import d\n",
        "scheduler/d.py": "from lessor.scheduler.c import X\n",             # closed only by TYPE_CHECKING
        "leasing/__init__.py": "",
        "leasing/up.py": "from lessor.scheduler.a import thing\nfrom lessor.scheduler.gone import y\n",
    })
    report = check(root)
    assert [(e.importer, e.imported, e.kind) for e in report.cli_imports] == [
        ("lessor.core.fold", "lessor.cli", "function")]
    assert report.runtime_cycles == [["lessor.scheduler.a", "lessor.scheduler.b"]]
    assert report.type_cycles == [["lessor.scheduler.c", "lessor.scheduler.d"]]
    assert [(e.importer, e.imported) for e in report.upward] == [("lessor.leasing.up", "lessor.scheduler.a")]
    assert [e.imported for e in report.unresolved] == ["lessor.scheduler.gone"]
    assert report.failed

    proc = subprocess.run([sys.executable, "-m", "lessor.tools.imports", "--root", root], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "lessor/core/fold.py:2  lessor.core.fold -> lessor.cli (in a function)" in proc.stdout
    assert "runtime import cycles: 1\n  lessor.scheduler.a, lessor.scheduler.b" in proc.stdout


def test_a_type_level_cycle_alone_does_not_fail(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "scheduler/__init__.py": "",
        "scheduler/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from lessor.scheduler.d import D\n",
        "scheduler/d.py": "from lessor.scheduler import c\n",
    })
    report = check(root)
    assert report.type_cycles == [["lessor.scheduler.c", "lessor.scheduler.d"]] and not report.failed
