#!/usr/bin/env bash
# Device-mode copy-in benchmark: one big file into an unlocked device (encrypted at rest) over
# its NFS export (libnfs `nfs-cp`: UNSTABLE writes, COMMIT at close, which returns once the file
# is a device object) against the AWS CLI's `aws s3 cp` of the same file into the same device's
# S3 endpoint (multipart, 8 MiB parts, 10 in flight), in the same run. Then the same for small
# files (one `nfs-cp` process per file vs one `aws s3 cp --recursive`). Prints the rates and the
# ratios (NFS / S3).
#
# Usage: benches/device-nfs.sh [big file MiB, default 1024] [small files, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
BIG_MIB=${1:-1024}
SMALL=${2:-300}
need aws nfs-cp python3
release_bin
WORK=$(mktemp -d)
cleanup() {
    [ -n "${DEV_PID:-}" ] && kill "$DEV_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
unset AWS_CA_BUNDLE AWS_PROFILE

SRC="$WORK/src"
python3 - "$SRC" "$BIG_MIB" "$SMALL" <<'EOF'
import os, sys
src, big, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.join(src, "small"))
with open(os.path.join(src, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(os.urandom(1 << 20))
for i in range(small):
    open(os.path.join(src, "small", "f%05d" % i), "wb").write(os.urandom(64 << 10))
EOF

DATA="$WORK/device"
"$BIN" --data-dir "$DATA" job create import --target s3://bench/x --region garage \
    --manifest-out "$WORK/job.json" >"$WORK/create.txt"
export TIDEGATE_UNLOCK_CODE
TIDEGATE_UNLOCK_CODE=$(sed -n 's/^unlock code: //p' "$WORK/create.txt")
"$BIN" --data-dir "$DATA" device unlock --manifest "$WORK/job.json" --s3-listen 127.0.0.1:0 \
    --nfs-listen 127.0.0.1:0 >"$WORK/unlock.txt" &
DEV_PID=$!
for _ in $(seq 600); do grep -q '^ready' "$WORK/unlock.txt" 2>/dev/null && break; sleep 0.1; done
EP=$(sed -n 's/^s3 endpoint: \([^ ]*\).*/\1/p' "$WORK/unlock.txt")
NFS=$(sed -n 's/^nfs export: nfs:\/\/\([^ ]*\).*/\1/p' "$WORK/unlock.txt")
PORT=${NFS%%/*}; PORT=${PORT##*:}
url() { echo "nfs://127.0.0.1/bench/$1?nfsport=$PORT&mountport=$PORT"; }
s3() {
    AWS_ACCESS_KEY_ID=$(sed -n 's/^access key: //p' "$WORK/unlock.txt") \
    AWS_SECRET_ACCESS_KEY=$(sed -n 's/^secret key: //p' "$WORK/unlock.txt") \
    AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$EP" s3 "$@"
}
now() { date +%s.%N; }

t0=$(now); nfs-cp "$SRC/big.bin" "$(url nfs-big.bin)" >/dev/null; t1=$(now)
s3 cp --only-show-errors "$SRC/big.bin" s3://bench/s3-big.bin; t2=$(now)
# nfs-cp makes no directories: the NFS small files go to the top level of the export.
for f in "$SRC"/small/*; do nfs-cp "$f" "$(url "nfs-$(basename "$f")")" >/dev/null; done; t3=$(now)
s3 cp --recursive --only-show-errors "$SRC/small" s3://bench/s3-small/; t4=$(now)
s3 ls --recursive s3://bench/ | awk '{n++; b+=$3} END {print "device holds " n " objects, " b " bytes"}'

python3 - "$BIG_MIB" "$SMALL" "$t0" "$t1" "$t2" "$t3" "$t4" <<'EOF'
import sys
big, small = int(sys.argv[1]), int(sys.argv[2])
t0, t1, t2, t3, t4 = map(float, sys.argv[3:])
nb, sb, ns, ss = t1 - t0, t2 - t1, t3 - t2, t4 - t3
print(f"{big} MiB file  NFS (nfs-cp):  {big / nb:8.1f} MiB/s ({nb:.1f} s)")
print(f"{big} MiB file  S3 (aws s3 cp): {big / sb:8.1f} MiB/s ({sb:.1f} s)")
print(f"ratio NFS/S3, big file: {sb / nb:.2f}")
print(f"{small} x 64 KiB  NFS (nfs-cp each): {small / ns:8.1f} files/s ({ns:.1f} s)")
print(f"{small} x 64 KiB  S3 (aws s3 cp -r): {small / ss:8.1f} files/s ({ss:.1f} s)")
print(f"ratio NFS/S3, small files: {ss / ns:.2f}")
EOF
