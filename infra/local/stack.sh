#!/usr/bin/env bash
# The embedded local stack on 127.0.0.1: a Prefect server (sqlite), one worker on a `process` work
# pool, and an MLflow tracking server (sqlite, artifacts served by the server).
#
#   stack.sh up       start what is not running yet (idempotent), wait until healthy, write env.sh
#   stack.sh down     stop exactly the processes `up` recorded (their process groups and children)
#   stack.sh status   one line per service: running/stopped, URL, resident memory
#
# Everything lives in the run directory ${TTLORA_RUN_DIR:-.run} (git-ignored):
#   pids/<name>.pid  logs/<name>.log  prefect/ (PREFECT_HOME, prefect.db)  mlflow/mlflow.db
#   mlartifacts/  env.sh (`source` it: PREFECT_API_URL, MLFLOW_TRACKING_URI, ...)
#
# Settings (environment):
#   TTLORA_PREFECT_PORT (4200)  TTLORA_MLFLOW_PORT (5000)  TTLORA_WORK_POOL (local-process)
#   TTLORA_WORKER_LIMIT (unset: no limit; the flows bound their own concurrency)
#   TTLORA_VENV (.venv)
#   TTLORA_S3=1: MLflow artifacts go to s3://$TTLORA_S3_BUCKET/mlflow (bucket default ttlora-moe),
#     endpoint from MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL, credentials from the environment or
#     AWS_PROFILE. With neither an endpoint nor credentials set, a local Ceph RADOS Gateway is
#     started first (infra/ceph/rgw.sh) and its keys are read from <run>/ceph/s3.env.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
mkdir -p "${TTLORA_RUN_DIR:-.run}"
RUN=$(cd "${TTLORA_RUN_DIR:-.run}" && pwd)
VENV=${TTLORA_VENV:-$ROOT/.venv}
BIN=$VENV/bin
HOST=127.0.0.1
PREFECT_PORT=${TTLORA_PREFECT_PORT:-4200}
MLFLOW_PORT=${TTLORA_MLFLOW_PORT:-5000}
POOL=${TTLORA_WORK_POOL:-local-process}
S3=${TTLORA_S3:-0}
BUCKET=${TTLORA_S3_BUCKET:-ttlora-moe}
PREFECT_URL=http://$HOST:$PREFECT_PORT
MLFLOW_URL=http://$HOST:$MLFLOW_PORT
SERVICES=(prefect-server prefect-worker mlflow-server)

say() { echo "stack: $*" >&2; }
die() { echo "stack: error: $1" >&2; exit "${2:-1}"; }

source "$(dirname "${BASH_SOURCE[0]}")/../lib/pids.sh"

pidfile() { echo "$RUN/pids/$1.pid"; }

# The recorded PID of $1 if that process is alive and still ours (it leads its own process group,
# as `start` made it, and runs a program from our virtualenv), else nothing (infra/lib/pids.sh).
live_pid() { live_pid_in "$(pidfile "$1")" "$BIN/"; }

started_alive() { kill -0 "$(<"$(pidfile "$1")")" 2>/dev/null; }  # during startup, before the exec

# Every process in process group $1 (which `start` made equal to the service's PID) and all their
# descendants, even those that moved to a session of their own.
family() {
    local root=$1
    ps -e -o pid=,ppid=,pgid= | awk -v root="$root" '
        { parent[$1] = $2; group[$1] = $3; pids[NR] = $1 }
        END {
            for (changed = 1; changed; ) {
                changed = 0
                for (i in pids) { p = pids[i]
                    if (!(p in keep) && ((parent[p] in keep) || group[p] == root)) { keep[p] = 1; changed = 1 } }
            }
            for (p in keep) print p
        }'
}

