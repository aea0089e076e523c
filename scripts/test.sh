#!/usr/bin/env bash
# The project's one test command:  bash scripts/test.sh [pytest arguments]
#
# Needs nothing started first. It
#   - installs the system programs the tests use when they are missing (scripts/system-deps.sh: apt-get as
#     root on Debian, otherwise one line per program saying what to install);
#   - installs requirements-dev.txt and the repo into .venv (scripts/install.sh --dev; skipped when nothing
#     changed since the last install);
#   - starts a Redis of its own on 127.0.0.1:6379 when none answers there, and stops it afterwards;
#   - runs pytest from the venv. pytest's exit code is this script's; "no tests collected" (exit 5) fails too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/system-deps.sh
bash scripts/install.sh --dev

redis_answers() {
    # PING over bash's /dev/tcp, so redis-cli is not needed.
    local reply=""
    { exec 3<>/dev/tcp/127.0.0.1/6379; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    [[ "$reply" == "+PONG"* ]]
}

redis_pid=""
stop_redis() { if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi; }
trap stop_redis EXIT
if ! redis_answers; then
    command -v redis-server >/dev/null 2>&1 || { echo "[test.sh] no Redis answers on 127.0.0.1:6379 and redis-server is not installed (Debian package redis-server)" >&2; exit 1; }
    echo "[test.sh] starting a Redis of its own on 127.0.0.1:6379 (stopped at the end)"
    redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --loglevel warning &
    redis_pid=$!
    for _ in $(seq 1 100); do redis_answers && break; sleep 0.1; done
    redis_answers || { echo "[test.sh] the Redis started here does not answer on 127.0.0.1:6379" >&2; exit 1; }
fi

set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "[test.sh] pytest collected no tests (exit 5): treated as a failure" >&2
fi
exit "$code"
