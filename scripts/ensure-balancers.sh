#!/usr/bin/env bash
# Make sure Debian's haproxy and nginx are at /usr/sbin for the load-balancer tests (comfy_notebook/tools/balancer.py
# starts them itself, as child processes on loopback ports with its own config files). Does nothing if both are
# there; otherwise installs the missing packages with apt-get, which needs root. `make test` runs it (`make balancers`).
# The packages' system services are never started: a policy-rc.d that refuses every start is in place during the
# install (Debian's maintainer scripts and deb-systemd-invoke honour it), so nothing takes port 80.
set -euo pipefail

HAPROXY=/usr/sbin/haproxy  # where Debian puts them, and where balancer.py looks
NGINX=/usr/sbin/nginx
POLICY=/usr/sbin/policy-rc.d

missing=()
[ -x "$HAPROXY" ] || missing+=(haproxy)
[ -x "$NGINX" ] || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-balancers: ${missing[*]} missing and installing needs root: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-balancers: ${missing[*]} missing and this system has no apt-get; install them by hand" >&2
    exit 1
fi

# Refuse service starts for the duration of the install, unless a policy is already there (Docker images ship one).
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# ensure-balancers: no service starts during the install\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi

echo "ensure-balancers: installing Debian's ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
"$HAPROXY" -v | sed -n 1p  # sed reads it all: no SIGPIPE for pipefail
"$NGINX" -v
