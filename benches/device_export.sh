#!/usr/bin/env bash
# Device-mode export benchmark: `tidegate job export` (a Garage prefix copied onto the device,
# encrypted at rest, every object verified against its ETag) against `rclone copy` of the same
# prefix from the same Garage to a local directory, in the same run. Prints both rates and the
# ratio (tidegate / rclone).
#
# Usage: benches/device_export.sh [small files, default 2000] [big file MiB, default 1024]
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
    [ -n "${GARAGE_PID:-}" ] && kill "$GARAGE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
unset AWS_CA_BUNDLE AWS_PROFILE
start_garage "$WORK" bench
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$S3" \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$GK RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$GS RCLONE_CONFIG_G_REGION=garage

# The data set (small files of 64 KiB and one big file), put into Garage.
SRC="$WORK/src"
python3 - "$SRC" "$SMALL" "$BIG_MIB" <<'EOF'
import os, sys
src, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(src, exist_ok=True)
for i in range(small):
    d = os.path.join(src, "d%02d" % (i % 50)); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f%06d" % i), "wb").write(os.urandom(64 << 10))
with open(os.path.join(src, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(os.urandom(1 << 20))
EOF
TOTAL=$(du -sb "$SRC" | cut -f1)
rclone copy --transfers 8 "$SRC" g:bench/src
# The local copy stays until the end: deleted here, its 2,000 inodes made the creates of the
# side measured first slower (ext4 without a journal skips inodes freed in the last minute,
# reading each one's table block; docs/testing.md).
echo "data set: $SMALL files of 64 KiB + one $BIG_MIB MiB file ($TOTAL bytes) in Garage"

DATA="$WORK/device"
"$BIN" --data-dir "$DATA" job create export --source s3://bench/src --endpoint "http://127.0.0.1:$S3" \
    --region garage --manifest-out "$WORK/job.json" >"$WORK/create.txt"
export TIDEGATE_UNLOCK_CODE
TIDEGATE_UNLOCK_CODE=$(sed -n 's/^unlock code: //p' "$WORK/create.txt")

# CPU seconds so far: this shell's finished children (bash's `times`, second line), and Garage.
# Not in a command substitution: its subshell has no children of its own yet.
cpu() { # file
    times >"$WORK/times"
    local garage
    garage=$(cpu_of "$GARAGE_PID")
    sed -n 2p "$WORK/times" | tr -d 's' | tr 'm' ' ' |
        awk -v g="$garage" '{print $1 * 60 + $2 + $3 * 60 + $4, g}' >"$1"
}
cpu "$WORK/c0"
t0=$(date +%s.%N)
garage_env "$BIN" --data-dir "$DATA" job export --manifest "$WORK/job.json" --parallel 8 >"$WORK/export.txt" 2>"$WORK/export.err"
t1=$(date +%s.%N)
cpu "$WORK/c1"
rclone copy --transfers 8 g:bench/src "$WORK/rclone"
t2=$(date +%s.%N)
cpu "$WORK/c2"
grep '^job' "$WORK/export.txt"
python3 - "$TOTAL" "$t0" "$t1" "$t2" $(cat "$WORK/c0" "$WORK/c1" "$WORK/c2") <<'EOF'
import sys
total, t0, t1, t2 = int(sys.argv[1]), *map(float, sys.argv[2:5])
c = list(map(float, sys.argv[5:]))
mib = total / (1 << 20)
te, tr = t1 - t0, t2 - t1
print(f"tidegate job export: {mib / te:8.1f} MiB/s ({te:.1f} s, unlock + verify + seal included;"
      f" CPU {c[2] - c[0]:.1f} s tidegate + {c[3] - c[1]:.1f} s Garage)")
print(f"rclone copy:         {mib / tr:8.1f} MiB/s ({tr:.1f} s;"
      f" CPU {c[4] - c[2]:.1f} s rclone + {c[5] - c[3]:.1f} s Garage)")
print(f"ratio tidegate/rclone: {tr / te:.2f}")
EOF
