"""Sweep specs: a TOML file listing jobs as a product of axes (models × analyses × parameters).

```toml
[sweep]
max_retries = 2                 # a failed job is run again this many times (default 1)

[resources]                     # every job's request, unless its group says otherwise
num_cpus = 1
memory = "4GB"                  # bytes, or a number with KB/MB/GB/KiB/MiB/GiB

[[jobs]]                        # a group: the product of analysis × model × every axis
analysis = "sae train"          # an `interp` command, by name (a list runs each)
model = ["smollm2-135m"]        # --model (a list is an axis)
params = { tokens = 200000 }    # fixed options of the command (names as in --help, - or _)
axes = { layer = "0-29" }       # options swept: a list, or a range "0-29" / "0,3,10-12"
resources = { num_gpus = 1 }
```

Everything is checked here, before Ray starts: the analysis names, every option against the
command's own parser (names, types, ranges), empty axes. Bad input raises `InputError`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")
_GROUP_KEYS = {"analysis", "model", "params", "axes", "resources"}


@dataclass(frozen=True)
class Resources:
    """What one job asks Ray for: CPUs, GPUs (fractions allowed) and memory in bytes (0 = no request)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int = 0

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts


@dataclass(frozen=True)
class Job:
    """One run of one analysis: `interp <analysis> <options> --out DIR/jobs/<id>`."""

    analysis: str
    options: dict[str, Any]          # option name (python name of the command's parameter) -> value
    resources: Resources = field(default_factory=Resources)

    @property
    def id(self) -> str:
        """Stable and readable: the analysis, model and swept values as a slug, then a hash of
        the whole (analysis, options), so any change of an option makes a new job."""
        canonical = json.dumps([self.analysis, self.options], sort_keys=True, default=str)
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:10]
        parts = [self.analysis.replace(" ", "-")]
        if "model" in self.options:
            parts.append(Path(str(self.options["model"])).name.removesuffix(".gguf"))
        parts += [f"{k}{v}" for k, v in sorted(self.options.items()) if k != "model" and _short(v)]
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))[:60].strip("-_.")
        return f"{slug}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "analysis": self.analysis, "options": self.options,
                "resources": self.resources.__dict__}


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    jobs: list[Job]
    max_retries: int = 1


def _short(value: Any) -> bool:
    return isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 16)


def parse_memory(value: Any, where: str) -> int:
    """`"4GB"`, `"512MiB"`, `4e9` -> bytes."""
    if isinstance(value, bool):
        raise InputError(f"{where}: memory = {value!r} is not a size; write e.g. memory = \"4GB\"")
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"{where}: memory = {value!r} is not a size; write e.g. memory = \"4GB\" or \"512MiB\"")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _resources(table: Any, base: Resources, where: str) -> Resources:
    if not isinstance(table, dict):
        raise InputError(f"{where}: resources must be a table like {{ num_cpus = 1, num_gpus = 0, memory = \"4GB\" }}")
    unknown = set(table) - set(_RESOURCE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown resource {sorted(unknown)[0]!r}; use {', '.join(_RESOURCE_KEYS)}")
    values = dict(base.__dict__)
    for key in ("num_cpus", "num_gpus"):
        if key in table:
            if isinstance(table[key], bool) or not isinstance(table[key], (int, float)) or table[key] < 0:
                raise InputError(f"{where}: {key} = {table[key]!r} must be a number ≥ 0")
            values[key] = float(table[key])
    if "memory" in table:
        values["memory"] = parse_memory(table["memory"], where)
    return Resources(**values)


def expand_axis(values: Any, name: str, where: str) -> list[Any]:
    """An axis as a list of values: a TOML list, or a string range "0-29" / "0,3,10-12"."""
    if isinstance(values, str):
        if not re.fullmatch(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*", values):
            return [values]  # a single string value, e.g. model = "smollm2-135m"
        out: list[Any] = []
        for part in values.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
        values = out
    elif not isinstance(values, list):
        values = [values]
    if not values:
        raise InputError(f"{where}: the axis {name!r} is empty; give it at least one value or remove it")
    return values


def load_spec(path: str | Path, max_retries: int | None = None) -> SweepSpec:
    """Parse and check a sweep spec (InputError, one line, for anything wrong)."""
    from interp.sweep.registry import check_options

    path = Path(path)
    if path.is_dir():
        raise InputError(f"sweep spec {path} is a folder; name the spec's .toml file")
    if not path.is_file():
        raise InputError(f"sweep spec {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"sweep spec {path} is not valid TOML ({err})") from None
    unknown = set(doc) - {"sweep", "resources", "jobs"}
    if unknown:
        raise InputError(f"{path}: unknown table [{sorted(unknown)[0]}]; a spec has [sweep], [resources] and [[jobs]]")
    settings = doc.get("sweep", {})
    if not isinstance(settings, dict):
        raise InputError(f"{path}: sweep = {settings!r} must be a table: write [sweep] with max_retries = 1 below it")
    retries = settings.get("max_retries", 1) if max_retries is None else max_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"{path}: max_retries = {retries!r} must be an integer ≥ 0")
    base = _resources(doc.get("resources", {}), Resources(), f"{path} [resources]")
    groups = doc.get("jobs")
    if not isinstance(groups, list) or not groups:
        raise InputError(f"{path}: no jobs; add at least one [[jobs]] table with analysis = \"...\"")
    jobs: list[Job] = []
    for i, group in enumerate(groups, start=1):
        jobs.extend(_expand_group(group, base, f"{path} [[jobs]] #{i}", check_options))
    ids = [j.id for j in jobs]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise InputError(f"{path}: the job {dup} is listed twice; remove the duplicate values")
    return SweepSpec(path=path, jobs=jobs, max_retries=retries)


def _expand_group(group: Any, base: Resources, where: str, check_options) -> list[Job]:
    if not isinstance(group, dict):
        raise InputError(f"{where}: {group!r} is not a table; write each job group as [[jobs]] with "
                         "analysis = \"...\" below it")
    unknown = set(group) - _GROUP_KEYS
    if unknown:
        raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r}; a job group has {', '.join(sorted(_GROUP_KEYS))}")
    if "analysis" not in group:
        raise InputError(f"{where}: no analysis; add analysis = \"heads\" (any `interp` command, e.g. \"sae train\")")
    analyses = expand_axis(group["analysis"], "analysis", where)
    params = group.get("params", {})
    axes = group.get("axes", {})
    if not isinstance(params, dict) or not isinstance(axes, dict):
        raise InputError(f"{where}: params and axes must be tables, e.g. axes = {{ layer = \"0-29\" }}")
    swept = {name: expand_axis(v, name, where) for name, v in axes.items()}
    if "model" in group:
        swept = {"model": expand_axis(group["model"], "model", where), **swept}
    both = set(params) & set(swept)
    if both:
        raise InputError(f"{where}: {sorted(both)[0]!r} is both a fixed param and an axis; keep one")
    resources = _resources(group.get("resources", {}), base, where)
    jobs = []
    for analysis in analyses:
        for combo in itertools.product(*swept.values()):
            raw = {**params, **dict(zip(swept, combo))}
            options = check_options(str(analysis), raw, where)
            jobs.append(Job(analysis=str(analysis), options=options, resources=resources))
    return jobs
