#!/usr/bin/env bash
# Stop the SeaweedFS that start-seaweedfs.sh started, found by its pid file; a no-op otherwise.
#
#   infra/scripts/stop-seaweedfs.sh [DATA_DIR]     # default: var/seaweedfs in the repo
#
# Env: SEAWEEDFS_STOP_TIMEOUT (seconds to wait after SIGTERM before SIGKILL, default 30).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${1:-$REPO_ROOT/var/seaweedfs}"
PID_FILE="$DATA_DIR/weed.pid"
TIMEOUT="${SEAWEEDFS_STOP_TIMEOUT:-30}"

if [ ! -f "$PID_FILE" ]; then
    echo "stop-seaweedfs: no pid file at $PID_FILE; nothing to stop"
    exit 0
fi
pid="$(cat "$PID_FILE")"
# After a reboot the pid may belong to another program: only signal it if it is still weed.
if ! kill -0 "$pid" 2>/dev/null || ! grep -q weed "/proc/$pid/cmdline" 2>/dev/null; then
    echo "stop-seaweedfs: weed (pid $pid) is not running; removing stale pid file"
    rm -f "$PID_FILE"
    exit 0
fi

# SIGTERM lets weed flush and close its volumes (takes about 3.5 s: filer and volume drain).
kill -TERM "$pid"
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "stop-seaweedfs: weed (pid $pid) ignored SIGTERM for ${TIMEOUT}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 3600))  # SIGKILL cannot be ignored; just wait for it to land
    fi
    sleep 0.2
done
rm -f "$PID_FILE"
echo "stop-seaweedfs: stopped weed (pid $pid)"
