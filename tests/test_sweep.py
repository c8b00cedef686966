"""Sweeps on a local Ray instance (2 CPUs, started once for this module).

The jobs run a test-only analysis, `sweep-probe`, registered through the real plugin mechanism (an
`interp.plugins` entry point in a dist-info folder on the path of the driver and of every Ray worker):
it can fail, kill its own worker, or hang once, which no real analysis does on demand. It writes its
output through interp.output.staged_output like every command.
"""
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from interp.cli import main  # noqa: E402
from interp.sweep import load_spec, run_sweep, summarize  # noqa: E402
from interp.sweep import registry  # noqa: E402

PROBE = textwrap.dedent('''
    """sweep-probe: a cheap analysis for the sweep tests."""
    import json, os, signal, time
    from pathlib import Path
    from typing import Optional

    import typer


    def probe_command(
        out: Path = typer.Option(..., "--out"), as_json: bool = typer.Option(False, "--json"),
        value: float = typer.Option(1.0, "--value"), fail: bool = typer.Option(False, "--fail"),
        kill_once: Optional[Path] = typer.Option(None, "--kill-once"),
        hang_unless: Optional[Path] = typer.Option(None, "--hang-unless"),
        seconds: float = typer.Option(0.0, "--seconds", min=0.0),
    ):
        """Write probe.json with value and value squared."""
        from interp.output import staged_output, write_json

        time.sleep(seconds)
        if fail:
            raise RuntimeError(f"probe asked to fail (value {value})")
        if hang_unless is not None and not hang_unless.exists():  # a job the driver is stopped during
            time.sleep(120)
        with staged_output(out) as stage:
            (stage / "probe.html").write_text("<html><body>probe</body></html>")
            if kill_once is not None and not kill_once.exists():  # die with a half-written stage
                kill_once.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            write_json(stage / "probe.json", "probe", None, {"value": value, "square": value * value,
                                                             "pid": os.getpid()})


    def register(registry):
        registry.command("sweep-probe", probe_command)
''')


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray instance of 2 CPUs for this module, with the probe plugin importable everywhere."""
    plug = tmp_path_factory.mktemp("probe_plugin")
    (plug / "sweep_probe_plugin.py").write_text(PROBE)
    info = plug / "sweep_probe_plugin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sweep-probe-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[interp.plugins]\nsweep_probe = sweep_probe_plugin:register\n")
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(plug))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plug), saved_env]))
    registry.command_tree.cache_clear()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        registry.command_tree.cache_clear()


def write_spec(path: Path, body: str, retries: int = 1) -> Path:
    path.write_text(f"[sweep]\nmax_retries = {retries}\n[resources]\nnum_cpus = 1\n" + textwrap.dedent(body))
    return path


def attempts(folder: Path) -> int:
    return len((folder / "attempts.log").read_text().splitlines())


def test_sweep_of_four_jobs_completes_and_summary_matches_the_jobs_json(ray_local, tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", """
        [[jobs]]
        analysis = "sweep-probe"
        axes = { value = [1.5, 2.0, 3.0, -4.0] }
        params = { seconds = 0.5 }
    """)
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "4 ran, 0 already done, 0 failed" in capsys.readouterr().out
    jobs = load_spec(spec).jobs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"total": 4, "done": 4, "failed": 0, "missing": 0}
    by_id = {j["id"]: j for j in summary["jobs"]}
    for job in jobs:
        folder = out / "jobs" / job.id
        probe = json.loads((folder / "probe.json").read_text())
        record = json.loads((folder / "job.json").read_text())
        value = job.options["value"]
        assert probe["value"] == value and probe["square"] == value * value  # the job ran with its own value
        assert (folder / "done").is_file() and record["attempt"] == 1 and record["options"] == job.options
        entry = by_id[job.id]
        assert entry["status"] == "done" and entry["seconds"] == record["seconds"] and entry["attempts"] == 1
        assert entry["outputs"] == [f"jobs/{job.id}/probe.json"]
        assert entry["report"] == f"jobs/{job.id}/probe.html" and (out / entry["report"]).is_file()
    html = (out / "summary.html").read_text()
    assert all(f'href="jobs/{j.id}/probe.html"' in html for j in jobs)
    assert not list((out / "jobs").glob(".*partial*"))  # the staged outputs all moved into place
    # the same command again: nothing to run, nothing recomputed
    stamps = {j.id: (out / "jobs" / j.id / "done").stat().st_mtime_ns for j in jobs}
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "0 ran, 4 already done" in capsys.readouterr().out
    assert stamps == {j.id: (out / "jobs" / j.id / "done").stat().st_mtime_ns for j in jobs}


def test_a_job_that_raises_is_retried_then_reported_and_the_rest_complete(ray_local, tmp_path):
    spec = write_spec(tmp_path / "s.toml", """
        [[jobs]]
        analysis = "sweep-probe"
        axes = { value = [1.0, 2.0] }
        [[jobs]]
        analysis = "sweep-probe"
        params = { value = 7.0, fail = true }
    """, retries=2)
    out = tmp_path / "run"
    plan = load_spec(spec)
    bad = next(j for j in plan.jobs if j.options.get("fail"))
    result = run_sweep(plan, out, progress=False)
    assert set(result.ran) == {j.id for j in plan.jobs if j is not bad}
    assert list(result.failed) == [bad.id]
    assert result.failed[bad.id] == "RuntimeError: probe asked to fail (value 7.0)"
    assert attempts(out / "jobs" / bad.id) == 3  # the first run and two retries
    assert not (out / "jobs" / bad.id / "done").exists()
    summary = summarize(out, plan.jobs)
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 1
    assert summary["failures"] == [{"id": bad.id, "analysis": "sweep-probe", "options": bad.options, "attempts": 3,
                                    "error": "RuntimeError: probe asked to fail (value 7.0)"}]
    assert "probe asked to fail" in (out / "summary.html").read_text()


def test_a_worker_killed_mid_job_is_retried_and_nothing_is_lost(ray_local, tmp_path):
    marker = tmp_path / "killed-once"
    spec = write_spec(tmp_path / "s.toml", f"""
        [[jobs]]
        analysis = "sweep-probe"
        params = {{ value = 5.0, kill_once = "{marker}" }}
        [[jobs]]
        analysis = "sweep-probe"
        axes = {{ value = [1.0, 2.0] }}
        params = {{ seconds = 0.5 }}
    """, retries=1)
    out = tmp_path / "run"
    plan = load_spec(spec)
    result = run_sweep(plan, out, progress=False)
    assert result.ok and len(result.ran) == 3
    killer = next(j for j in plan.jobs if "kill_once" in j.options)
    folder = out / "jobs" / killer.id
    killed_pid = int(marker.read_text())
    probe = json.loads((folder / "probe.json").read_text())
    assert probe["square"] == 25.0 and probe["pid"] != killed_pid  # the retry ran in a fresh worker
    assert attempts(folder) == 2
    assert not list((out / "jobs").glob(".*partial*")) and not (folder / "running").exists()
    for job in plan.jobs:
        assert json.loads((out / "jobs" / job.id / "probe.json").read_text())["value"] == job.options["value"]


def test_a_rerun_after_an_interrupted_driver_runs_only_the_missing_jobs(ray_local, tmp_path):
    spec = write_spec(tmp_path / "s.toml", f"""
        [[jobs]]
        analysis = "sweep-probe"
        axes = {{ value = [1.0, 2.0] }}
        [[jobs]]
        analysis = "sweep-probe"
        axes = {{ value = [3.0, 4.0] }}
        params = {{ hang_unless = "{tmp_path}/released" }}
    """)
    out = tmp_path / "run"
    plan = load_spec(spec)
    fast = [j.id for j in plan.jobs if "hang_unless" not in j.options]

    def interrupt(counts):
        if counts["done"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C does to the driver

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, out, progress=False, on_update=interrupt)
    finished = {j.id for j in plan.jobs if (out / "jobs" / j.id / "done").exists()}
    assert finished == set(fast)
    assert json.loads((out / "summary.json").read_text())["counts"] == {"total": 4, "done": 2, "failed": 0,
                                                                         "missing": 2}
    stamps = {i: (out / "jobs" / i / "job.json").stat().st_mtime_ns for i in fast}
    (tmp_path / "released").write_text("")  # the stopped jobs would now finish at once
    result = run_sweep(plan, out, progress=False)
    assert sorted(result.skipped) == sorted(fast)
    assert sorted(result.ran) == sorted(j.id for j in plan.jobs if j.id not in fast)
    assert stamps == {i: (out / "jobs" / i / "job.json").stat().st_mtime_ns for i in fast}
    assert all(attempts(out / "jobs" / i) == 1 for i in fast)
    assert summarize(out, plan.jobs)["counts"]["done"] == 4


@pytest.mark.parametrize("body, message", [
    ('[[jobs]]\nanalysis = "no-such-analysis"\n', "unknown analysis 'no-such-analysis'"),
    ('[[jobs]]\nanalysis = "sweep-probe"\naxes = { value = [] }\n', "the axis 'value' is empty"),
    ('[[jobs]]\nanalysis = "sweep-probe"\nparams = { valeu = 1 }\n', "sweep-probe has no option 'valeu'"),
    ('[[jobs]]\nanalysis = "sweep-probe"\nparams = { value = "abc" }\n', "Invalid value for '--value'"),
    ('[[jobs]]\nanalysis = "sweep-probe"\nparams = { seconds = -1 }\n', "seconds"),
    ('[[jobs]\nanalysis = "heads"\n', "is not valid TOML"),
    ('[[jobs]]\nanalysis = "heads"\nresources = { memory = "lots" }\n', "is not a size"),
    ("", "no jobs"),
    ('sweep = 3\n[[jobs]]\nanalysis = "heads"\n', "sweep = 3 must be a table"),
    ("jobs = [1]\n", "1 is not a table"),
    # a built-in command's own checks run for every job before Ray starts
    ('[[jobs]]\nanalysis = "heads"\nmodel = "no-such-model"\n', "heads: unknown model 'no-such-model'"),
    ('[[jobs]]\nanalysis = "heads"\nparams = { max_tokens = 99999 }\n', "exceeds the context of smollm2-135m"),
    ('[[jobs]]\nanalysis = "trace"\nparams = { text = ["hi"], layers = "0,40" }\n', "--layers 40 is out of range"),
])
def test_bad_specs_answer_with_one_line_and_exit_2_before_ray_starts(ray_local, tmp_path, capsys, monkeypatch,
                                                                     body, message):
    import interp.sweep.runner as runner

    monkeypatch.setattr(runner, "connect", lambda address: pytest.fail("Ray was reached"))
    spec = tmp_path / "bad.toml"
    spec.write_text(body)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interp: error:") and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "no Ray cluster answers there"),
    ("not an address", "is not a Ray address"),
])
def test_a_bad_address_answers_with_one_line_and_exit_2(ray_local, tmp_path, capsys, monkeypatch, address, message):
    import interp.sweep.runner as runner

    monkeypatch.setattr(runner, "connect", lambda address: pytest.fail("Ray was reached"))
    spec = write_spec(tmp_path / "s.toml", '[[jobs]]\nanalysis = "sweep-probe"\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run"), "--address", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_sweep_of_real_analyses_on_tiny_models_joins_their_head_taxonomies(ray_local, tmp_path):
    """`heads` and `sinks` (the real commands) on two tiny Hugging Face models saved with save_pretrained."""
    from tiny import save_tiny_hf

    models = {}
    for label in ("llama", "gpt2"):
        save_tiny_hf(label, tmp_path / label)
        models[label] = str(tmp_path / label)
    spec = write_spec(tmp_path / "s.toml", f"""
        [[jobs]]
        analysis = ["heads", "sinks"]
        model = ["{models['llama']}", "{models['gpt2']}"]
        params = {{ n_texts = 2, max_tokens = 16 }}
    """)
    out = tmp_path / "run"
    plan = load_spec(spec)
    result = run_sweep(plan, out, progress=False)
    assert result.ok and len(result.ran) == 4, result.failed
    taxonomy = {row["model"]: row for row in summarize(out, plan.jobs)["taxonomy"]}
    assert len(taxonomy) == 2
    for job in plan.jobs:
        doc = json.loads((out / "jobs" / job.id / f"{job.analysis}.json").read_text())
        row = taxonomy[doc["model"]]
        assert job.id in row["jobs"]
        if job.analysis == "sinks":
            assert row["sink_ratio_pct"] == doc["sink_ratio"]
        else:
            rows = doc["heads"]["rows"]
            top = max(rows, key=lambda r: r["induction"])
            assert row["top_induction_head"] == f"{top['label']} ({top['induction']:.2f})"
            assert row["induction_heads_over_0.1"] == sum(r["induction"] > 0.1 for r in rows)
            assert (row["n_layers"], row["n_heads"]) == (2, 4)