rss_mb() {  # resident memory of $1's family, in MB
    local pids
    pids=$(family "$1" | paste -sd, -)
    ps -o rss= -p "$pids" 2>/dev/null | awk '{ s += $1 } END { printf "%d", s / 1024 }'
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

http_ok() {  # GET $1 answers 2xx within 2 s
    if command -v curl >/dev/null; then
        curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$1" 2>/dev/null
    else
        "$BIN/python" -c 'import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2)' "$1" 2>/dev/null
    fi
}

# start NAME CMD...: run CMD in its own session (so its process group is ours to stop), output to
# logs/NAME.log, PID to pids/NAME.pid. `trap - INT` undoes the SIGINT-ignore bash gives background
# jobs: Prefect's worker turns SIGTERM into SIGINT to itself and would otherwise never stop.
start() {
    local name=$1; shift
    mkdir -p "$RUN/pids" "$RUN/logs"
    echo "--- $(date -Is) $*" >>"$RUN/logs/$name.log"
    ( trap - INT QUIT; exec setsid "$@" ) >>"$RUN/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
}

# wait_until NAME SECONDS CHECK...: poll CHECK until it succeeds; fail early if NAME died.
wait_until() {
    local name=$1 limit=$2 t0=$SECONDS; shift 2
    until "$@"; do
        if ! started_alive "$name"; then
            tail -n 15 "$RUN/logs/$name.log" >&2 || true
            die "$name exited during startup (log: $RUN/logs/$name.log; \`stack.sh down\` stops what started)"
        fi
        (( SECONDS - t0 < limit )) || die "$name is not healthy after ${limit}s (log: $RUN/logs/$name.log)"
        sleep 0.5
    done
}

worker_started() { tail -n "+$WORKER_LOG_FROM" "$RUN/logs/prefect-worker.log" | grep -q "Worker .* started"; }

# Fail with one line when another program listens on the port.
claim_port() {  # claim_port NAME PORT VARIABLE
    if port_busy "$2"; then
        die "port $2 on $HOST (for $1) is already in use by another program; stop it or set $3 to a free port" 2
    fi
}

prefect_env() {
    export PREFECT_HOME=$RUN/prefect
    export PREFECT_API_URL=$PREFECT_URL/api
    export PREFECT_UI_URL=$PREFECT_URL
    export PREFECT_SERVER_ANALYTICS_ENABLED=false
    export PREFECT_SERVER_DATABASE_CONNECTION_URL=sqlite+aiosqlite:///$RUN/prefect/prefect.db
    export MLFLOW_TRACKING_URI=$MLFLOW_URL
    export TTLORA_WORK_POOL=$POOL
    export TTLORA_RUN_DIR=$RUN
}

s3_setup() {
    [[ $S3 == 1 ]] || return 0
    if [[ -z ${MLFLOW_S3_ENDPOINT_URL:-}${AWS_ENDPOINT_URL:-} && -z ${AWS_ACCESS_KEY_ID:-}${AWS_PROFILE:-} ]]; then
        say "TTLORA_S3=1 with no S3 endpoint or credentials set: using a local Ceph RADOS Gateway"
        TTLORA_RUN_DIR=$RUN bash "$ROOT/infra/ceph/rgw.sh" up
    fi
    if [[ -f $RUN/ceph/s3.env && -z ${AWS_ACCESS_KEY_ID:-}${AWS_PROFILE:-} ]]; then
        # shellcheck disable=SC1091
        . "$RUN/ceph/s3.env"
    fi
    export MLFLOW_S3_ENDPOINT_URL=${MLFLOW_S3_ENDPOINT_URL:-${AWS_ENDPOINT_URL:-}}
    if [[ -z $MLFLOW_S3_ENDPOINT_URL ]]; then unset MLFLOW_S3_ENDPOINT_URL; fi  # AWS itself
    export TTLORA_S3=1 TTLORA_S3_BUCKET=$BUCKET
    "$BIN/python" -m ttlora_moe.pipeline.s3 ensure-bucket "$BUCKET" || exit $?
}

write_env() {
    local f=$RUN/env.sh
    {
        echo "# Written by infra/local/stack.sh up on $(date -Is). Source it to use the local stack."
        for v in TTLORA_RUN_DIR PREFECT_HOME PREFECT_API_URL PREFECT_UI_URL MLFLOW_TRACKING_URI TTLORA_WORK_POOL; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        if [[ -n ${TTLORA_DATA_MIRROR:-} ]]; then  # the workers' mirror: `tasks add` records sources inside it relative to it
            printf 'export TTLORA_DATA_MIRROR=%q\n' "$TTLORA_DATA_MIRROR"
        fi
        # The project's prefect, mlflow and ttlora-moe first on PATH: `mlflow models serve` starts the
        # server as `uvicorn ...` through PATH, so without this it fails even when run as .venv/bin/mlflow.
        # shellcheck disable=SC2016  # $PATH written literally, expanded when env.sh is sourced
        printf 'export PATH=%q:"$PATH"\n' "$BIN"
        if [[ $S3 == 1 ]]; then
            echo "export TTLORA_S3=1"
            printf 'export TTLORA_S3_BUCKET=%q\n' "$BUCKET"
            if [[ -n ${MLFLOW_S3_ENDPOINT_URL:-} ]]; then
                printf 'export MLFLOW_S3_ENDPOINT_URL=%q AWS_ENDPOINT_URL=%q\n' "$MLFLOW_S3_ENDPOINT_URL" "$MLFLOW_S3_ENDPOINT_URL"
            fi
            # Credentials stay in their own file (mode 600), never copied here.
            if [[ -f $RUN/ceph/s3.env ]]; then
                # shellcheck disable=SC2016  # written literally, expanded when env.sh is sourced
                printf '[ -n "${AWS_ACCESS_KEY_ID:-}${AWS_PROFILE:-}" ] || . %q\n' "$RUN/ceph/s3.env"
            fi
        fi
    } >"$f.tmp"
    mv "$f.tmp" "$f"
}

up() {
    [[ -x $BIN/prefect && -x $BIN/mlflow ]] || die "no prefect/mlflow in $BIN; run \`make setup\` first (or set TTLORA_VENV)" 2
    mkdir -p "$RUN/pids" "$RUN/logs" "$RUN/prefect" "$RUN/mlflow" "$RUN/mlartifacts"
    prefect_env
    local t0=$SECONDS name running=() mode=local dest=$RUN/mlartifacts
    if [[ $S3 == 1 ]]; then mode=s3://$BUCKET/mlflow; dest=$mode; fi

    for name in "${SERVICES[@]}"; do live_pid "$name" >/dev/null && running+=("$name"); done
    if [[ ${#running[@]} -gt 0 ]]; then
        local was
        was=$(cat "$RUN/mode" 2>/dev/null || echo "?")
        [[ $was == "$mode" ]] || die "the stack in $RUN is running with MLflow artifacts in $was, not $mode; run \`make down\` first" 2
        say "already running: ${running[*]}"
    fi
    # Check every port before starting anything, so a conflict leaves nothing half-started.
    live_pid prefect-server >/dev/null || claim_port prefect-server "$PREFECT_PORT" TTLORA_PREFECT_PORT
    live_pid mlflow-server >/dev/null || claim_port mlflow-server "$MLFLOW_PORT" TTLORA_MLFLOW_PORT
    echo "$mode" >"$RUN/mode"
    # S3 first: the worker and MLflow inherit its endpoint and credentials.
    s3_setup

    # The two servers start side by side; the worker needs the Prefect API.
    if ! live_pid prefect-server >/dev/null; then
        start prefect-server "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT" --analytics-off
    fi
    if ! live_pid mlflow-server >/dev/null; then
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start mlflow-server "$BIN/mlflow" server \
            --backend-store-uri "sqlite:///$RUN/mlflow/mlflow.db" \
            --artifacts-destination "$dest" --serve-artifacts \
            --host "$HOST" --port "$MLFLOW_PORT" --workers 1
    fi
    wait_until prefect-server 120 http_ok "$PREFECT_URL/api/health"
    say "prefect-server healthy at $PREFECT_URL after $((SECONDS - t0))s"

    if ! live_pid prefect-worker >/dev/null; then
        if ! "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1; then
            "$BIN/prefect" work-pool create "$POOL" --type process >>"$RUN/logs/prefect-worker.log" 2>&1 \
                || die "could not create work pool $POOL (log: $RUN/logs/prefect-worker.log)"
            say "created process work pool $POOL"
        fi
        local limit=()
        if [[ -n ${TTLORA_WORKER_LIMIT:-} ]]; then limit=(--limit "$TTLORA_WORKER_LIMIT"); fi
        WORKER_LOG_FROM=$(( $(wc -l <"$RUN/logs/prefect-worker.log" 2>/dev/null || echo 0) + 1 ))
        # Flow runs inherit this: glibc serves allocations >= 1 MiB with mmap and returns them at once.
        # Measured here: a training flow's peak RSS 1.29 -> 0.93 GB (variable-length batches fragment
        # the heap), at some training speed; set it empty to keep glibc's adaptive default.
        export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_-1048576}
        [[ -n $MALLOC_MMAP_THRESHOLD_ ]] || unset MALLOC_MMAP_THRESHOLD_
        start prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process \
            --name "$POOL-worker-1" "${limit[@]}"
        wait_until prefect-worker 90 worker_started
    fi
    say "prefect-worker polling pool $POOL after $((SECONDS - t0))s"

    wait_until mlflow-server 180 http_ok "$MLFLOW_URL/health"
    say "mlflow-server healthy at $MLFLOW_URL after $((SECONDS - t0))s (artifacts: $dest)"

    write_env
    say "up in $((SECONDS - t0))s; \`source $RUN/env.sh\` to use it"
    echo "Prefect UI: $PREFECT_URL"
    echo "MLflow UI:  $MLFLOW_URL"
}

any_alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

stop() {  # stop NAME: SIGTERM its family, wait up to 20 s, then SIGKILL what is left
    local name=$1 f pid pids
    f=$(pidfile "$name")
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    pids=$( [[ $pid =~ ^[0-9]+$ ]] && family "$pid" | tr '\n' ' ' )
    if [[ -z ${pids// } ]]; then rm -f "$f"; return 0; fi
    # shellcheck disable=SC2086
    kill -TERM -- "-$pid" $pids 2>/dev/null || true
    for _ in $(seq 40); do
        # shellcheck disable=SC2086
        any_alive $pids || break
        sleep 0.5
    done
    # shellcheck disable=SC2086
    if any_alive $pids; then
        say "$name did not stop on SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" $pids 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pidfile "$name")"
    say "stopped $name"
}

down() {
    # Worker first (it would log errors while the server goes), then the servers.
    stop prefect-worker
    stop prefect-server & stop mlflow-server & wait
    if compgen -G "$RUN/ceph/pids/*.pid" >/dev/null; then
        TTLORA_RUN_DIR=$RUN bash "$ROOT/infra/ceph/rgw.sh" down
    fi
    rm -f "$RUN/env.sh" "$RUN/mode"
}

status() {
    local name pid url
    for name in "${SERVICES[@]}"; do
        case $name in
            prefect-server) url=$PREFECT_URL ;;
            prefect-worker) url="pool $POOL" ;;
            mlflow-server) url=$MLFLOW_URL ;;
        esac
        if pid=$(live_pid "$name"); then
            printf '%-15s running  %-28s pid %-7s rss %s MB\n' "$name" "$url" "$pid" "$(rss_mb "$pid")"
        else
            printf '%-15s stopped  %s\n' "$name" "$url"
        fi
    done
    if [[ -d $RUN/ceph ]]; then
        TTLORA_RUN_DIR=$RUN bash "$ROOT/infra/ceph/rgw.sh" status
    fi
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
