"""Each notebook in notebooks/ runs top to bottom on the public API, in a fresh kernel."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, smollm2, tmp_path):
    """`smollm2` makes sure the session cache holds the converted model the notebook loads."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


CHECKED = ["01_quickstart", "02_ioi_circuit", "03_sinks_and_dormant_heads", "04_retrieval_and_safety_heads", "05_attention_saes"]


@pytest.mark.parametrize("stem", CHECKED)
def test_notebook_asserts_its_headline_numbers(stem):
    """Executing a notebook checks values, not only that it runs: cells tagged "checks" assert the headline
    numbers within a tolerance, each right after the cell that computes them (the execution test above
    fails when one does not hold)."""
    nb = nbformat.read(Path(__file__).parent.parent / "notebooks" / f"{stem}.ipynb", as_version=4)
    checks = [c for c in nb.cells if c.cell_type == "code" and "checks" in c.get("metadata", {}).get("tags", [])]
    assert len(checks) >= 3 and all("assert " in c.source for c in checks)
    assert sum(("abs(" in c.source and "<" in c.source) or "==" in c.source for c in checks) >= 3
