#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with a RADOS Gateway (S3) on 127.0.0.1, from Debian packages.
#
#   rgw.sh up       install ceph-mon ceph-osd radosgw ceph-common if missing, bootstrap a monitor,
#                   one memstore OSD and radosgw, create an S3 user, write <state>/s3.env
#   rgw.sh down     stop exactly the daemons `up` recorded
#   rgw.sh status   one line per daemon
#
# State: ${TTLORA_RUN_DIR:-.run}/ceph (config, logs, pids, s3.env). The OSD keeps objects in memory
# (memstore): the data is gone after `down`; this is a demo and test S3, not storage.
# Settings: TTLORA_RGW_PORT (7480)  TTLORA_CEPH_MON_PORT (6789)  TTLORA_CEPH_MEMSTORE_MB (2048)
#           TTLORA_S3_USER (ttlora)
#
# The facts that make one node work: `osd pool default size = 1` (+ `mon allow pool size one`),
# a CRUSH rule choosing OSDs rather than hosts (`osd crush chooseleaf type = 0`), an OSD that does
# not try to place itself in the CRUSH map or set its device class (`osd crush update on start =
# false`, `osd class update on start = false`), then `ceph osd crush add osd.0 1.0 root=default`.
# Few placement groups per pool, so radosgw's pools fit under `mon max pg per osd`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
mkdir -p "${TTLORA_RUN_DIR:-.run}"
STATE=$(cd "${TTLORA_RUN_DIR:-.run}" && pwd)/ceph
HOST=127.0.0.1
RGW_PORT=${TTLORA_RGW_PORT:-7480}
MON_PORT=${TTLORA_CEPH_MON_PORT:-6789}
MEMSTORE_MB=${TTLORA_CEPH_MEMSTORE_MB:-2048}
S3_USER=${TTLORA_S3_USER:-ttlora}
CONF=$STATE/ceph.conf
DAEMONS=(ceph-mon ceph-osd radosgw)

say() { echo "rgw: $*" >&2; }
die() { echo "rgw: error: $1" >&2; exit "${2:-1}"; }
ceph_() { ceph -c "$CONF" --connect-timeout 10 "$@"; }

source "$(dirname "${BASH_SOURCE[0]}")/../lib/pids.sh"

pidfile() { echo "$STATE/pids/$1.pid"; }

live_pid() { live_pid_in "$(pidfile "$1")" "$CONF"; }  # the recorded PID of $1 if alive and ours (infra/lib/pids.sh)

start() {  # start NAME CMD...: own session, log and pid file under $STATE
    local name=$1; shift
    echo "--- $(date -Is) $*" >>"$STATE/log/$name.out"
    ( trap - INT QUIT; exec setsid "$@" ) >>"$STATE/log/$name.out" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
}

