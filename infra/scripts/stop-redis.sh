#!/usr/bin/env bash
# Stop the Redis that start-redis.sh started; a Redis it did not start (no pid file of ours) is
# left running.
#
#   infra/scripts/stop-redis.sh [DATA_DIR]     # default: var/redis in the repo
#
# Env: REDIS_PORT (default 6379).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${1:-$REPO_ROOT/var/redis}"
PORT="${REDIS_PORT:-6379}"
PID_FILE="$DATA_DIR/redis-$PORT.pid"

if [ ! -f "$PID_FILE" ]; then
    echo "stop-redis: start-redis.sh did not start a Redis on port $PORT; nothing to stop"
    exit 0
fi
pid="$(cat "$PID_FILE")"
# After a reboot the pid may belong to another program: only signal it if it is still redis.
if ! kill -0 "$pid" 2>/dev/null || ! grep -q redis "/proc/$pid/cmdline" 2>/dev/null; then
    echo "stop-redis: redis (pid $pid) is not running; removing stale pid file"
    rm -f "$PID_FILE"
    exit 0
fi

# SIGTERM is a clean shutdown; with no persistence configured there is nothing to save.
kill -TERM "$pid"
deadline=$((SECONDS + 20))
while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "stop-redis: redis (pid $pid) ignored SIGTERM for 20s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 3600))  # SIGKILL cannot be ignored; just wait for it to land
    fi
    sleep 0.2
done
rm -f "$PID_FILE"  # redis removes it on a clean exit, but not after SIGKILL
echo "stop-redis: stopped redis (pid $pid)"
