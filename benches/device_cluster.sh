#!/usr/bin/env bash
# Device cluster benchmark (issue 19): `aws s3 cp --recursive` over HTTPS of one data set into a
# standalone device and into device 1 of a 3-device cluster (one Garage node per device,
# replication factor 3), same data, same run; prints both rates and the ratio (cluster /
# standalone). Then kill -9 of device 3 and its Garage node, more objects put through device 1,
# device 3 unlocked again, and the time until `device status` on device 1 says the data set is
# fully redundant again; printed beside the time the missed objects took to load.
#
# Usage: benches/device_cluster.sh
#   SMALL=500 SMALL_KIB=64 BIG_MIB=256   the data set: SMALL files of SMALL_KIB KiB + one BIG_MIB file
#   MISSED=100                           64 KiB objects put while device 3 is down
#   TIDEGATE_BIN=...                     another build (default: the release build, see common.sh)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. benches/common.sh
SMALL=${SMALL:-500}
SMALL_KIB=${SMALL_KIB:-64}
BIG_MIB=${BIG_MIB:-256}
MISSED=${MISSED:-100}
DEVICES=3
export PATH="$HOME/.cargo/bin:$PATH"
need garage aws python3
release_bin
export TIDEGATE_GARAGE
TIDEGATE_GARAGE=$(command -v garage)
WORK=$(mktemp -d)
declare -A PIDS
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # A device's Garage node is its child, but one whose device was killed -9 is not stopped
    # by it: stop every node left.
    for f in "$WORK"/*/cluster/garage.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
unset AWS_CA_BUNDLE AWS_PROFILE

# The data set: small files and one big file (random bytes: nothing compresses).
SRC="$WORK/src"
python3 - "$SRC" "$SMALL" "$SMALL_KIB" "$BIG_MIB" <<'EOF'
import os, sys
src, small, kib, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(small):
    d = os.path.join(src, "d%02d" % (i % 50)); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f%06d" % i), "wb").write(os.urandom(kib << 10))
with open(os.path.join(src, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(os.urandom(1 << 20))
EOF
MISSED_SRC="$WORK/missed"
mkdir -p "$MISSED_SRC"
for i in $(seq "$MISSED"); do head -c 65536 /dev/urandom >"$MISSED_SRC/m$i"; done
TOTAL=$(du -sb "$SRC" | cut -f1)
echo "data set: $SMALL files of $SMALL_KIB KiB + one $BIG_MIB MiB file ($TOTAL bytes); binary $BIN"

now() { date +%s.%N; }
field() { sed -n "s/^$1: //p" "$2"; }

# create_job DIR: an import job on the device in DIR (nothing is imported here: the target is
# never reached); sets MANIFEST and TIDEGATE_UNLOCK_CODE.
export TIDEGATE_UNLOCK_CODE
create_job() {
    mkdir -p "$1"
    MANIFEST="$1.manifest.json"
    "$BIN" --data-dir "$1" job create import --target s3://bench/data --endpoint http://127.0.0.1:9 \
        --region garage --manifest-out "$MANIFEST" >"$1.create.txt"
    TIDEGATE_UNLOCK_CODE=$(field 'unlock code' "$1.create.txt")
}
# start NAME: `device unlock` of the device in $WORK/NAME (HTTPS on a free port), in the background.
start() {
    "$BIN" --data-dir "$WORK/$1" device unlock --manifest "$MANIFEST" --s3-listen 127.0.0.1:0 \
        >"$WORK/$1.unlock.txt" 2>"$WORK/$1.unlock.err" &
    PIDS[$1]=$!
}
# ready NAME: waits for the device's `ready` line (at most 120 s).
ready() {
    for _ in $(seq 1200); do
        grep -q '^ready' "$WORK/$1.unlock.txt" 2>/dev/null && return
        kill -0 "${PIDS[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "device $1 did not become ready; see $WORK/$1.unlock.err" >&2
    cat "$WORK/$1.unlock.err" >&2
    exit 1
}
# aws_to NAME ARGS...: the AWS CLI against the device's endpoint, trusting its certificate.
aws_to() {
    local f="$WORK/$1.unlock.txt" ep cert
    shift
    ep=$(field 's3 endpoint' "$f" | cut -d' ' -f1)
    cert=$(field certificate "$f")
    env AWS_ACCESS_KEY_ID="$(field 'access key' "$f")" AWS_SECRET_ACCESS_KEY="$(field 'secret key' "$f")" \
        AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$ep" ${cert:+--ca-bundle "$cert"} "$@"
}
status() { "$BIN" --data-dir "$WORK/$1" device status; }
# wait_status NAME PATTERN LIMIT: until NAME's `device status` matches the extended regex.
wait_status() {
    local deadline=$(($(date +%s) + $3))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        status "$1" 2>/dev/null | grep -Eq "$2" && return
        sleep 0.25
    done
    echo "device status on $1 never matched '$2':" >&2
    status "$1" >&2 || true
    exit 1
}
# load NAME: the data set through the device; prints the seconds it took.
load() {
    local t0 t1
    t0=$(now)
    aws_to "$1" s3 cp --recursive --only-show-errors "$SRC" s3://bench/ >&2
    t1=$(now)
    python3 -c "print($t1 - $t0)"
}

# The standalone device.
create_job "$WORK/alone"
start alone
ready alone
T_ALONE=$(load alone)
"$BIN" --data-dir "$WORK/alone" device lock >/dev/null
wait "${PIDS[alone]}" 2>/dev/null || true
unset 'PIDS[alone]'

# The cluster: job on dev1, `device cluster create` there, `join` on the others with the token,
# every device unlocked at once (each waits for the layout that needs all of them).
create_job "$WORK/dev1"
node_args() {
    echo --manifest "$MANIFEST" --name "$1" --rpc-addr "127.0.0.1:$(free_port)" \
        --garage-s3-listen "127.0.0.1:$(free_port)" --garage-admin-listen "127.0.0.1:$(free_port)" \
        --capacity 8GiB
}
# shellcheck disable=SC2046 # node_args prints words without spaces
"$BIN" --data-dir "$WORK/dev1" device cluster create --devices $DEVICES $(node_args dev1) >"$WORK/cluster.txt"
TOKEN=$(field 'join token' "$WORK/cluster.txt")
for i in $(seq 2 $DEVICES); do
    mkdir -p "$WORK/dev$i"
    # shellcheck disable=SC2046
    TIDEGATE_CLUSTER_TOKEN=$TOKEN "$BIN" --data-dir "$WORK/dev$i" device cluster join $(node_args "dev$i") >/dev/null
done
t0=$(now)
for i in $(seq $DEVICES); do start "dev$i"; done
for i in $(seq $DEVICES); do ready "dev$i"; done
wait_status dev1 'redundancy: full' 180
t1=$(now)
T_UP=$(python3 -c "print($t1 - $t0)")
T_CLUSTER=$(load dev1)

# Device 3 lost (kill -9 of the device and of its Garage node, as a power loss); objects put
# through device 1 meanwhile; device 3 back; time until device 1 reports full redundancy.
GARAGE3=$(cat "$WORK/dev3/cluster/garage.pid")
# (in braces: the shell's "Killed" notice, printed as it reaps the device, goes too)
{
    kill -9 "${PIDS[dev3]}" "$GARAGE3"
    wait "${PIDS[dev3]}" || true
} 2>/dev/null
unset 'PIDS[dev3]'
wait_status dev1 'device dev3: DOWN' 90
t0=$(now)
aws_to dev1 s3 cp --recursive --only-show-errors "$MISSED_SRC" s3://bench/missed/
t1=$(now)
T_MISSED=$(python3 -c "print($t1 - $t0)")
t0=$(now)
start dev3
ready dev3
t1=$(now)
wait_status dev1 'redundancy: full' 600
status dev1 | grep -q 'writes: accepted'
t2=$(now)
T_READY=$(python3 -c "print($t1 - $t0)")
T_WHOLE=$(python3 -c "print($t2 - $t0)")
# Every object lists through the returned device.
WANT=$((SMALL + 1 + MISSED))
GOT=$(aws_to dev3 s3 ls --recursive s3://bench/ | wc -l)
[ "$GOT" = "$WANT" ] || { echo "dev3 lists $GOT objects, not $WANT" >&2; exit 1; }

echo
uptime
python3 - "$TOTAL" "$T_ALONE" "$T_CLUSTER" "$T_UP" "$MISSED" "$T_MISSED" "$T_READY" "$T_WHOLE" <<'EOF'
import sys
total, alone, cluster, up = int(sys.argv[1]), *map(float, sys.argv[2:5])
missed, t_missed, ready, whole = int(sys.argv[5]), *map(float, sys.argv[6:])
mib = total / (1 << 20)
print(f"standalone device load:       {mib / alone:8.1f} MiB/s ({alone:.1f} s)")
print(f"3-device cluster load (dev1): {mib / cluster:8.1f} MiB/s ({cluster:.1f} s; cluster up in {up:.1f} s)")
print(f"ratio cluster/standalone:     {alone / cluster:.2f}")
print(f"{missed} objects put with dev3 down: {t_missed:.1f} s")
print(f"dev3 back: ready in {ready:.1f} s, fully redundant in {whole:.1f} s after its restart")
print(f"ratio redundant-again time / missed-objects load time: {whole / t_missed:.2f}")
EOF
