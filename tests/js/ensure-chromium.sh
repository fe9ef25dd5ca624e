#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the headless browser test
# (tests/js/browser.test.mjs). Idempotent and quiet: does nothing when
# chromium is already there; installs it with apt-get when running as root;
# otherwise says so and exits 0 (the browser test then skips).
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: chromium missing and apt-get unavailable (not root?): browser test will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! apt-get install -y -q chromium >"$log" 2>&1; then
  # The package lists may be missing or stale: refresh them once and retry.
  apt-get update -q >>"$log" 2>&1
  if ! apt-get install -y -q chromium >>"$log" 2>&1; then
    echo "ensure-chromium: apt-get install chromium failed: browser test will skip" >&2
    tail -n 20 "$log" >&2
  fi
fi
rm -f "$log"
exit 0
