#!/usr/bin/env bash
# File gateway benchmark: tidegate's NFS share vs `rclone mount --vfs-cache-mode full` and
# `s3fs` (Debian's, through FUSE), all against ONE Garage started here, in the same run.
#
# Data set: one 1 GiB file and 5,000 small files of 4-64 KiB (50 directories of 100), random
# data from a seeded PRNG (benches/files-client.c). The client is the same program for every
# tool: one thread, one file after another, 1 MiB requests. For tidegate it speaks NFSv3
# through libnfs over ONE connection (CREATE, UNSTABLE WRITEs, COMMIT per file, as a kernel
# client's close does); for rclone and s3fs it uses POSIX open/write/close on their mounts.
#
# What counts for writes is wall time until the data is SAFELY IN THE BUCKET: the clock starts
# before the first write and stops when a boto3 listing of the bucket shows every object with
# its size (for tidegate, also `tidegate share status` showing 0 dirty files and 0 pending
# deletes). Each tool runs with its default upload settings except that rclone's write-back
# delay is set to tidegate's upload delay (2 s; rclone's default is 5 s), so neither waits
# longer than the other before it starts uploading.
#
# Reads are cold: each tool is restarted with an empty local cache (tidegate's staging files
# are gone once uploaded; rclone's cache dir is emptied) and the page cache is dropped, so the
# data comes from Garage. Every byte read is compared with what was written. Each phase runs
# the three tools back to back, so load from elsewhere on the machine hits them alike.
#
# Acknowledgement alone (before the three tools, ACK_ROUNDS rounds, the two servers alternating):
# the small files written by the same client over NFSv3 to tidegate with its uploads held off
# (upload delay 600 s, a new share each round, so no upload and no Garage work runs beside it)
# and to nfs-ganesha (Debian's, FSAL VFS) exporting a directory on the same disk. ganesha's v3
# must register with rpcbind, so it runs with a private rpcbind in a network namespace of its
# own (its port 111 is not the host's) and the client reaches it from inside that namespace;
# port 111 and 2049 of the host stay free. Each server's CPU time over its run is printed per
# file. Target (issue 20): tidegate's rate >= 0.8x ganesha's.
#
# Garage 2.5 answers a GET of an object between ~3 KiB and 64 KiB in ~44 ms whatever the client
# (rclone and s3fs both read such files at 22 a second): a client reading small files one at a time
# is bound by it.
#
# Usage: benches/files.sh   (SMALL_FILES=N and BIG_MIB=N shrink the data set; TIDEGATE_BIN=path
#        runs that binary instead of building this tree; TOOLS="tidegate s3fs" runs only those
#        tools and READS=0 skips the cold reads, for quick looks: ratios need all three;
#        REFERENCE=0 skips the raw-ingest reference; ACK_ROUNDS=N sets the rounds of the
#        acknowledgement phase against nfs-ganesha, 0 skips it; ACK_ONLY=1 runs that phase alone)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
SMALL_FILES=${SMALL_FILES:-5000}
BIG_MIB=${BIG_MIB:-1024}
SEED=${SEED:-7}
LIMIT=${LIMIT:-1800}
export PATH="$HOME/.cargo/bin:$PATH"
ACK_ROUNDS=${ACK_ROUNDS:-2}
need garage aws rclone s3fs cc python3 fusermount3 mountpoint
[ "$ACK_ROUNDS" = 0 ] || need ganesha.nfsd rpcbind unshare nsenter ip
[ -f /usr/include/nfsc/libnfs.h ] || { echo "missing libnfs-dev: run ./scripts/test first" >&2; exit 1; }
python3 -c 'import boto3' 2>/dev/null || { echo "missing python3-boto3: run ./scripts/test first" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "no /dev/fuse: rclone and s3fs need FUSE" >&2; exit 1; }
release_bin
WORK=$(mktemp -d)
CLIENT=$WORK/files-client
cc -O2 -Wall -o "$CLIENT" benches/files-client.c -lnfs

