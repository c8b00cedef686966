#!/usr/bin/env bash
# One pip install step: announce it, keep pip's output in a log, and on failure print one line
# that names the likely fix (no network, no disk space, Python too old) instead of a traceback.
set -u
what=$1; shift
py=${PYTHON:?PYTHON not set}
log=$(mktemp -t interp-install-XXXX.log)
echo "==> installing $what"
if "$py" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
  grep -E '^Successfully installed' "$log" | cut -c1-300 || true
  rm -f "$log"
  exit 0
fi
if grep -qiE 'externally-managed-environment' "$log"; then
  hint="$py refuses pip installs (PEP 668): run make without PYTHON=... to use the project's .venv"
elif grep -qiE 'No space left on device' "$log"; then
  hint="the disk is full: free a few GB (the install needs about 3 GB, the model cache 1 GB) and run make again"
elif grep -qiE 'Could not fetch URL|Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable|connection refused|Read timed out|ConnectTimeout|ProxyError' "$log"; then
  hint="the package registry (PyPI) cannot be reached: check the network or proxy (pip config list) and run make again"
elif grep -qiE 'requires a different Python|Requires-Python' "$log"; then
  hint="a package does not support $("$py" --version 2>&1): use Python 3.10-3.12 (make BASE_PYTHON=python3.11)"
elif grep -qiE 'No matching distribution found|Could not find a version' "$log"; then
  hint="$(grep -iE 'No matching distribution|Could not find a version' "$log" | head -1 | cut -c1-200): check the network to PyPI and the Python version"
else
  hint="$(grep -E '^(ERROR|error):' "$log" | head -1 | cut -c1-200)"
fi
echo "error: installing $what failed: ${hint:-see the log}; pip's full output is in $log" >&2
exit 2
