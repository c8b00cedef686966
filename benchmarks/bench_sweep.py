"""Sweep speed-up and Ray's per-job overhead on this machine.

1. Four real jobs (`interp heads` on SmolLM2, seeds 0-3) one after another in one process, each with
   every core's threads, against the same four jobs as a sweep on a local Ray instance (one core per
   job). The sweep's time includes Ray's start and its workers' imports, as a user pays them.
2. Ray's overhead per job: jobs whose command returns at once (a missing --model: InputError, not
   retried), submitted one at a time to warm workers: submission, scheduling, the job folder's
   bookkeeping and the result, without compute.

    .venv/bin/python benchmarks/bench_sweep.py [--n-texts 4] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-texts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--overhead-jobs", type=int, default=20)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    spec_path = work / "sweep.toml"
    spec_path.write_text(f"""
[sweep]
max_retries = 0
[resources]
num_cpus = 1
[[jobs]]
analysis = "heads"
model = "smollm2-135m"
params = {{ n_texts = {args.n_texts}, max_tokens = {args.max_tokens} }}
axes = {{ seed = [0, 1, 2, 3] }}
""")
    import torch

    from interp.loading import load_model
    from interp.sweep import load_spec, run_sweep
    from interp.sweep.registry import invoke

    spec = load_spec(spec_path)  # builds the command tree (imports every plugin) outside the timings
    load_model("smollm2-135m", device="cpu")  # converted into the cache before anything is timed
    load_1 = os.getloadavg()

    sequential = {}
    for threads in (cores, 1):  # every core's threads (what a user runs), and one thread (what each Ray job gets)
        torch.set_num_threads(threads)
        (work / f"sequential{threads}").mkdir()
        seq_started = time.perf_counter()
        for job in spec.jobs:
            invoke(job.analysis, job.options, str(work / f"sequential{threads}" / job.id))
        sequential[threads] = time.perf_counter() - seq_started

    import ray

    init_started = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.perf_counter() - init_started
    sweep_started = time.perf_counter()
    result = run_sweep(spec, work / "sweep", progress=False)
    sweep = time.perf_counter() - sweep_started + ray_start
    assert result.ok and len(result.ran) == 4, result.failed
    job_seconds = [json.loads((work / "sweep" / "jobs" / i / "job.json").read_text())["seconds"] for i in result.ran]

    overhead = _overhead(work, args.overhead_jobs)
    ray.shutdown()
    load_2 = os.getloadavg()
    report = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before_after": [round(load_1[0], 2), round(load_2[0], 2)],
        "jobs": f"4 × interp heads --model smollm2-135m --n-texts {args.n_texts} --max-tokens {args.max_tokens} --seed 0..3",
        f"sequential_s_{cores}_threads": round(sequential[cores], 1), "sequential_s_1_thread": round(sequential[1], 1),
        "sweep_s_incl_ray_start": round(sweep, 1), "ray_start_s": round(ray_start, 1),
        "speedup_vs_sequential_all_threads": round(sequential[cores] / sweep, 2),
        "speedup_vs_sequential_1_thread": round(sequential[1] / sweep, 2),
        "speedup_vs_sequential_1_thread_excl_ray_start": round(sequential[1] / (sweep - ray_start), 2),
        "job_seconds_inside_workers": [round(s, 1) for s in job_seconds],
        "overhead_per_job_ms_median": round(1000 * statistics.median(overhead), 1),
        "overhead_per_job_ms_p90": round(1000 * sorted(overhead)[int(0.9 * (len(overhead) - 1))], 1),
    }
    print(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def _overhead(work: Path, n: int) -> list[float]:
    """Round trip of jobs that do nothing (their command stops at a missing --model), one at a time."""
    import ray

    from interp.sweep.runner import run_job
    from interp.sweep.spec import Job, Resources

    task = ray.remote(run_job)
    times = []
    for i in range(n + 2):  # the first two warm a worker up (imports) and are not counted
        job = Job("sinks", {"model": str(work / f"missing-{i}.gguf")}, Resources(num_cpus=1))
        started = time.perf_counter()
        outcome = ray.get(task.options(num_cpus=1, max_retries=0).remote(job.to_dict(), str(work / "oh" / job.id)))
        if i >= 2:
            times.append(time.perf_counter() - started)
        assert outcome["status"] == "failed" and "InputError" in outcome["error"], outcome
    return times


if __name__ == "__main__":
    main()
