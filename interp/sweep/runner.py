"""Running a sweep on Ray: one task per job, resumable, retried, progress on stderr.

Layout of the output folder DIR:
    DIR/sweep.json                 the jobs of the spec (id, analysis, options, resources)
    DIR/jobs/<id>/                 the command's own output (written through its staged output)
    DIR/jobs/<id>/job.json         what ran: options, attempts, seconds, host, the files written
    DIR/jobs/<id>/done             written last: a job is finished when job.json and done exist
    DIR/jobs/<id>/error.json       the last error of a failed attempt (removed when it succeeds)
    DIR/summary.json, summary.html the jobs joined (interp.sweep.summary)

A rerun of the same command skips finished jobs and runs the missing and failed ones, so a crash
or Ctrl-C of the driver loses nothing finished. A job that raises is retried `max_retries` times
(Ray's max_retries with retry_exceptions); a worker that dies mid-job (killed, out of memory) is
retried the same way. Bad input inside a job (InputError) is not retried.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from interp.errors import InputError
from interp.output import check_out
from interp.progress import progress_enabled
from interp.sweep.spec import Job, SweepSpec

JOB_JSON, DONE, ERROR, RUNNING, ATTEMPTS, LOG = "job.json", "done", "error.json", "running", "attempts.log", "log.txt"
BOOKKEEPING = frozenset({JOB_JSON, DONE, ERROR, RUNNING, ATTEMPTS, LOG})


@dataclass
class SweepResult:
    """What one `run_sweep` call did. Job ids in each list; `failed` maps an id to its error line."""

    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def job_folder(out: Path, job: Job) -> Path:
    return Path(out) / "jobs" / job.id


def is_finished(folder: Path) -> bool:
    """Finished: the job's JSON and its done marker (written last) are both there."""
    return (folder / JOB_JSON).is_file() and (folder / DONE).is_file()


def check_address(address: Optional[str]) -> None:
    """A Ray address must be "auto", "host:port" or "ray://host:port", and something must listen
    there; checked before Ray is started so a typo answers at once with one line."""
    if address is None or address == "auto":
        return
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} is not a Ray address; use host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise InputError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
                         "start one with `ray start --head` or leave out --address for a local instance") from None


