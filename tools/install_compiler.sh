#!/usr/bin/env bash
# A C compiler for the fused CPU attention kernel (interp_kernels/cpu_fused.c, built on first use; without
# one the workbench falls back to the slower torch backend, and the kernel's tests are skipped).
# Debian's gcc is installed once where apt-get exists.
set -u
for cc in "${CC:-}" cc gcc clang; do
  if [ -n "$cc" ] && command -v "$cc" >/dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> no C compiler and no apt-get here: the fused CPU kernel's tests will be skipped (install gcc or clang to run them)"
  exit 0
fi
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
echo "==> installing Debian's gcc for the fused CPU attention kernel (once)"
log=$(mktemp -t interp-gcc-XXXX.log)
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends gcc libc6-dev; } >"$log" 2>&1; then
  echo "error: apt-get could not install gcc (see $log); install a C compiler by hand" >&2
  exit 2
fi
rm -f "$log"
