#!/usr/bin/env bash
# Build the CPU serving image (int8 variant by default) with Debian's Docker engine, run it as
# the image's non-root user, wait for readiness, make one prediction, and report the image size
# and the container's cold start: docker run -> first 200 from /predict, median of COLD_RUNS runs
# (scripts/container_coldstart.py; for the default image it is recorded in docs/coldstart.json).
#
# No container registry is reachable here, so the base image is made with debootstrap (Debian
# bookworm, minbase + python3 + venv) and imported; its tarball is cached in build/image/ so a
# rerun skips debootstrap. dockerd runs for the length of this script only, with overlay2 (vfs
# where overlayfs cannot be mounted) storage in a temporary directory, no iptables and no bridge
# (containers use --network host), and is stopped by its PID on exit. Needs root (apt-get, dockerd).
#
# For the default image it then starts the local stack's function service through Compose
# (compose.yaml with compose/function-only.yaml, `up --no-deps sentiment`: the other services'
# images need a registry), waits for its healthcheck and makes one prediction through it.
#
# Settings (environment): VARIANT, MODEL_DIR, IMAGE, MAX_IMAGE_MIB (default 250),
# READY_TIMEOUT_S (default 180), CACHE_DIR (default build/image), KEEP_BASE=0 to rebuild the base,
# COLD_RUNS (default 5).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"

VARIANT=${VARIANT:-cpu-int8}
MODEL_DIR=${MODEL_DIR:-models/minilm-sentiment-int8}
IMAGE=${IMAGE:-kubesentiment/sentiment-${VARIANT}:local}
MAX_IMAGE_MIB=${MAX_IMAGE_MIB:-250}
COLD_RUNS=${COLD_RUNS:-5}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
CACHE_DIR=${CACHE_DIR:-build/image}
KEEP_BASE=${KEEP_BASE:-1}
SUITE=bookworm
BASE_IMAGE=local/debian-python:3.11
BASE_TAR="$CACHE_DIR/debian-${SUITE}-python3-v2.tar"
PYTHON=${PYTHON:-python3}