wait_until() {  # wait_until NAME SECONDS CHECK...
    local name=$1 limit=$2 t0=$SECONDS; shift 2
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$(<"$(pidfile "$name")")" 2>/dev/null; then
            tail -n 15 "$STATE/log/$name.out" >&2 || true
            die "$name exited during startup (logs: $STATE/log)"
        fi
        (( SECONDS - t0 < limit )) || die "$name not ready after ${limit}s (logs: $STATE/log)"
        sleep 0.5
    done
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

install_packages() {
    local missing=()
    command -v ceph-mon >/dev/null || missing+=(ceph-mon)
    command -v ceph-osd >/dev/null || missing+=(ceph-osd)
    command -v radosgw >/dev/null || missing+=(radosgw)
    command -v ceph >/dev/null && command -v radosgw-admin >/dev/null && command -v monmaptool >/dev/null \
        || missing+=(ceph-common)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    say "installing ${missing[*]} (apt-get)"
    local t=$SECONDS
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        ceph-mon ceph-osd radosgw ceph-common >/dev/null
    say "installed in $((SECONDS - t))s"
}

write_conf() {
    cat >"$CONF" <<EOF
# Written by infra/ceph/rgw.sh: one monitor, one memstore OSD, one radosgw, all on $HOST.
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = v1:$HOST:$MON_PORT
mon initial members = a
public addr = $HOST
ms bind msgr2 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $STATE/run
admin socket = $STATE/run/\$cluster-\$name.asok
log file = $STATE/log/\$cluster-\$name.log
log to stderr = false
err to stderr = true
mon data = $STATE/mon/\$cluster-\$id
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 5
mon data avail crit = 1
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd data = $STATE/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = $((MEMSTORE_MB * 1024 * 1024))
osd crush update on start = false
osd class update on start = false

[client.rgw.a]
rgw frontends = beast endpoint=$HOST:$RGW_PORT
rgw data = $STATE/rgw
rgw enable usage log = false
EOF
}

user_keys() {  # print "ACCESS SECRET" of $S3_USER, creating the user if needed (never to the terminal)
    local json
    json=$(radosgw-admin -c "$CONF" user info --uid="$S3_USER" 2>/dev/null) \
        || json=$(radosgw-admin -c "$CONF" user create --uid="$S3_USER" --display-name="ttlora-moe" 2>/dev/null) \
        || die "radosgw-admin could not create user $S3_USER (logs: $STATE/log)"
    python3 -c 'import json, sys; k = json.load(sys.stdin)["keys"][0]; print(k["access_key"], k["secret_key"])' <<<"$json"
}

up() {
    if live_pid radosgw >/dev/null && [[ -f $STATE/s3.env ]]; then
        say "radosgw already running at http://$HOST:$RGW_PORT"
        return 0
    fi
    if live_pid ceph-mon >/dev/null || live_pid ceph-osd >/dev/null; then
        say "a partial cluster is running; restarting it"
        down
    fi
    install_packages
    port_busy "$MON_PORT" && die "port $MON_PORT on $HOST (ceph-mon) is in use; set TTLORA_CEPH_MON_PORT" 2
    port_busy "$RGW_PORT" && die "port $RGW_PORT on $HOST (radosgw) is in use; set TTLORA_RGW_PORT" 2

    local t0=$SECONDS t
    # memstore lives in memory: every start is a fresh cluster.
    rm -rf "$STATE"
    mkdir -p "$STATE"/{run,log,pids,mon,osd/ceph-0,rgw}
    write_conf

    # Monitor
    monmaptool --create --fsid "$(awk '/^fsid/ {print $3}' "$CONF")" --addv a "[v1:$HOST:$MON_PORT]" \
        "$STATE/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$STATE/monmap" >>"$STATE/log/ceph-mon.out" 2>&1 \
        || die "ceph-mon --mkfs failed (log: $STATE/log/ceph-mon.out)"
    start ceph-mon ceph-mon -c "$CONF" -i a -f
    wait_until ceph-mon 60 ceph_ mon stat
    say "ceph-mon up after $((SECONDS - t0))s"

    # One memstore OSD, placed in the CRUSH map by hand
    t=$SECONDS
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph_ osd new "$uuid")
    [[ $id == 0 ]] || die "expected OSD id 0, got '$id'"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$STATE/log/ceph-osd.out" 2>&1 \
        || die "ceph-osd --mkfs failed (log: $STATE/log/ceph-osd.out)"
    start ceph-osd ceph-osd -c "$CONF" -i 0 -f
    ceph_ osd crush add osd.0 1.0 root=default >/dev/null 2>&1
    wait_until ceph-osd 60 osd_up
    say "ceph-osd up after $((SECONDS - t))s"

    # Gateway
    t=$SECONDS
    start radosgw radosgw -c "$CONF" -n client.rgw.a -f
    wait_until radosgw 120 curl -fsS --noproxy '*' --max-time 2 -o /dev/null "http://$HOST:$RGW_PORT/"
    say "radosgw answering after $((SECONDS - t))s"

    # S3 user; keys go to a file only its owner can read, never to the terminal
    local keys
    keys=$(user_keys)
    ( umask 077
      {
          echo "# S3 user '$S3_USER' on the local Ceph RADOS Gateway (infra/ceph/rgw.sh). Secret: do not commit."
          echo "export AWS_ACCESS_KEY_ID=${keys%% *}"
          echo "export AWS_SECRET_ACCESS_KEY=${keys#* }"
          echo "export AWS_ENDPOINT_URL=http://$HOST:$RGW_PORT"
          echo "export MLFLOW_S3_ENDPOINT_URL=http://$HOST:$RGW_PORT"
          echo "export AWS_DEFAULT_REGION=us-east-1"
      } >"$STATE/s3.env" )
    say "S3 at http://$HOST:$RGW_PORT up in $((SECONDS - t0))s; credentials in $STATE/s3.env (\`source\` it)"
}

osd_up() { ceph_ osd dump | grep -q '^osd.0 up *in'; }

down() {
    # Gateway first, then the OSD, then the monitor.
    local name pid
    for name in radosgw ceph-osd ceph-mon; do
        [[ -f $(pidfile "$name") ]] || continue
        if pid=$(live_pid "$name"); then
            kill -TERM -- "-$pid" 2>/dev/null || true
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
            say "stopped $name"
        fi
        rm -f "$(pidfile "$name")"
    done
    rm -f "$STATE/s3.env"
}

status() {
    local name pid rss
    for name in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$name"); then
            rss=$(ps -o rss= -s "$pid" | awk '{ s += $1 } END { printf "%d", s / 1024 }')
            printf '%-15s running  %-28s pid %-7s rss %s MB\n' "$name" \
                "$([[ $name == radosgw ]] && echo "http://$HOST:$RGW_PORT" || echo "$HOST")" "$pid" "$rss"
        else
            printf '%-15s stopped\n' "$name"
        fi
    done
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
