#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 for development and tests (export
# REDIS_URL=redis://127.0.0.1:6379/0). If one already answers it is left as it is; otherwise a
# throwaway redis-server is started (no RDB, no AOF) and its pid file under DATA_DIR records that
# this script started it, so stop-redis.sh stops that one and never a Redis it did not start.
# If redis-server is missing it is installed with apt-get (CI runs as root on Debian).
#
#   infra/scripts/start-redis.sh [DATA_DIR]     # default: var/redis in the repo
#   infra/scripts/stop-redis.sh  [DATA_DIR]
#
# Env: REDIS_PORT (default 6379).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${1:-$REPO_ROOT/var/redis}"
PORT="${REDIS_PORT:-6379}"

redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        # redis-cli exits 0 even on errors such as NOAUTH, so look for the PONG itself.
        [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null || true)" = "PONG" ]
    else
        # No redis-cli: speak the protocol over a plain socket (needs no Python package).
        python3 - "$PORT" <<'EOF'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
EOF
    fi
}

if redis_answers; then
    echo "start-redis: Redis already answers on 127.0.0.1:$PORT; leaving it alone"
    exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "start-redis: redis-server not installed; installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends redis-server
    # On some machines the package's own service starts on 6379 at install time: use that one.
    sleep 1
    if redis_answers; then
        echo "start-redis: the redis-server package started Redis on 127.0.0.1:$PORT; using it"
        exit 0
    fi
fi

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"  # redis-server resolves paths after chdir to --dir
PID_FILE="$DATA_DIR/redis-$PORT.pid"
LOG_FILE="$DATA_DIR/redis-$PORT.log"

# A scratch broker: nothing is persisted, so stopping it loses queued tasks by design.
redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
    --dir "$DATA_DIR" --pidfile "$PID_FILE" --logfile "$LOG_FILE"

deadline=$((SECONDS + 20))
until redis_answers; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start-redis: Redis did not answer on 127.0.0.1:$PORT; last lines of $LOG_FILE:" >&2
        tail -n 20 "$LOG_FILE" >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "start-redis: Redis on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"), log $LOG_FILE)"
