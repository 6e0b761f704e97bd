"""The documentation: the site builds in strict mode, and the user guide's snippets match the code.

Snippet convention (docs/guide/*.md): a fenced ```python block preceded by the line
``<!-- docs-test: run -->`` is executed; the runnable blocks of one page run in order in one
namespace (a later block may use names an earlier one defined), in a temporary working directory.
Every other ```python block is illustrative: it must still compile. Every ``xkmcast <command>`` in a
```bash block must name a command the CLI has.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDE = sorted((DOCS / "guide").glob("*.md"))
MARKER = "<!-- docs-test: run -->"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str, bool, int]]:
    """(language, code, runnable, line number) of every fenced block of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        runnable = bool(before) and before[-1].strip() == MARKER
        out.append((match.group(1), match.group(2), runnable, text.count("\n", 0, match.start()) + 1))
    return out


def test_the_guide_has_its_pages_and_runnable_snippets():
    names = {p.stem for p in GUIDE}
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = re.findall(r"guide/([\w-]+)\.md", str(nav))
    assert sorted(listed) == sorted(names), "every guide page is in the nav and every nav entry exists"
    runnable = {p.stem for p in GUIDE if any(r for _, _, r, _ in blocks(p))}
    assert {"accessor", "data", "training", "scoring"} <= runnable


@pytest.mark.parametrize("page", GUIDE + [DOCS / "index.md"], ids=lambda p: p.stem)
def test_every_python_snippet_compiles(page):
    for lang, code, _, line in blocks(page):
        if lang == "python":
            compile(code, f"{page.name}:{line}", "exec")


def _cli_commands() -> set[str]:
    from xkmcast.cli import app

    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups}


@pytest.mark.parametrize("page", GUIDE + [DOCS / "index.md"], ids=lambda p: p.stem)
def test_cli_commands_in_snippets_exist(page):
    known = _cli_commands()
    for lang, code, _, line in blocks(page):
        if lang not in ("bash", "sh", "console", ""):
            continue
        for used in re.findall(r"(?:^|\s)(?:xkmcast|-m xkmcast\.cli)\s+([a-z][\w-]*)", code, re.M):
            assert used in known, f"{page.name}:{line}: `xkmcast {used}` is not a command ({sorted(known)})"


RUNNABLE = [p for p in GUIDE if any(r for _, _, r, _ in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.stem)
def test_runnable_snippets_execute(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for lang, code, runnable, line in blocks(page):
        if runnable:
            assert lang == "python", f"{page.name}:{line}: only python blocks can be marked runnable"
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - our own docs


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path):
    """``mkdocs build --strict`` of a copy of docs/ (so nothing is written into the repository).

    docs/benchmarks.md is written by the benchmark job; when it is absent here the copy gets a
    placeholder so that the nav entry resolves."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install 'xkmcast[docs]')")
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    if not (docs / "benchmarks.md").exists():
        (docs / "benchmarks.md").write_text("# Benchmarks\n\nWritten by `make bench`.\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["site_dir"] = str(tmp_path / "site")
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    cfg_path = tmp_path / "mkdocs.yml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([mkdocs, "build", "--strict", "-f", str(cfg_path)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for page in ["index.html", "api/index.html", *[f"guide/{p.stem}/index.html" for p in GUIDE]]:
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="xkmcast.fields.downscale.downscale"' in api and 'id="xkmcast.fields.regrid.Regridder"' in api


def _xkmcast_references(code: str) -> tuple[set[tuple[str, str]], set[tuple[str, frozenset]]]:
    """(module, name) imported from xkmcast, and (accessor method, keywords) called as ``.kmcast.<m>(...)``."""
    import ast

    names, calls = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xkmcast":
            names |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "kmcast":
                calls.add((node.func.attr, frozenset(k.arg for k in node.keywords if k.arg)))
    return names, calls


@pytest.mark.parametrize("page", GUIDE + [DOCS / "index.md"], ids=lambda p: p.stem)
def test_illustrative_snippets_name_what_exists(page):
    """Every block, also the ones not run: names imported from xkmcast exist, and every
    ``.kmcast.<method>(..., key=...)`` is an accessor method taking those keywords."""
    import importlib
    import inspect

    import xkmcast  # noqa: F401  (registers the accessor)
    from xkmcast.accessor import KmcastDatasetAccessor

    for lang, code, _, line in blocks(page):
        if lang != "python":
            continue
        names, calls = _xkmcast_references(code)
        for module, name in names:
            mod = importlib.import_module(module)
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), \
                f"{page.name}:{line}: `from {module} import {name}`: no such name"
        for method, keywords in calls:
            assert hasattr(KmcastDatasetAccessor, method), f"{page.name}:{line}: no accessor method {method!r}"
            params = inspect.signature(getattr(KmcastDatasetAccessor, method)).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                unknown = keywords - set(params)
                assert not unknown, f"{page.name}:{line}: .kmcast.{method}() has no argument {sorted(unknown)}"
