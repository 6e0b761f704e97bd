"""The notebooks in ``notebooks/``: stored clean, and each one runs top to bottom without an error.

Execution uses nbclient with a kernel of *this* Python (``sys.executable``): the test writes its own
kernel spec, under a name of its own, into a temporary folder put first on ``JUPYTER_PATH``. So it
does not depend on which kernels Jupyter has registered (a fresh ``.venv`` from ``make test``, or a
user-level "python3" kernel of another interpreter). Each notebook runs in a fresh kernel
with ``TMPDIR`` pointing at an empty folder and its working directory in another one; afterwards
both must be empty and ``notebooks/`` unchanged, since the notebooks promise to write only into a
``tempfile`` folder that they delete at the end.

The kernel gets ``OMP_NUM_THREADS=1``, like the rest of the suite (see ``conftest.py``): the
networks are tiny, and on a shared 2-core machine two intra-op threads were 5x slower here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the [test] extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the [test] extra")
pytest.importorskip("ipykernel", reason="ipykernel is in the [test] extra")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; every notebook as a whole takes well under 2 minutes on 2 cores
KERNEL_NAME = "xkmcast-test-python"


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:4] == [
        "01-quickstart.ipynb",
        "02-forecast-rollout.ipynb",
        "03-train-on-your-own-data.ipynb",
        "04-catalogs-and-regridding.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    """Valid nbformat 4, stored without outputs or execution counts, kernel spec "python3"."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} hold outputs: clear them before committing"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data folder holding one kernel spec that starts ipykernel with this very Python."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"xkmcast tests ({sys.executable})",
        "language": "python",
    }))
    return root


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# torch creates its compiler cache folder in TMPDIR on first use: not the notebook's doing
_NOT_OURS = ("torchinductor_",)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, jupyter_path, tmp_path, monkeypatch, record_property):
    from nbclient import NotebookClient

    # JUPYTER_PATH comes first in the kernel search path: nbclient finds our spec by its name, starts
    # the kernel and shuts it down at the end.
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_path),
                                                                      os.environ.get("JUPYTER_PATH")])))
    nb = nbformat.read(path, as_version=4)
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    drop = ("MPLBACKEND", "XKMCAST_DATA_DIR", "XKMCAST_REGISTRY", "XKMCAST_BASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    before = _snapshot(NOTEBOOK_DIR)

    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError, naming the cell, on any error
    seconds = time.perf_counter() - start

    record_property("seconds", round(seconds, 1))
    print(f"{path.name}: {seconds:.1f} s")
    assert _snapshot(NOTEBOOK_DIR) == before, "the notebook wrote into notebooks/"
    assert not list(cwd.iterdir()), f"left files in its working directory: {sorted(os.listdir(cwd))}"
    left = sorted(p.name for p in tmp.iterdir() if not p.name.startswith(_NOT_OURS))
    assert not left, f"left files in the temporary directory: {left}"