cleanup() {
    for m in "$WORK/rclone.mnt" "$WORK/s3fs.mnt"; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
    done
    for p in ${TG_PID:-} ${RCLONE_PID:-} ${S3FS_PID:-} ${GANESHA_PID:-} ${GARAGE_PID:-}; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# --- Garage, single node, one bucket (benches/common.sh) ----------------------------------------
start_garage "$WORK" bench
export AK=$GK SK=$GS BUCKET=bench EP="http://127.0.0.1:$S3"
# rclone fails against plain-HTTP loopback endpoints when a CA bundle is forced on it.
unset AWS_CA_BUNDLE

"$CLIENT" manifest "$SMALL_FILES" "$SEED" >"$WORK/small.manifest"
echo "big.bin $((BIG_MIB << 20))" >"$WORK/big.manifest"

# --- the three tools: start, stop, and where their objects land -------------------------------
TG_DATA=$WORK/tidegate
printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$AK" "$SK" >"$WORK/creds.toml"
chmod 600 "$WORK/creds.toml"
"$BIN" --data-dir "$TG_DATA" activate --bucket "s3://$BUCKET/tg" --endpoint "$EP" --region garage \
    --credentials-file "$WORK/creds.toml" >/dev/null
"$BIN" --data-dir "$TG_DATA" share create bench --squash none >/dev/null
TG_PREFIX=tg/shares/bench
tg_start() {
    rm -f "$TG_DATA/run/ready.toml"
    "$BIN" --data-dir "$TG_DATA" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
        --nfs-listen 127.0.0.1:0 --rpcbind off >>"$WORK/tidegate.log" 2>&1 &
    TG_PID=$!
    for _ in $(seq 300); do [ -f "$TG_DATA/run/ready.toml" ] && break; sleep 0.1; done
    TG_PORT=$(sed -n 's/^nfs = ".*:\([0-9]*\)"/\1/p' "$TG_DATA/run/ready.toml")
    TG_URL="nfs://127.0.0.1/bench?nfsport=$TG_PORT&mountport=$TG_PORT"
}
tg_stop() { kill "$TG_PID"; wait "$TG_PID" 2>/dev/null || true; TG_PID=; }
tg_wait_safe() { # until share status shows nothing left to upload
    local s
    while :; do
        s=$("$BIN" --data-dir "$TG_DATA" share status bench)
        grep -q '^dirty files: 0$' <<<"$s" && grep -q '^pending deletes: 0$' <<<"$s" && return 0
        sleep 0.1
    done
}

RCLONE_MNT=$WORK/rclone.mnt
mkdir -p "$RCLONE_MNT"
export RCLONE_CONFIG_GB_TYPE=s3 RCLONE_CONFIG_GB_PROVIDER=Other RCLONE_CONFIG_GB_ENDPOINT=$EP \
    RCLONE_CONFIG_GB_ACCESS_KEY_ID=$AK RCLONE_CONFIG_GB_SECRET_ACCESS_KEY=$SK \
    RCLONE_CONFIG_GB_REGION=garage RCLONE_CONFIG_GB_FORCE_PATH_STYLE=true
rclone_start() {
    rm -rf "$WORK/rclone-cache"
    rclone mount "gb:$BUCKET/rclone" "$RCLONE_MNT" --vfs-cache-mode full --vfs-write-back 2s \
        --cache-dir "$WORK/rclone-cache" --config /dev/null >>"$WORK/rclone.log" 2>&1 &
    RCLONE_PID=$!
    for _ in $(seq 300); do mountpoint -q "$RCLONE_MNT" && break; sleep 0.1; done
    mountpoint -q "$RCLONE_MNT" || { cat "$WORK/rclone.log" >&2; exit 1; }
}
rclone_stop() { fusermount3 -u "$RCLONE_MNT"; wait "$RCLONE_PID" 2>/dev/null || true; RCLONE_PID=; }

S3FS_MNT=$WORK/s3fs.mnt
mkdir -p "$S3FS_MNT"
echo "$AK:$SK" >"$WORK/s3fs.passwd"
chmod 600 "$WORK/s3fs.passwd"
# s3fs mounts a prefix only if it exists as a directory: make its marker.
python3 - <<'EOF'
import os, boto3
from botocore.config import Config
boto3.client("s3", endpoint_url=os.environ["EP"], region_name="garage",
             aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
             config=Config(s3={"addressing_style": "path"})).put_object(
    Bucket=os.environ["BUCKET"], Key="s3fs/", Body=b"")
EOF
s3fs_start() {
    s3fs "$BUCKET:/s3fs" "$S3FS_MNT" -f -o url="$EP" -o use_path_request_style -o endpoint=garage \
        -o passwd_file="$WORK/s3fs.passwd" >>"$WORK/s3fs.log" 2>&1 &
    S3FS_PID=$!
    for _ in $(seq 300); do mountpoint -q "$S3FS_MNT" && break; sleep 0.1; done
    mountpoint -q "$S3FS_MNT" || { cat "$WORK/s3fs.log" >&2; exit 1; }
}
s3fs_stop() { fusermount3 -u "$S3FS_MNT"; wait "$S3FS_PID" 2>/dev/null || true; S3FS_PID=; }

# --- nfs-ganesha over NFSv3 (ganesha_start in benches/common.sh) -------------------------------
GA_DIR=$WORK/ganesha
GA_EXPORT=$GA_DIR/export

# --- acknowledgement alone: tidegate with uploads held off vs nfs-ganesha ------------------------
ack_phase() {
    local conf=$TG_DATA/tidegate.toml r t cpu0 order name
    grep -q '^\[files\]' "$conf" && { echo "$conf already has a [files] section" >&2; exit 1; }
    cp "$conf" "$WORK/tidegate.toml.saved"
    printf '\n[files]\nupload_delay_ms = 600000\n' >>"$conf"
    tg_start
    ganesha_start
    echo "   acknowledgement alone, $SMALL_FILES small files, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    for r in $(seq "$ACK_ROUNDS"); do
        order="tidegate ganesha"
        [ $((r % 2)) = 0 ] && order="ganesha tidegate"
        "$BIN" --data-dir "$TG_DATA" share create "ack$r" --squash none >/dev/null
        rm -rf "${GA_EXPORT:?}"/*
        sync
        for name in $order; do
            if [ "$name" = tidegate ]; then
                cpu0=$(cpu_of "$TG_PID") t=$(now)
                "$CLIENT" write-small "nfs://127.0.0.1/ack$r?nfsport=$TG_PORT&mountport=$TG_PORT" "$SMALL_FILES" "$SEED"
                RESULT[ack.tidegate.$r]=$(since "$t")
                RESULT[ackcpu.tidegate.$r]=$(awk -v a="$cpu0" -v b="$(cpu_of "$TG_PID")" 'BEGIN{printf "%.2f", b-a}')
            else
                cpu0=$(cpu_of "$GANESHA_PID") t=$(now)
                nsenter -t "$GANESHA_PID" -n "$CLIENT" write-small "$GA_URL" "$SMALL_FILES" "$SEED"
                RESULT[ack.ganesha.$r]=$(since "$t")
                RESULT[ackcpu.ganesha.$r]=$(awk -v a="$cpu0" -v b="$(cpu_of "$GANESHA_PID")" 'BEGIN{printf "%.2f", b-a}')
            fi
            echo "   round $r $name: acknowledged in ${RESULT[ack.$name.$r]}s, server CPU ${RESULT[ackcpu.$name.$r]}s, load $(cut -d' ' -f1 /proc/loadavg)" >&2
        done
    done
    ganesha_stop
    tg_stop
    # The held files are never uploaded: their shares go, and the normal delay comes back.
    for r in $(seq "$ACK_ROUNDS"); do "$BIN" --data-dir "$TG_DATA" share delete "ack$r" --force >/dev/null; done
    cp "$WORK/tidegate.toml.saved" "$conf"
}
ack_report() {
    local r
    echo
    echo "acknowledgement alone, $SMALL_FILES small files (uploads held off; seconds, server CPU ms a file):"
    printf '%-10s %10s %10s %10s %10s %8s\n' round tidegate "tg ms/f" ganesha "ga ms/f" "ga/tg"
    for r in $(seq "$ACK_ROUNDS"); do
        awk -v r="$r" -v t="${RESULT[ack.tidegate.$r]}" -v g="${RESULT[ack.ganesha.$r]}" \
            -v tc="${RESULT[ackcpu.tidegate.$r]}" -v gc="${RESULT[ackcpu.ganesha.$r]}" -v n="$SMALL_FILES" \
            'BEGIN{printf "%-10s %10.2f %10.2f %10.2f %10.2f %8.2f\n", r, t, 1000*tc/n, g, 1000*gc/n, g/t}'
    done
    echo "ga/tg = tidegate's rate / ganesha's (target >= 0.8)"
}

# --- every phase, the three tools back to back ------------------------------------------------
# Phases, not tools, are the outer loop: on a shared machine the load drifts over minutes, and
# each comparison should be between runs minutes apart at most.
declare -A RESULT
read -ra TOOLS <<<"${TOOLS:-tidegate rclone s3fs}"
bucket_wait() { python3 benches/files-bucket.py wait "$1" "$2" "$LIMIT"; }
size_of() { [ "$1" = small ] && echo "$SMALL_FILES" || echo "$BIG_MIB"; }
target_of() { case $1 in tidegate) echo "$TG_URL" ;; rclone) echo "$RCLONE_MNT" ;; s3fs) echo "$S3FS_MNT" ;; esac; }
prefix_of() { case $1 in tidegate) echo "$TG_PREFIX" ;; *) echo "$1" ;; esac; }
start_all() { local t; for t in "${TOOLS[@]}"; do case $t in tidegate) tg_start ;; *) "${t}_start" ;; esac; done; }
stop_all() { local t; for t in "${TOOLS[@]}"; do case $t in tidegate) tg_stop ;; *) "${t}_stop" ;; esac; done; }
write_phase() { # big|small
    local set=$1 name t ack
    for name in "${TOOLS[@]}"; do
        t=$(now)
        "$CLIENT" write-$set "$(target_of $name)" "$(size_of $set)" "$SEED"
        ack=$(since "$t")
        [ "$name" = tidegate ] && tg_wait_safe
        bucket_wait "$(prefix_of $name)" "$WORK/$set.manifest"
        RESULT[$name.$set.ack]=$ack
        RESULT[$name.$set.write]=$(since "$t")
        echo "   $name $set: written (acknowledged) in ${ack}s, in the bucket after ${RESULT[$name.$set.write]}s" >&2
    done
}
read_phase() { # big|small
    local set=$1 name t
    for name in "${TOOLS[@]}"; do
        t=$(now)
        "$CLIENT" read-$set "$(target_of $name)" "$(size_of $set)" "$SEED"
        RESULT[$name.$set.read]=$(since "$t")
        echo "   $name $set: read back (cold) in ${RESULT[$name.$set.read]}s" >&2
    done
}

# Reference, not a contender: the same small files copied by `rclone copy` straight from a local
# directory into the same Garage (16 PUTs in flight, no file system or COMMIT in between). It is
# what this Garage on this machine needs to take 5,000 objects at all: a floor under every tool's
# "safely in bucket". It runs after the three tools, so Garage's directories are warm for it.
raw_ingest() {
    local t
    mkdir -p "$WORK/raw-src"
    "$CLIENT" write-small "$WORK/raw-src" "$SMALL_FILES" "$SEED"
    sync
    t=$(now)
    rclone copy "$WORK/raw-src" "gb:$BUCKET/raw" --transfers 16 --config /dev/null
    bucket_wait raw "$WORK/small.manifest"
    RESULT[raw.small.write]=$(since "$t")
    echo "   reference small: rclone copy from local disk in the bucket after ${RESULT[raw.small.write]}s" >&2
    rm -rf "$WORK/raw-src"
}

[ "$ACK_ROUNDS" != 0 ] && ack_phase
if [ "${ACK_ONLY:-0}" = 1 ]; then
    ack_report
    exit 0
fi
start_all
write_phase big
write_phase small
[ "${REFERENCE:-1}" != 0 ] && raw_ingest
# Cold: every tool restarted with an empty local cache, the page cache dropped.
stop_all
if [ "${READS:-1}" != 0 ]; then
    drop_caches
    start_all
    read_phase big
    read_phase small
    stop_all
fi

# --- report --------------------------------------------------------------------------------------
[ "$ACK_ROUNDS" != 0 ] && ack_report
small_bytes=$(awk '{s+=$2} END{print s}' "$WORK/small.manifest")
echo
echo "data: big = $BIG_MIB MiB in one file; small = $SMALL_FILES files, $((small_bytes >> 20)) MiB"
printf '%-34s %10s %10s %10s %8s\n' "seconds (lower is better)" tidegate rclone s3fs ratio
line() { # label key target
    local tg=${RESULT[tidegate.$2]:-0} rc=${RESULT[rclone.$2]:-0} sf=${RESULT[s3fs.$2]:-0}
    local ratio
    ratio=$(awk -v t="$tg" -v a="$rc" -v b="$sf" 'BEGIN{m=(a>0&&(b<=0||a<b))?a:b; printf "%.2f", (m>0)?t/m:0}')
    printf '%-34s %10s %10s %10s %8s%s\n' "$1" "$tg" "$rc" "$sf" "$ratio" "${3:+  (target <= $3)}"
}
line "1 GiB file, safely in bucket" big.write 1.0
line "small files, safely in bucket" small.write 0.5
line "1 GiB file, write acknowledged" big.ack
line "small files, write acknowledged" small.ack
line "1 GiB file, cold read" big.read
line "small files, cold read" small.read
echo "ratio = tidegate / the better of rclone and s3fs"
if [ -n "${RESULT[raw.small.write]:-}" ]; then
    awk -v raw="${RESULT[raw.small.write]}" -v a="${RESULT[rclone.small.write]:-0}" -v b="${RESULT[s3fs.small.write]:-0}" 'BEGIN{
        m=(a>0&&(b<=0||a<b))?a:b
        printf "reference: the small files by `rclone copy` from local disk, 16 in flight: %.2f s", raw
        if (m>0) printf " (%.2f of the better tool; the 0.5 target is %.2f s)", raw/m, m/2
        printf "\n" }'
fi
