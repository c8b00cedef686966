#!/usr/bin/env bash
# Create the project's virtual environment, or say in one line why it cannot be made.
set -u
base=${1:-python3}; venv=${2:-.venv}
if ! command -v "$base" >/dev/null 2>&1; then
  echo "error: no '$base' on PATH; install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv) or run make BASE_PYTHON=/path/to/python3.10+" >&2
  exit 2
fi
if ! "$base" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "error: $("$base" --version 2>&1) is too old; interp-workbench needs Python 3.10 or newer: run make BASE_PYTHON=/path/to/python3.10+" >&2
  exit 2
fi
echo "==> creating the project environment $venv ($("$base" --version 2>&1))"
if ! "$base" -m venv "$venv" >/tmp/interp-venv.log 2>&1; then
  rm -rf "$venv"
  echo "error: '$base -m venv' failed (Debian/Ubuntu: apt-get install python3-venv); details in /tmp/interp-venv.log" >&2
  exit 2
fi
