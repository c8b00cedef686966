"""benchmarks/gpu_check.py, the one-command GPU acceptance, run here in its CPU dry-run mode.

The dry run goes through every part (the cuda-marked tests, which skip without a GPU; attention
against SDPA; the statistics trace; the needle test; SAE training) at tiny shapes under Triton's
interpreter with a tiny random Llama, so the script that a short GPU loan depends on is itself
tested: it must finish, write a JSON with every part and a Markdown section, and leave
benchmarks/RESULTS.md alone.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"cuda_tests", "attention", "trace", "needle", "sae"}


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - start
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    [json_path] = tmp_path.glob("gpu_check-*.json")
    [md_path] = tmp_path.glob("gpu_check-*.md")
    report = json.loads(json_path.read_text())
    assert report["schema"] == "interp.gpu_check/1" and report["small"] is True
    assert set(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["note"])
    rows = report["parts"]["attention"]["data"]["rows"]
    assert rows and all(r["ours_ms"] > 0 and r["received_ms"] > 0 and r["math_ms"] > 0 for r in rows)
    assert "best_configs" in report["parts"]["attention"]["data"]
    assert [r["N"] for r in report["parts"]["trace"]["data"]["rows"]] == report["settings"]["trace_lengths"]
    assert report["parts"]["sae"]["data"]["tokens_per_s"] > 0
    assert report["parts"]["needle"]["data"]["tests"] == 3
    text = md_path.read_text()
    assert text.startswith("## GPU check ") and "Dry run on the CPU" in text
    assert results.read_bytes() == before  # a dry run never writes RESULTS.md
    print(f"dry run: {seconds:.0f} s")


def test_gpu_check_refuses_unknown_parts(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bad = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--parts", "attention,bogus",
                          "--out-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bogus" in bad.stderr and "Traceback" not in bad.stderr
    assert not list(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_without_a_gpu_points_at_the_dry_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    nogpu = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out-dir", str(tmp_path)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert nogpu.returncode == 2 and "--dry-run" in nogpu.stderr and "Traceback" not in nogpu.stderr
    assert not list(tmp_path.iterdir())  # refused before writing anything


def _gpu_run(tmp_path, loads, *args):
    env = dict(os.environ, TRITON_INTERPRET="1", GPU_KIT=str(tmp_path / "kit"), GPU_LOADS=str(loads),
               OUT=str(tmp_path / "out"), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    (tmp_path / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", "tools/gpu_run.sh", "attention", "--dry-run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def _loads(tmp_path, payload: bytes, second: bytes | None = None):
    """Two carried loads as tools/gpu_kit.sh writes them: the halves of a file and its sha256."""
    import hashlib

    loads = tmp_path / "loads"
    for name in ("a", "b"):
        (loads / name).mkdir(parents=True)
        (loads / name / "smollm2.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  model.gguf\n")
    (loads / "a" / "smollm2.part1").write_bytes(payload[:100])
    (loads / "b" / "smollm2.part2").write_bytes(payload[100:] if second is None else second)
    return loads


def test_gpu_run_assembles_the_carried_halves_and_hands_the_model_over(tmp_path):
    payload = os.urandom(1000)
    done = _gpu_run(tmp_path, _loads(tmp_path, payload))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checksum ok" in done.stderr
    assert (tmp_path / "kit" / "model.gguf").read_bytes() == payload
    [report] = (tmp_path / "out").glob("gpu_check-*.json")
    assert "--model-file" in json.loads(report.read_text())["command"]


def test_gpu_run_refuses_halves_that_do_not_match_their_checksum(tmp_path):
    payload = os.urandom(1000)
    done = _gpu_run(tmp_path, _loads(tmp_path, payload, second=os.urandom(900)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not match its checksum" in done.stderr
    assert not (tmp_path / "kit" / "model.gguf").exists()
    [report] = (tmp_path / "out").glob("gpu_check-*.json")
    assert "--model-file" not in json.loads(report.read_text())["command"]


def test_the_random_weight_stand_in_has_smollm2s_shape(smollm2):
    """Where SmolLM2's weights cannot travel, the GPU check times a model of its exact shape."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    stand_in = gpu_check.random_smollm2("cpu", None)
    for key in set(gpu_check.SMOLLM2_SHAPE) - {"normalization_type", "eps"}:
        assert getattr(stand_in.cfg, key) == getattr(smollm2.cfg, key), key
    assert stand_in.cfg.eps == pytest.approx(smollm2.cfg.eps)
    assert smollm2.cfg.normalization_type == "RMSPre"  # the real one has its norm weights folded in
    real = {n: p.shape for n, p in smollm2.named_parameters() if "ln" not in n}
    assert {n: p.shape for n, p in stand_in.named_parameters() if "ln" not in n} == real
