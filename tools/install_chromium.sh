#!/usr/bin/env bash
# Debian's Chromium for the browser test of the atlas report; installed once, skipped where there is
# no apt-get (the test then says it is skipped and why).
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> no apt-get here: the browser test of the atlas report will be skipped (install Chromium to run it)"
  exit 0
fi
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
echo "==> installing Debian's chromium for the browser test (once, about a minute)"
log=$(mktemp -t interp-chromium-XXXX.log)
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
  echo "error: apt-get could not install chromium (see $log); install it by hand or run the tests with -m 'not browser'" >&2
  exit 2
fi
rm -f "$log"