def connect(address: Optional[str]) -> bool:
    """Connect to Ray (the cluster at `address`, else a new local instance with this machine's CPUs);
    True when this call started the connection (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    except ConnectionError as err:
        raise InputError(f"--address {address}: could not connect to Ray ({str(err).splitlines()[0]})") from None
    return True


def run_sweep(spec: SweepSpec, out: str | os.PathLike, *, address: Optional[str] = None, progress: bool | None = None,
              on_update: Optional[Callable[[dict[str, int]], None]] = None) -> SweepResult:
    """Run every unfinished job of `spec` on Ray, write DIR/summary.{json,html}; return what ran.

    `on_update` is called with {"done", "running", "failed", "pending", "total"} after every change
    (a progress hook; raising KeyboardInterrupt from it stops the driver like Ctrl-C)."""
    from interp.sweep.summary import write_summary

    out = check_out(out)
    check_address(address)
    result = SweepResult(out=out)
    pending = [j for j in spec.jobs if not is_finished(job_folder(out, j))]
    result.skipped = [j.id for j in spec.jobs if j not in pending]
    started = time.perf_counter()
    started_ray = connect(address) if pending else False  # a cluster that is not there: nothing written
    try:
        (out / "jobs").mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "sweep.json", {"schema": "interp.sweep/1", "model": None, "spec": str(spec.path),
                                           "max_retries": spec.max_retries, "jobs": [j.to_dict() for j in spec.jobs]})
        if pending:
            _run_pending(pending, out, spec.max_retries, result, progress, on_update)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        result.seconds = time.perf_counter() - started
        if (out / "jobs").is_dir():
            write_summary(out, spec.jobs)
    return result


def _run_pending(jobs: list[Job], out: Path, max_retries: int, result: SweepResult, progress: bool, on_update) -> None:
    import ray
    from tqdm.auto import tqdm

    task = ray.remote(run_job)
    refs = {task.options(**job.resources.ray_options(), max_retries=max_retries, retry_exceptions=True,
                         name=f"interp-sweep:{job.id}").remote(job.to_dict(), str(job_folder(out, job))): job
            for job in jobs}
    bar = tqdm(total=len(jobs), desc="sweep", unit="job", disable=not progress_enabled(progress), dynamic_ncols=True)
    left = list(refs)
    try:
        while left:
            ready, left = ray.wait(left, num_returns=1, timeout=1.0)
            for ref in ready:
                job = refs[ref]
                try:
                    outcome = ray.get(ref)
                except (ray.exceptions.RayError, Exception) as err:  # the last attempt failed
                    outcome = {"status": "failed", "error": _error_line(err)}
                    _record_failure(job_folder(out, job), outcome["error"])
                if outcome["status"] == "done":
                    result.ran.append(job.id)
                else:
                    result.failed[job.id] = outcome["error"]
                bar.update(1)
            counts = _counts(refs, left, result, out)
            bar.set_postfix(done=counts["done"], running=counts["running"], failed=counts["failed"], refresh=False)
            bar.refresh()
            if on_update is not None:
                on_update(counts)
    except BaseException:  # Ctrl-C or an error in the driver: stop the jobs; finished folders stay
        for ref in left:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


def _counts(refs: dict, left: list, result: SweepResult, out: Path) -> dict[str, int]:
    running = sum((job_folder(out, refs[r]) / RUNNING).exists() for r in left)
    return {"done": len(result.ran), "running": running, "failed": len(result.failed),
            "pending": len(left) - running, "total": len(refs)}


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip()
    if type(cause).__name__ in {"RayTaskError"} or "Traceback" in text:
        text = [ln for ln in text.splitlines() if ln.strip()][-1]
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _record_failure(folder: Path, error: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUNNING).unlink(missing_ok=True)
    previous = _read(folder / ERROR) or {}
    _write_atomic(folder / ERROR, {**previous, "error": error, "final": True})


# ---------------------------------------------------------------- inside the Ray worker

def run_job(job: dict[str, Any], folder: str) -> dict[str, Any]:
    """The Ray task: run one analysis into `folder`, then write job.json and the done marker.
    Raises on failure so that Ray retries it; bad input inside the job is returned, not retried."""
    from interp.sweep.registry import invoke

    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    for stale in folder_path.parent.glob(f".{folder_path.name}.partial*"):  # a killed attempt's staging folder
        shutil.rmtree(stale, ignore_errors=True)
    (folder_path / DONE).unlink(missing_ok=True)
    attempt = _start_attempt(folder_path)
    _limit_threads(job["resources"]["num_cpus"])
    began = time.time()
    try:
        with open(folder_path / LOG, "a", encoding="utf-8") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"--- attempt {attempt}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
            invoke(job["analysis"], job["options"], folder)
    except InputError as err:
        _write_atomic(folder_path / ERROR, {"error": f"InputError: {err}", "attempt": attempt, "final": True})
        return {"status": "failed", "error": f"InputError: {err}"}
    except BaseException as err:
        _write_atomic(folder_path / ERROR, {"error": f"{type(err).__name__}: {err}", "attempt": attempt,
                                            "traceback": traceback.format_exc()})
        raise
    finally:
        (folder_path / RUNNING).unlink(missing_ok=True)
    files = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*")
                   if p.is_file() and p.name not in BOOKKEEPING)
    record = {"schema": "interp.sweep_job/1", "model": job["options"].get("model"), **job, "attempt": attempt,
              "seconds": round(time.time() - began, 3), "host": socket.gethostname(), "pid": os.getpid(),
              "files": files}
    (folder_path / ERROR).unlink(missing_ok=True)
    _write_atomic(folder_path / JOB_JSON, record)
    (folder_path / DONE).write_text("ok\n")
    return {"status": "done", "seconds": record["seconds"]}


def _start_attempt(folder: Path) -> int:
    with open(folder / ATTEMPTS, "a+", encoding="utf-8") as handle:
        handle.seek(0)
        attempt = len(handle.read().splitlines()) + 1
        handle.write(f"{attempt} {os.getpid()} {time.time():.3f}\n")
    (folder / RUNNING).write_text(f"{os.getpid()}\n")
    return attempt


def _limit_threads(num_cpus: float) -> None:
    import torch

    threads = max(1, int(num_cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
