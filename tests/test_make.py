"""The Makefile: `make demo` installs the core package only; `make test` adds the test extras (dry run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(target: str, venv: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_demo_installs_the_core_package_only_and_test_adds_the_extras(tmp_path):
    demo = _dry_run("demo", tmp_path / "venv")
    installs = [line for line in demo.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert any(line.rstrip().endswith("-e .") for line in installs), installs
    assert not any("[" in line for line in installs), installs  # no [reference], [docs], [test]
    assert "xkmcast demo" in demo
    test = _dry_run("test", tmp_path / "venv")
    extras = set(re.findall(r'-e "\.\[([^\]]+)\]"', test)[0].split(","))
    assert {"test", "reference"} <= extras and "pytest" in test
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")
