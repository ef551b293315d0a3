#!/usr/bin/env bash
# A single-host Ceph cluster for the compatibility tests, the way Ceph's own vstart.sh runs one
# for developers: one monitor, one manager, one OSD on memstore (objects in RAM, nothing on disk
# but the monitor's store), one RADOS Gateway, all on loopback, cephx off, everything under DIR.
#
# Usage: ceph-rgw.sh DIR MON_PORT RGW_PORT ACCESS_KEY SECRET_KEY
# Prints nothing on success; DIR/ceph.conf is the cluster's config and DIR/*.log its logs. The
# daemons' pids are in DIR/run/*.pid (the caller stops them). Exits non-zero on a failed step.
set -euo pipefail
# Name the step that failed: most steps send their own output to /dev/null.
trap 'echo "ceph-rgw.sh: line $LINENO: \"$BASH_COMMAND\" exited $?" >&2' ERR
dir=$1 mon_port=$2 rgw_port=$3 access_key=$4 secret_key=$5
mkdir -p "$dir"/{run,mon.a,osd.0,mgr.x}
conf=$dir/ceph.conf
fsid=$(cat /proc/sys/kernel/random/uuid)

cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/\$name.log
pid file = $dir/run/\$name.pid
# One copy of everything: this cluster is a test fixture, not a store of record.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
ms bind msgr2 = false
ms bind ipv6 = false
public addr = 127.0.0.1
[mon]
mon data = $dir/mon.\$id
[mgr]
mgr data = $dir/mgr.\$id
# The manager's Python modules are not needed for S3; keep it lean.
mgr disabled modules = dashboard
[osd]
osd data = $dir/osd.\$id
osd objectstore = memstore
# memstore keeps objects in RAM; 1 GiB is ample for the suite's few hundred MiB.
memstore device bytes = 1073741824
osd journal size = 0
osd max object name len = 460
osd max object namespace len = 64
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw dns name = localhost
rgw data = $dir/rgw
rgw enable usage log = false
rgw lc debug interval = -1
CONF

monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >/dev/null
ceph-mon -c "$conf" -i a </dev/null >/dev/null 2>&1
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
ceph -c "$conf" osd new "$osd_uuid" >/dev/null
ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
ceph-osd -c "$conf" -i 0 </dev/null >/dev/null 2>&1
ceph-mgr -c "$conf" -i x </dev/null >/dev/null 2>&1
mkdir -p "$dir/rgw"
radosgw -c "$conf" -n client.rgw.a </dev/null >/dev/null 2>&1
radosgw-admin -c "$conf" user create --uid tidegate --display-name tidegate \
    --access-key "$access_key" --secret-key "$secret_key" >/dev/null