log() { printf '[build_image %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get and dockerd)"
[ -f requirements/serving.txt ] || die "requirements/serving.txt is missing"
mkdir -p "$CACHE_DIR"

# --- tools -------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
  || ! command -v docker >/dev/null || ! command -v docker-compose >/dev/null; then
  log "installing docker.io, docker-compose and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io docker-compose debootstrap >/dev/null
fi

# --- base image tarball (cached) -----------------------------------------------------------
debian_mirror() {
  # The mirror this machine's apt already uses (deb822 or one-line format).
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || die "no Debian mirror found in the apt sources"
  printf '%s\n' "$m"
}

if [ "$KEEP_BASE" != 1 ] || [ ! -s "$BASE_TAR" ]; then
  t0=$(now)
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/ks-rootfs.XXXXXX")
  log "debootstrap $SUITE (minbase + python3) into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$(debian_mirror)" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
  # Trust the same CAs as this machine, so pip inside the build reaches PyPI on the same
  # network path (which may re-sign TLS). Only this locally made base gets it.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/*
  # mktemp made the directory 0700; as the image's / it would lock out the non-root user.
  chmod 0755 "$rootfs"
  tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$rootfs"
  log "base tarball $BASE_TAR made in $(elapsed "$t0" "$(now)") s"
else
  log "reusing cached base tarball $BASE_TAR"
fi

# --- dockerd -------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ks-docker.XXXXXX")
export DOCKER_HOST="unix://$WORK/docker.sock"
CID=""
DOCKERD_PID=""
COMPOSE_UP=0
COMPOSE=(docker-compose -p kubesentiment-image-check -f compose.yaml -f compose/function-only.yaml)
cleanup() {
  local rc=$?
  if [ -n "$CID" ]; then docker rm -f "$CID" >/dev/null 2>&1 || true; fi
  # Removes the container and the project's network (a bridge in this host's namespace).
  if [ "$COMPOSE_UP" = 1 ]; then "${COMPOSE[@]}" down >/dev/null 2>&1 || true; fi
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping dockerd (pid $DOCKERD_PID) and removing its temporary storage"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  # dockerd leaves its network namespace bind-mounted under the exec root.
  awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$WORK" 2>/dev/null || true
  log "done (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# overlay2 where this kernel lets us mount overlayfs (what a Kubernetes node uses: a container
# starts on a copy-on-write snapshot); vfs otherwise, which copies the whole image at every
# `docker run` and would add seconds to the measured cold start.
if [ "${STORAGE_DRIVER:-auto}" = auto ]; then
  STORAGE_DRIVER=vfs
  mkdir -p "$WORK/ovl/lower" "$WORK/ovl/upper" "$WORK/ovl/work" "$WORK/ovl/merged"
  if mount -t overlay overlay -o "lowerdir=$WORK/ovl/lower,upperdir=$WORK/ovl/upper,workdir=$WORK/ovl/work" \
    "$WORK/ovl/merged" 2>/dev/null; then
    umount "$WORK/ovl/merged"
    STORAGE_DRIVER=overlay2
  fi
  rm -rf "$WORK/ovl"
fi
dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" \
  --host "$DOCKER_HOST" --storage-driver "$STORAGE_DRIVER" --iptables=false --ip6tables=false \
  --bridge=none >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
deadline=$((SECONDS + 60))
until docker version >/dev/null 2>&1; do
  kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd not up in 60 s"; }
  sleep 0.2
done
log "dockerd up (pid $DOCKERD_PID, storage driver $STORAGE_DRIVER)"

docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$BASE_IMAGE" <"$BASE_TAR" >/dev/null
log "base image $BASE_IMAGE imported"

# --- build ---------------------------------------------------------------------------------
[ -f "$MODEL_DIR/model.onnx" ] && [ -f "$MODEL_DIR/manifest.json" ] \
  || die "$MODEL_DIR has no model.onnx/manifest.json: train and export the model first"
t0=$(now)
log "building $IMAGE (variant $VARIANT, model $MODEL_DIR)"
DOCKER_BUILDKIT=0 docker build --network host --target cpu \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VARIANT="$VARIANT" \
  --build-arg MODEL_DIR="$MODEL_DIR" -t "$IMAGE" . >"$CACHE_DIR/docker-build.log" 2>&1 \
  || { tail -40 "$CACHE_DIR/docker-build.log" >&2; die "docker build failed"; }
BUILD_S=$(elapsed "$t0" "$(now)")
SIZE_BYTES=$(docker image inspect -f '{{.Size}}' "$IMAGE")
SIZE_MIB=$((SIZE_BYTES / 1048576))
IMAGE_USER=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
log "built in $BUILD_S s: $SIZE_MIB MiB, USER $IMAGE_USER"
case "$IMAGE_USER" in
  '' | 0 | 0:* | root | root:*) die "image runs as root (USER '$IMAGE_USER')" ;;
esac

# --- run: cold start, readiness, one prediction ----------------------------------------------
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
t0=$(now)
# The image's own USER is used (no --user): this checks that the image itself is non-root.
CID=$(docker run -d --network host --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges -e PORT="$PORT" -e HOST=127.0.0.1 -e LOG_LEVEL=info \
  "$IMAGE")
log "container $CID started on port $PORT, waiting for readiness"
"$PYTHON" - "$PORT" "$READY_TIMEOUT_S" <<'EOF' || { docker logs "$CID" 2>&1 | tail -30 >&2; die "not ready"; }
import sys, time, urllib.error, urllib.request
port, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/readiness", timeout=2) as r:
            if r.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"readiness not 200 within {timeout} s")
    time.sleep(0.05)
EOF
COLD_S=$(elapsed "$t0" "$(now)")
RUN_UID=$(docker exec "$CID" python -c 'import os; print(os.getuid())')
[ "$RUN_UID" != 0 ] || die "container process runs as uid 0"

