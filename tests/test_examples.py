"""The examples run: every script in ``examples/`` as a subprocess, the
notebook executed cell by cell with nbclient (in a subprocess too, so that the
Jupyter machinery's own warnings stay out of this test session), and the
README's code blocks marked ``<!-- test: NAME -->`` (so the README cannot drift)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def env():
    e = dict(os.environ)
    e["MPLBACKEND"] = "Agg"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["JUPYTER_PLATFORM_DIRS"] = "1"  # silences jupyter_core's path-migration warning
    return e


# what each script needs beyond numpy and kdtemp
SCRIPT_NEEDS = {"torch_training_loop.py": ("torch",)}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_script_runs(script, tmp_path):
    needs = SCRIPT_NEEDS.get(script.name, ())
    if not have(*needs):
        pytest.skip(f"{script.name} needs {', '.join(needs)}")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip(), "the example printed nothing"


def test_numpy_example_loss_goes_down(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "numpy_training_loop.py")],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [float(ln.split("train loss")[1].split()[0])
              for ln in r.stdout.splitlines() if "train loss" in ln]
    assert len(losses) >= 10 and losses[-1] < 0.5 * losses[0]
    assert "ok: the loss went down" in r.stdout


def readme_block(name):
    """The fenced code block right after ``<!-- test: NAME ... -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"<!-- test: " + re.escape(name) + r"\b[^>]*-->\s*\n"
                       r"```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    assert len(found) == 1, f"README.md has {len(found)} blocks marked test: {name}"
    return found[0]


@pytest.mark.skipif(not have("torch"), reason="the README's PyTorch loop needs torch")
def test_readme_torch_training_loop_runs(tmp_path):
    """The PyTorch section's training loop is complete: it runs as it stands."""
    code = readme_block("torch-loop")
    assert "kt.KDLoss(scheduler=dts" in code and "dts.update(epoch" in code
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    epochs = re.findall(r"^epoch (\d+): loss (\S+)  T (\S+)$", r.stdout, flags=re.M)
    assert [int(e) for e, _, _ in epochs] == [1, 2, 3, 4, 5], r.stdout
    for _, loss, temperature in epochs:
        assert math.isfinite(float(loss)) and float(loss) >= 0.0
        assert 2.0 <= float(temperature) <= 4.0  # DTS stays within [min, max]


RUN_NOTEBOOK = r"""
import json, sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
outputs = []
for cell in nb.cells:
    if cell.cell_type != "code":
        continue
    for out in cell.outputs:
        if out.output_type == "error":
            raise SystemExit("cell failed: " + out.ename + ": " + out.evalue)
        text = out.get("text") or out.get("data", {}).get("text/plain", "")
        outputs.append({"type": out.output_type, "text": text,
                        "mime": sorted(out.get("data", {}))})
print(json.dumps(outputs))
"""


@pytest.mark.skipif(not have("nbclient", "nbformat", "ipykernel", "torch", "sklearn",
                             "matplotlib"),
                    reason="the notebook needs nbclient, nbformat, ipykernel, torch, "
                           "scikit-learn and matplotlib")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(notebook, tmp_path):
    r = subprocess.run([sys.executable, "-c", RUN_NOTEBOOK, str(notebook), str(tmp_path)],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outputs = json.loads(r.stdout.strip().splitlines()[-1])
    text = "\n".join(o["text"] for o in outputs)
    if notebook.name == "profile_temperatures.ipynb":
        assert "accuracy" in text and "KD loss" in text  # row_stats and the profile table
        assert "teacher T=" in text and "ValueError: no teacher temperature" in text
        assert any("image/png" in o["mime"] for o in outputs), "no figure was displayed"
