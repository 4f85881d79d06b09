# Shared by infra/local/stack.sh and infra/ceph/rgw.sh (sourced, not run).

# live_pid_in FILE MARKER: the PID recorded in FILE if that process is alive and still ours (it leads
# its own process group, as the scripts' `start` made it, and its command line contains MARKER), else
# nothing and status 1. Guards against a stale file whose PID was reused.
live_pid_in() {
    local f=$1 marker=$2 pid pgid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || return 1
    [[ $pgid == "$pid" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$marker" || return 1
    echo "$pid"
}
