#!/usr/bin/env bash
# Device-mode import benchmark: `tidegate job import` of a loaded, sealed device (encrypted at
# rest) into a local Garage, against `rclone copy` of the same files from a local directory to
# the same Garage, in the same run. Prints both rates and the ratio (tidegate / rclone; the
# target is >= 0.9). First, the device endpoint's TLS cost: the big file up and down with the AWS CLI
# over plain HTTP and over HTTPS, as a ratio.
#
# Usage: benches/device.sh [small files, default 2000] [big file MiB, default 1024]
#        benches/device.sh 10000 5120     # the acceptance case: 10,000 small files and 5 GiB
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
SMALL=${1:-2000}
BIG_MIB=${2:-1024}
export PATH="$HOME/.cargo/bin:$PATH"
need garage aws rclone python3
release_bin
WORK=$(mktemp -d)
cleanup() {
    [ -n "${DEV_PID:-}" ] && kill "$DEV_PID" 2>/dev/null || true
    [ -n "${GARAGE_PID:-}" ] && kill "$GARAGE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
unset AWS_CA_BUNDLE AWS_PROFILE
start_garage "$WORK" bench

# The data set: small files of 64 KiB and one big file.
SRC="$WORK/src"
python3 - "$SRC" "$SMALL" "$BIG_MIB" <<'EOF'
import os, sys
src, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(small):
    d = os.path.join(src, "d%02d" % (i % 50)); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f%06d" % i), "wb").write(os.urandom(64 << 10))
with open(os.path.join(src, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(os.urandom(1 << 20))
EOF
TOTAL=$(du -sb "$SRC" | cut -f1)
echo "data set: $SMALL files of 64 KiB + one $BIG_MIB MiB file ($TOTAL bytes)"

# The device (encrypted at rest).
DATA="$WORK/device"
"$BIN" --data-dir "$DATA" job create import --target s3://bench/tidegate --endpoint "http://127.0.0.1:$S3" \
    --region garage --manifest-out "$WORK/job.json" >"$WORK/create.txt"
export TIDEGATE_UNLOCK_CODE
TIDEGATE_UNLOCK_CODE=$(sed -n 's/^unlock code: //p' "$WORK/create.txt")
# unlock [--plain-http]: serves the device; sets EP and DEV_AWS (the AWS CLI trusting its certificate).
unlock() {
    "$BIN" --data-dir "$DATA" device unlock --manifest "$WORK/job.json" --s3-listen 127.0.0.1:0 "$@" \
        >"$WORK/unlock.txt" &
    DEV_PID=$!
    for _ in $(seq 600); do grep -q '^ready' "$WORK/unlock.txt" 2>/dev/null && break; sleep 0.1; done
    EP=$(sed -n 's/^s3 endpoint: \([^ ]*\).*/\1/p' "$WORK/unlock.txt")
    local cert
    cert=$(sed -n 's/^certificate: //p' "$WORK/unlock.txt")
    DEV_AWS=(env AWS_ACCESS_KEY_ID="$(sed -n 's/^access key: //p' "$WORK/unlock.txt")"
        AWS_SECRET_ACCESS_KEY="$(sed -n 's/^secret key: //p' "$WORK/unlock.txt")"
        AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$EP" ${cert:+--ca-bundle "$cert"})
}
lock() {
    "$BIN" --data-dir "$DATA" device lock >/dev/null
    wait "$DEV_PID" 2>/dev/null || true
    DEV_PID=
}

# The endpoint's transport: the big file up and down with the AWS CLI over plain HTTP and over
# HTTPS (the default), same device, same run; the probe object is deleted again.
declare -A UP DOWN
for mode in http https; do
    if [ "$mode" = http ]; then unlock --plain-http; else unlock; fi
    t0=$(date +%s.%N)
    "${DEV_AWS[@]}" s3 cp --only-show-errors "$SRC/big.bin" s3://bench/probe.bin
    t1=$(date +%s.%N)
    "${DEV_AWS[@]}" s3 cp --only-show-errors s3://bench/probe.bin - >/dev/null
    t2=$(date +%s.%N)
    "${DEV_AWS[@]}" s3 rm --only-show-errors s3://bench/probe.bin
    UP[$mode]=$(python3 -c "print($t1 - $t0)"); DOWN[$mode]=$(python3 -c "print($t2 - $t1)")
    lock
done
python3 - "$BIG_MIB" "${UP[http]}" "${UP[https]}" "${DOWN[http]}" "${DOWN[https]}" <<'EOF'
import sys
mib, uh, us, dh, ds = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"aws s3 cp {mib} MiB to the device:   http {mib / uh:7.1f} MiB/s, https {mib / us:7.1f} MiB/s, ratio https/http {uh / us:.2f}")
print(f"aws s3 cp {mib} MiB from the device: http {mib / dh:7.1f} MiB/s, https {mib / ds:7.1f} MiB/s, ratio https/http {dh / ds:.2f}")
EOF

# Load the device over HTTPS with the AWS CLI, seal, lock.
unlock
"${DEV_AWS[@]}" s3 cp --recursive --only-show-errors "$SRC" s3://bench/
"$BIN" --data-dir "$DATA" job seal >/dev/null
lock

# tidegate import (verification included) vs rclone copy, same Garage, same run.
t0=$(date +%s.%N)
garage_env "$BIN" --data-dir "$DATA" job import --manifest "$WORK/job.json" --parallel 8 >"$WORK/import.txt" 2>"$WORK/import.err"
t1=$(date +%s.%N)
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$S3" \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$GK RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$GS RCLONE_CONFIG_G_REGION=garage
rclone copy --transfers 8 "$SRC" g:bench/rclone
t2=$(date +%s.%N)
grep '^job' "$WORK/import.txt"
python3 - "$TOTAL" "$t0" "$t1" "$t2" <<'EOF'
import sys
total, t0, t1, t2 = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = total / (1 << 20)
ti, tr = t1 - t0, t2 - t1
print(f"tidegate job import: {mib / ti:8.1f} MiB/s ({ti:.1f} s, unlock + verify included)")
print(f"rclone copy:         {mib / tr:8.1f} MiB/s ({tr:.1f} s)")
print(f"ratio tidegate/rclone: {tr / ti:.2f}")
EOF
