"""Analyses by name: every `interp` command (built-in and from plugins) is a sweep analysis.

A job runs the command's own function in-process, with `--out DIR/jobs/<id>`, so each job writes
its folder through the command's staged output, exactly as on the command line. Options are
checked by the command's own parser before anything runs.
"""
from __future__ import annotations

import functools
from typing import Any

from interp.errors import InputError

# commands that make no sense inside a sweep (recursion, listings, the planner)
EXCLUDED = frozenset({"sweep", "plan", "models"})
# options the sweep sets itself
RESERVED = frozenset({"out", "as_json"})


@functools.lru_cache(maxsize=1)
def command_tree():
    """The `interp` click group with every plugin's commands and groups (built once per process)."""
    import typer

    from interp import cli
    from interp.plugins import load_plugins

    root = typer.main.get_command(cli.app)
    extra = typer.Typer(add_completion=False)
    registry = load_plugins()
    for name, fn in registry.commands:
        if name not in root.commands:
            extra.command(name)(fn)
    for name, group in registry.groups:
        if name not in root.commands:
            extra.add_typer(group, name=name)
    if extra.registered_commands or extra.registered_groups:
        root.commands.update(typer.main.get_group(extra).commands)
    return root


def analyses() -> dict[str, Any]:
    """Analysis name ("heads", "sae train", ...) -> its click command."""
    out: dict[str, Any] = {}
    for name, cmd in sorted(command_tree().commands.items()):
        if name in EXCLUDED:
            continue
        subs = getattr(cmd, "commands", None)
        if subs:
            out.update({f"{name} {sub}": c for sub, c in sorted(subs.items())})
        else:
            out[name] = cmd
    return out


def _command(analysis: str, where: str):
    known = analyses()
    if analysis not in known:
        raise InputError(f"{where}: unknown analysis {analysis!r}; choose one of {', '.join(known)}")
    return known[analysis]


def _params(cmd) -> dict[str, Any]:
    """Every option of a command under its python name and its long option names without dashes."""
    out = {}
    for p in cmd.params:
        if not getattr(p, "opts", None) or p.name is None:
            continue
        out[p.name] = p
        for opt in [*p.opts, *getattr(p, "secondary_opts", [])]:
            if opt.startswith("--"):
                out.setdefault(opt[2:].replace("-", "_"), p)
    return out


def check_options(analysis: str, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Map a job's options onto the command's parameters and parse them with its own parser;
    return {python name: value}. InputError names an unknown or invalid option."""
    from typer._click import exceptions as click_errors

    cmd = _command(analysis, where)
    params = _params(cmd)
    options: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm in RESERVED:
            raise InputError(f"{where}: {key!r} is set by the sweep itself (each job writes DIR/jobs/<id>); remove it")
        if norm not in params:
            names = ", ".join(sorted(n for n in {p.name for p in params.values()} if n not in RESERVED))
            raise InputError(f"{where}: {analysis} has no option {key!r}; it takes {names}")
        options[params[norm].name] = value
    try:
        cmd.make_context(analysis, to_argv(cmd, {**options, "out": "/dev/null/x"}), resilient_parsing=False)
    except click_errors.ClickException as err:
        raise InputError(f"{where}: {analysis}: {err.format_message()}") from None
    if cmd.callback.__module__.startswith(BUILT_IN):
        _run_checks(cmd, analysis, options, where)
    return options


# built-in commands check every argument (model, layers, token counts against the context, ...) before
# they load the model; a plugin's command may do work first, so for it only its parser is run
BUILT_IN = ("interp.", "circuits.", "saes.")


def _run_checks(cmd, analysis: str, options: dict[str, Any], where: str) -> None:
    """Run a built-in command up to where it would load its model (`interp.cli.checks_only`)."""
    import tempfile
    from pathlib import Path

    from interp.cli import ChecksPassed, checks_only

    with tempfile.TemporaryDirectory(prefix="interp-sweep-check-") as parent, checks_only():
        try:
            cmd.main(args=to_argv(cmd, {**options, "out": str(Path(parent) / "out")}),
                     prog_name=f"interp {analysis}", standalone_mode=False)
        except ChecksPassed:
            return
        except InputError as err:
            raise InputError(f"{where}: {analysis}: {err}") from None
    raise AssertionError(f"interp {analysis} ran without loading a model; it cannot be checked ahead of a sweep")


def to_argv(cmd, options: dict[str, Any]) -> list[str]:
    """Command-line arguments for `options` ({python name: value})."""
    by_name = {p.name: p for p in cmd.params}
    argv: list[str] = []
    for name, value in options.items():
        p = by_name[name]
        long = next((o for o in p.opts if o.startswith("--")), p.opts[0])
        if getattr(p, "is_flag", False):
            if value:
                argv.append(long)
            elif getattr(p, "secondary_opts", None):
                argv.append(p.secondary_opts[0])
            continue
        for item in value if isinstance(value, list) and getattr(p, "multiple", False) else [value]:
            argv += [long, item if isinstance(item, str) else _scalar(item)]
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def invoke(analysis: str, options: dict[str, Any], out: str) -> None:
    """Run one analysis in this process, as `interp <analysis> ... --out out` would."""
    cmd = analyses()[analysis]
    cmd.main(args=to_argv(cmd, {**options, "out": out}), prog_name=f"interp {analysis}", standalone_mode=False)
