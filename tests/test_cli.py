"""The `interp` command as a user runs it: exit codes, one-line errors, whole-or-nothing output."""
import json
import subprocess
import sys

import pytest

from interp.capture import Capture


def run(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _one_clean_line(proc):
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("interp: converting")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("interp: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["atlas", "--model", "gpt-17", "--out", "{out}"], "unknown model 'gpt-17'; available: smollm2-135m"),
        (["trace", "--model", "{tmp}/none.gguf", "--out", "{out}", "-t", "hi"], "does not exist"),
        (["trace", "--out", "{out}"], "no input text"),
        (["trace", "--out", "{out}", "-t", "hi", "--layers", "3-x"], "is not a list like 0,2,5-7"),
        (["atlas", "--out", "{out}", "--device", "cuda:0"], "no CUDA GPU"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["atlas", "--out", "{out}", "--n-texts", "0"], "--n-texts"),
    ],
)
def test_bad_input_exits_2_with_one_line(smollm2, tmp_path, args, expected):
    """`smollm2`: the model is already converted, so stderr holds only the error line."""
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    proc = run(*[a.format(out=out, tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert expected in _one_clean_line(proc)
    assert not out.exists()


def test_failure_mid_run_leaves_nothing_half_written(smollm2, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = run("trace", "--out", str(out), "-t", "a prompt longer than four tokens, surely", "--what", "pattern",
               "--max-pattern-tokens", "4")
    assert proc.returncode == 2 and "max_pattern_tokens" in _one_clean_line(proc)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_models_json():
    proc = run("models", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "interp.models/1"
    assert {m["name"] for m in doc["models"]} == {"smollm2-135m", "gemma3-270m"}


def test_trace_writes_capture_and_head_means(smollm2, tmp_path):
    out = tmp_path / "trace"
    proc = run("trace", "--out", str(out), "-t", "When Mary and John went to the store,", "-t", "The cat sat",
               "--layers", "0,5-6", "--heads", "0-2", "--what", "z,v_norm,entropy", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "interp.trace/1" and doc["model"] == "smollm2-135m" and doc["layers"] == [0, 5, 6]
    cap = Capture.load(out / "capture")
    assert cap.get("z", 5, 1).shape == (3, 3, 64)
    rows = json.loads((out / "trace.json").read_text())["head_means"]["rows"]
    assert len(rows) == 9 and {"v_norm", "entropy"} <= set(rows[0])


def test_atlas_writes_self_contained_report(smollm2, tmp_path):
    out = tmp_path / "atlas"
    proc = run("atlas", "--out", str(out), "--n-texts", "3", "--max-tokens", "32", timeout=1500)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    assert "<script src=" not in page and "Plotly" in page and "Model card" in page
    doc = json.loads((out / "atlas.json").read_text())
    assert doc["schema"] == "interp.atlas/1" and doc["model"] == "smollm2-135m"
    assert doc["card"]["n_heads"] == 9 and doc["card"]["n_key_value_heads"] == 3
    assert len(doc["sections"]["head_summary"]["rows"]) == 30 * 9


def test_trace_stats_uses_kernels_and_writes_shards(smollm2, tmp_path):
    out = tmp_path / "stats"
    proc = run("trace", "--stats", "--received", "--out", str(out), "-t", "When Mary and John went to the store, John gave a drink to")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "trace.json").read_text())
    assert doc["mode"] == "stats" and doc["lengths"] == [14]  # SmolLM2 prepends no BOS
    assert {"alpha_first", "sink_rate", "entropy"} <= set(doc["head_means"]["metrics"])
    from safetensors.torch import load_file

    shard = load_file(str(out / "stats" / "stats-00000.safetensors"))
    assert shard["entropy"].shape == (30, 9, 14) and shard["alpha"].shape == (30, 9, 14)


@pytest.mark.parametrize("command, args, schema_file", [
    ("sinks", ["--n-texts", "3"], "sinks.json"),
    ("heads", ["--n-texts", "3", "--max-tokens", "32"], "heads.json"),
    ("dormant", ["--domains", "legal,repeated", "--n-texts", "2", "--max-tokens", "48"], "dormant.json"),
])
def test_analysis_commands_write_json_and_report(smollm2, tmp_path, command, args, schema_file):
    out = tmp_path / command
    proc = run(command, "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / schema_file).read_text())
    assert doc["schema"] == f"interp.{command}/1" and doc["model"] == "smollm2-135m"
    page = (out / f"{command}.html").read_text()
    assert "<script src=" not in page and "Plotly" in page


def test_dormant_rejects_an_unknown_domain(tmp_path):
    proc = run("dormant", "--out", str(tmp_path / "d"), "--domains", "prose,poetry")
    assert proc.returncode == 2 and "unknown domain 'poetry'" in _one_clean_line(proc)
    assert not (tmp_path / "d").exists()
