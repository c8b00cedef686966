"""Sweeps on Ray: many independent analysis runs from one TOML spec, resumable and fault-tolerant.

    spec = load_spec("sweep.toml")          # checked whole before anything starts (InputError)
    result = run_sweep(spec, "runs/")       # a local Ray instance, or address="host:port"
    summarize("runs/", spec.jobs)           # the jobs' own JSON, joined

See interp.sweep.spec for the spec format and interp.sweep.runner for the output layout.
"""
from interp.sweep.runner import SweepResult, check_address, is_finished, job_folder, run_sweep
from interp.sweep.spec import Job, Resources, SweepSpec, load_spec
from interp.sweep.summary import summarize, write_summary

__all__ = ["Job", "Resources", "SweepResult", "SweepSpec", "check_address", "is_finished", "job_folder", "load_spec",
           "run_sweep", "summarize", "write_summary"]