PREDICTION=$("$PYTHON" - "$PORT" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/predict",
    data=json.dumps({"text": "The container built and started; what a pleasant surprise."}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, timeout=10) as r:
    body = json.loads(r.read())
    assert r.status == 200, r.status
print(json.dumps(body, separators=(",", ":"))[:400])
EOF
)
# The function's own figure (process start -> ready), from its JSON "ready" log line.
APP_COLD_S=$(docker logs "$CID" 2>&1 | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    try:
        record = json.loads(line)
    except ValueError:
        continue
    if isinstance(record, dict) and "cold_start_seconds" in record:
        print(record["cold_start_seconds"])
        break
else:
    print("null")
')
t0=$(now)
docker stop -t 30 "$CID" >/dev/null
STOP_S=$(elapsed "$t0" "$(now)")
EXIT_CODE=$(docker inspect -f '{{.State.ExitCode}}' "$CID")

# --- cold start, as a scale-from-zero request meets it: median of COLD_RUNS runs ---------------
COLD_ARGS=("$IMAGE" --runs "$COLD_RUNS" --size-bytes "$SIZE_BYTES" --deadline "$READY_TIMEOUT_S"
  --storage-driver "$STORAGE_DRIVER")
# Only the default image's figure is the one the README publishes.
if [ "$IMAGE" = kubesentiment/sentiment-cpu-int8:local ]; then COLD_ARGS+=(--out docs/coldstart.json); fi
COLD_LINE=$("$PYTHON" scripts/container_coldstart.py "${COLD_ARGS[@]}") \
  || die "container cold start runs failed"

# --- compose: the local stack's function service with this image -----------------------------
COMPOSE_LINE="skipped (compose.yaml runs kubesentiment/sentiment-cpu-int8:local, not $IMAGE)"
if [ "$IMAGE" = kubesentiment/sentiment-cpu-int8:local ]; then
  SENTIMENT_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export SENTIMENT_PORT
  t0=$(now)
  COMPOSE_UP=1
  "${COMPOSE[@]}" up -d --no-deps sentiment >"$CACHE_DIR/compose.log" 2>&1 \
    || { cat "$CACHE_DIR/compose.log" >&2; die "docker-compose up failed"; }
  COMPOSE_CID=$("${COMPOSE[@]}" ps -q sentiment)
  deadline=$((SECONDS + READY_TIMEOUT_S))
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$COMPOSE_CID")" = healthy ]; do
    [ "$SECONDS" -lt "$deadline" ] || { docker logs "$COMPOSE_CID" 2>&1 | tail -30 >&2; \
      die "the compose service did not become healthy"; }
    sleep 0.5
  done
  COMPOSE_S=$(elapsed "$t0" "$(now)")
  COMPOSE_LABEL=$("$PYTHON" - "$SENTIMENT_PORT" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/predict",
    data=json.dumps({"text": "Started through compose with the image built here."}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200, r.status
    print(json.loads(r.read())["label"])
EOF
)
  "${COMPOSE[@]}" down >/dev/null 2>&1
  COMPOSE_UP=0
  COMPOSE_LINE="service sentiment healthy through docker-compose in $COMPOSE_S s, /predict: $COMPOSE_LABEL"
fi

cat >"$CACHE_DIR/report.json" <<EOF
{"image": "$IMAGE", "variant": "$VARIANT", "size_mib": $SIZE_MIB, "max_size_mib": $MAX_IMAGE_MIB,
 "build_s": $BUILD_S, "cold_start_s": $COLD_S, "app_cold_start_s": $APP_COLD_S,
 "stop_s": $STOP_S, "exit_code": $EXIT_CODE,
 "uid": $RUN_UID}
EOF
echo "image:       $IMAGE ($SIZE_MIB MiB, limit $MAX_IMAGE_MIB MiB; built in $BUILD_S s)"
echo "user:        $IMAGE_USER (process uid $RUN_UID)"
echo "first start: $COLD_S s (docker run -> /health/readiness 200); in-process $APP_COLD_S s"
echo "$COLD_LINE"
echo "prediction:  $PREDICTION"
echo "stop:        $STOP_S s after SIGTERM, exit code $EXIT_CODE"
echo "compose:     $COMPOSE_LINE"
[ "$SIZE_MIB" -le "$MAX_IMAGE_MIB" ] || die "image is $SIZE_MIB MiB, over the $MAX_IMAGE_MIB MiB target"
