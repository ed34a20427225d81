#!/usr/bin/env bash
# Start a throwaway one-node Ceph cluster (monitor, one OSD, the RGW S3 gateway) bound to
# 127.0.0.1, for the S3 tests and benchmarks.  Needs the Debian packages radosgw, ceph-mon
# and ceph-osd.  All state lives under $CEPH_DIR; scripts/ceph-down.sh stops it.
#
#   CEPH_DIR   where the cluster lives        (default /tmp/chunkrepo-ceph; must not hold a running one)
#   RGW_PORT   the S3 endpoint's port         (default 7480; the script fails if it is taken)
#   MON_PORT   the monitor's port             (default: a free one)
#   OBJSTORE   memstore (RAM, default) or bluestore (an 8 GiB sparse file, for benchmarks)
#   CHUNKREPO_TEST_S3_KEY / CHUNKREPO_TEST_S3_SECRET   the S3 user's keys (default testkey / testsecret)
#
# The gateway runs with tcp_nodelay=1, as a production one should: without it every GET
# with a body waits ~40 ms (its Nagle against the client's delayed ACK), 10x a PUT.
#
# On success the last lines are the variables the tests read, ready for `eval`:
#   export CHUNKREPO_TEST_S3_ENDPOINT=http://127.0.0.1:7480 ...
set -euo pipefail
D=${CEPH_DIR:-/tmp/chunkrepo-ceph}
RGW_PORT=${RGW_PORT:-7480}
OBJSTORE=${OBJSTORE:-memstore}
KEY=${CHUNKREPO_TEST_S3_KEY:-testkey}
SECRET=${CHUNKREPO_TEST_S3_SECRET:-testsecret}

die() { echo "ceph-up: $*" >&2; exit 1; }
port_taken() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for tool in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
    command -v "$tool" >/dev/null || die "$tool not found: install the packages radosgw ceph-mon ceph-osd"
done
for f in "$D"/run/*.pid; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && die "a cluster is already running in $D (scripts/ceph-down.sh stops it)"
done
port_taken "$RGW_PORT" && die "port $RGW_PORT is already in use (another RGW?); choose another with RGW_PORT=..."
MON_PORT=${MON_PORT:-$(free_port)}
port_taken "$MON_PORT" && die "monitor port $MON_PORT is already in use; choose another with MON_PORT=..."

rm -rf "$D"
mkdir -p "$D"/{mon,osd,run,log,rgw}
FSID=$(python3 -c 'import uuid; print(uuid.uuid4())')
cat > "$D/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
public network = 127.0.0.0/8
ms bind ipv6 = false
ms bind msgr2 = false
osd objectstore = $OBJSTORE
memstore device bytes = 2147483648
bluestore block create = true
bluestore block size = 8589934592
osd memory target = 939524096
# the OSD is placed in the CRUSH map below; its own update at start (a monitor command
# that now and then goes out before it knows the cluster's fsid: 'wrong fsid') is not needed
osd crush update on start = false
osd class update on start = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
keyring = $D/keyring
[mon.a]
mon data = $D/mon
[osd.0]
osd data = $D/osd
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw data = $D/rgw
rgw dns name = localhost
CONF
C=(-c "$D/ceph.conf")

ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
ceph-mon "${C[@]}" -i a
# a monitor command right after another one now and then fails with EPERM "problem
# getting command descriptions from mon" while the monitor settles: try again
again() {
    local attempt
    for attempt in 1 2 3 4 5; do
        "$@" && return 0
        sleep 1
    done
    die "failed 5 times: $*; logs in $D/log"
}
OSD_ID=$(again ceph "${C[@]}" --connect-timeout 60 osd create)
ceph-osd "${C[@]}" -i "$OSD_ID" --mkfs --osd-uuid "$(python3 -c 'import uuid; print(uuid.uuid4())')" \
    2>"$D/log/osd-mkfs.err"
again ceph "${C[@]}" osd crush add-bucket localhost host >/dev/null
again ceph "${C[@]}" osd crush move localhost root=default >/dev/null
again ceph "${C[@]}" osd crush add "osd.$OSD_ID" 1.0 host=localhost >/dev/null
for attempt in 1 2 3; do
    ceph-osd "${C[@]}" -i "$OSD_ID" && break
    [ "$attempt" = 3 ] && die "the OSD did not start; logs in $D/log"
    sleep 1
done
radosgw "${C[@]}" -n client.rgw.a
again radosgw-admin "${C[@]}" user create --uid=chunkrepo-test --display-name=chunkrepo-test \
    --access-key="$KEY" --secret="$SECRET" >/dev/null

# the gateway answers about 15 s after the start
for _ in $(seq 1 240); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "http://127.0.0.1:$RGW_PORT/" 2>/dev/null; then
        echo "ceph-up: S3 ready at http://127.0.0.1:$RGW_PORT (state in $D)" >&2
        echo "export CHUNKREPO_TEST_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT CHUNKREPO_TEST_S3_KEY=$KEY CHUNKREPO_TEST_S3_SECRET=$SECRET"
        exit 0
    fi
    sleep 0.5
done
die "the S3 endpoint on port $RGW_PORT did not answer within 120 s; logs in $D/log"
