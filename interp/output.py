"""Writing a command's output folder so that a failure leaves nothing half-written behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from interp.errors import InputError


def check_out(out: str | os.PathLike) -> Path:
    """--out can become a folder: it is one, or its parent is an existing folder (InputError otherwise).
    Commands call this before any work; `staged_output` again at the end."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; name a folder (it is created if missing)")
    parent = out.resolve().parent
    for above in [parent, *parent.parents]:
        if above.exists():
            if not above.is_dir():
                raise InputError(f"--out {out} cannot be a folder: {above} is a file; choose another --out")
            break
    if not parent.is_dir():
        raise InputError(f"the folder {parent} for --out does not exist; create it or choose another --out")
    try:  # a real write: os.access says yes to root on read-only and virtual file systems (/proc)
        tempfile.TemporaryDirectory(dir=parent, prefix=f".{out.name}.probe").cleanup()
    except OSError as err:
        raise InputError(f"the folder {parent} for --out is not writable ({err.strerror}); choose another --out") from None
    return out


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success move its entries into `out`
    (replacing files of the same name, keeping everything else), on failure delete it."""
    out = check_out(out)
    parent = out.resolve().parent
    stage = parent / f".{out.name}.partial{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    out.mkdir(exist_ok=True)
    for entry in stage.iterdir():
        target = out / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    stage.rmdir()


def read_text(path: str | os.PathLike, option: str) -> str:
    """A text file a user named with `option` (e.g. "--file"), strictly UTF-8; InputError (one line) naming
    the first bad byte and its offset, or why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise InputError(f"{option} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise InputError(f"{option} {path} cannot be read ({err.strerror})") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file a user named; InputError (one line) if it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def write_json(path: Path, kind: str, model: str | None, body: dict[str, Any], version: int = 1) -> None:
    """A command's JSON: {"schema": "interp.<kind>/<version>", "model": ..., ...body}."""
    doc = {"schema": f"interp.{kind}/{version}", "model": model, **body}
    path.write_text(json.dumps(doc, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)
