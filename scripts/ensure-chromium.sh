#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the browser tests (Playwright drives it; it never downloads
# a browser). Does nothing if it is already there; otherwise installs the `chromium` package with apt-get, which
# needs root. CI calls this before `make test`.
set -euo pipefail

CHROMIUM=/usr/bin/chromium  # where Debian puts it, and where tests/browser looks

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: $CHROMIUM is missing and installing it needs root: sudo apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: $CHROMIUM is missing and this system has no apt-get; install chromium by hand" >&2
    exit 1
fi

echo "ensure-chromium: installing Debian's chromium ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Fonts as on the machine the tests were written on, so screenshots show text, not boxes.
apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
