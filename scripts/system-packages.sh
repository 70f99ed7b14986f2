#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real (PostgreSQL server binaries,
# redis-server, chromium) when they are missing. Called by `make test` and by .ci/run.
# Where it cannot install (not root, no apt-get), it names the package and goes on: those
# tests then skip locally, and fail under CI=true, as the suite's fixtures decide.
set -euo pipefail

missing=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    missing+=(haproxy)  # the load balancer in front of the replicas in tests/fleet
fi
if ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)  # promtool: checks and unit-tests deploy/prometheus/alerts.yml
fi
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)  # tests/ui drive the web console in it through Playwright
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-packages: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "system-packages: missing ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]}); the tests that need them skip (fail with CI=true)" >&2
fi
