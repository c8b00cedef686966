"""The README's two commands on a newcomer's machine: install failures say the fix in one line."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _fake_python(folder: Path, body: str) -> Path:
    """An executable standing in for `python`: runs `body` (a bash snippet) for any arguments."""
    exe = folder / "python"
    exe.write_text(f"#!/usr/bin/env bash\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _install_step(python: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=str(python), TMPDIR=str(python.parent))
    return subprocess.run(["bash", str(ROOT / "tools" / "install_step.sh"), "the thing", "thing==1"],
                          env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("pip_says, hint", [
    ("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device", "the disk is full"),
    ("WARNING: Retrying ... Failed to establish a new connection: [Errno 101] Network is unreachable\n"
     "ERROR: No matching distribution found for thing==1", "the package registry (PyPI) cannot be reached"),
    ("error: externally-managed-environment\n× This environment is externally managed", "PEP 668"),
    ("ERROR: Package 'thing' requires a different Python: 3.8.10 not in '>=3.10'", "does not support"),
])
def test_a_failed_install_step_names_the_fix_in_one_line(tmp_path, pip_says, hint):
    result = _install_step(_fake_python(tmp_path, f"echo \"{pip_says}\" >&2; exit 1"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and "installing the thing failed" in lines[0]
    log = Path(lines[0].rsplit(" in ", 1)[1])
    assert pip_says.splitlines()[0] in log.read_text(), "pip's full output is kept for the curious"


def test_a_successful_install_step_is_quiet(tmp_path):
    result = _install_step(_fake_python(tmp_path, "echo 'Successfully installed thing-1'"))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines() == ["==> installing the thing", "Successfully installed thing-1"]


def test_too_old_or_missing_python_is_named_before_anything_is_made(tmp_path):
    old = _fake_python(tmp_path, 'case "$1" in --version) echo "Python 3.8.10";; *) exit 1;; esac')
    result = subprocess.run(["bash", str(ROOT / "tools" / "make_venv.sh"), str(old), str(tmp_path / "venv")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Python 3.8.10 is too old" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "venv").exists()
    result = subprocess.run(["bash", str(ROOT / "tools" / "make_venv.sh"), "no-such-python3", str(tmp_path / "v2")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "no 'no-such-python3' on PATH" in result.stderr


def test_makefile_uses_a_project_venv_unless_python_is_given():
    """`make -n` shows the commands make would run, without running them."""
    default = subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert "tools/make_venv.sh python3 .venv" in default.stdout
    assert ".venv/bin/python -m pytest" in default.stdout
    given = subprocess.run(["make", "-n", "-B", "test", "PYTHON=/opt/py/bin/python"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert "make_venv" not in given.stdout and "/opt/py/bin/python -m pytest" in given.stdout
