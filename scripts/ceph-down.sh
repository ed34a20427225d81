#!/usr/bin/env bash
# Stop the cluster scripts/ceph-up.sh started in $CEPH_DIR (only the daemons named by its pid
# files) and remove its state (KEEP=1 keeps $CEPH_DIR, logs included).
D=${CEPH_DIR:-/tmp/chunkrepo-ceph}
pids=()
for f in "$D"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 1 20); do          # up to 10 s for a clean exit
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
done
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; done
[ "${KEEP:-0}" = 1 ] || rm -rf "$D"
true
