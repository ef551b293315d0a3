#!/usr/bin/env bash
# iSCSI benchmark: tidegate vs tgt (Debian's reference target, file-backed LUN) in the same run,
# same initiator, same working set, data in cache. Reads with libiscsi's iscsi-perf, writes with
# fio's libiscsi engine (fio-libiscsi, built by ./scripts/test). Prints a table and ratios
# (tidegate / tgt; higher is better for tidegate).
#
# Then (issue 20) the matrix on the defaults: a fresh 1 GiB LUN on each target, tidegate on its
# embedded default (no sizes given), 4 KiB random and 1 MiB sequential reads and writes over the
# whole LUN at queue depth 1 and 16 for each duration, rate and p99 latency of each; and the
# sustained line: sequential writes of 4x a 1 GiB upload buffer into a Garage, until the last
# byte is in the bucket, against `aws s3 cp` of a file of that size to the same Garage.
#
# Usage: benches/iscsi.sh [seconds per run, default 10]
#   MATRIX=0              skip the matrix on the defaults
#   MATRIX_SECS="10 60"   its durations
#   SUSTAIN=0             skip the sustained line; SUSTAIN_BUFFER_GIB=1 its upload buffer
#   SIZED=0               skip the first part (the sized 512 MiB working set)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
SECS=${1:-10}
SIZE_MIB=512
MATRIX=${MATRIX:-1}
MATRIX_SECS=${MATRIX_SECS:-10 60}
SUSTAIN=${SUSTAIN:-1}
SUSTAIN_BUFFER_GIB=${SUSTAIN_BUFFER_GIB:-1}
export PATH="$HOME/.cargo/bin:$PATH"
need tgtd tgtadm iscsi-perf fio-libiscsi
[ "$SUSTAIN" = 0 ] || need garage aws
release_bin
WORK=$(mktemp -d)
cleanup() {
    stop_tgt
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    [ -n "${GARAGE_PID:-}" ] && kill "$GARAGE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT


# tgt, LUN 1 on a file in the same filesystem as tidegate's cache.
truncate -s ${SIZE_MIB}M "$WORK/tgt.img"
start_tgt bench-tgt "$WORK/tgtd.log" -b "$WORK/tgt.img"
TGT_URL="$TGT_BASE/1"

# tidegate on a local-directory bucket, one volume. The cache and upload buffer are sized for the
# working set as docs/install.md asks (the buffer holds bursts: this one rewrites 512 MiB again and
# again, which a 1 GiB buffer holds only at half full, where uploads start at once and share the
# two cores with the writer). The last line repeats the sequential write on the 1 GiB defaults.
start_tidegate() { # data_dir [activate args...] -> sets TG_PID and TG_URL
    local data=$1
    shift
    mkdir -p "$data/bucket"
    if [ $# -gt 0 ]; then
        "$BIN" --data-dir "$data" activate --bucket "file://$data/bucket" "$@" >/dev/null
    fi
    "$BIN" --data-dir "$data" volume create --name bench --size "${VOL_MIB:-$SIZE_MIB}MiB" >/dev/null
    "$BIN" --data-dir "$data" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
        --nfs-listen 127.0.0.1:0 >"$data.log" 2>&1 &
    TG_PID=$!
    for _ in $(seq 300); do [ -f "$data/run/ready.toml" ] && break; sleep 0.1; done
    local portal
    portal=$(sed -n 's/^iscsi = "\(.*\)"/\1/p' "$data/run/ready.toml")
    TG_URL="iscsi://$portal/iqn.2026-11.org.tidegate:tidegate.bench/0"
    for _ in $(seq 100); do iscsi-inq "$TG_URL" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_tidegate() {
    [ -n "${TG_PID:-}" ] || return 0
    kill "$TG_PID" 2>/dev/null || true
    wait "$TG_PID" 2>/dev/null || true
    TG_PID=
}
fio_url() { echo "$1" | sed 's/:/\\:/g'; }
fio_run() { # url rw bs -> "iops bytes_per_sec p99_ms" (writes)
    fio-libiscsi --name=b --ioengine=libiscsi --filename="$(fio_url "$1")" --rw="$2" --bs="$3" \
        --iodepth=16 --size=${SIZE_MIB}M --runtime="$SECS" --time_based --output-format=json 2>/dev/null |
        fio_json write
}
perf_run() { # url blocks random? -> "iops bytes_per_sec"
    local flags=(-m 16 -b "$2" -t "$SECS")
    [ "$3" = random ] && flags+=(-r)
    iscsi-perf "${flags[@]}" "$1" 2>&1 | tr '\r' '\n' | sed -n 's/.*iops average \([0-9]*\) (\([0-9]*\) MB\/s).*/\1 \2/p' | tail -1 |
        awk '{print $1, $2*1000000}'
}

if [ "${SIZED:-1}" != 0 ]; then
BUFFER=4GiB
start_tidegate "$WORK/tidegate" --cache-size $BUFFER --upload-buffer-size $BUFFER
# Fill both LUNs so reads hit written data that is in cache.
fio_run "$TGT_URL" write 1M >/dev/null
fio_run "$TG_URL" write 1M >/dev/null

echo "tidegate: cache $BUFFER, upload buffer $BUFFER; working set ${SIZE_MIB} MiB; ${SECS} s per run"
printf '%-26s %14s %14s %8s\n' "workload" "tgt" "tidegate" "ratio"
report() { # name tgt_line tg_line unit(iops|MB/s)
    local t g
    if [ "$4" = iops ]; then t=$(echo "$2" | awk '{print $1}'); g=$(echo "$3" | awk '{print $1}')
    else t=$(echo "$2" | awk '{printf "%.0f", $2/1e6}'); g=$(echo "$3" | awk '{printf "%.0f", $2/1e6}'); fi
    printf '%-26s %10.0f %-3s %10.0f %-3s %8.2f\n' "$1" "$t" "$4" "$g" "$4" "$(awk -v a="$g" -v b="$t" 'BEGIN{print (b>0)?a/b:0}')"
}
report "4 KiB random read"      "$(perf_run "$TGT_URL" 8 random)"   "$(perf_run "$TG_URL" 8 random)"   iops
report "1 MiB sequential read"  "$(perf_run "$TGT_URL" 2048 seq)"   "$(perf_run "$TG_URL" 2048 seq)"   MB/s
report "4 KiB random write"     "$(fio_run "$TGT_URL" randwrite 4k)" "$(fio_run "$TG_URL" randwrite 4k)" iops
report "1 MiB sequential write" "$(fio_run "$TGT_URL" write 1M)"    "$(fio_run "$TG_URL" write 1M)"    MB/s

# The same write on the embedded default (its sizes follow the disk, docs/install.md Sizing;
# `tidegate status` in the log below says which), and on a 1 GiB buffer that the writes outrun,
# where back-pressure sets the pace.
stop_tidegate
start_tidegate "$WORK/default"
"$BIN" --data-dir "$WORK/default" status 2>/dev/null | sed -n 's/^ *\(automatic: [0-9]*% of [^ ]* [^ ]*\).*/# default sizes: \1/p' | head -1
fio_run "$TG_URL" write 1M >/dev/null
report "1 MiB seq write, default" "$(fio_run "$TGT_URL" write 1M)" "$(fio_run "$TG_URL" write 1M)" MB/s
stop_tidegate
start_tidegate "$WORK/small" --cache-size 1GiB --upload-buffer-size 1GiB
fio_run "$TG_URL" write 1M >/dev/null
report "1 MiB seq write, 1 GiB" "$(fio_run "$TGT_URL" write 1M)" "$(fio_run "$TG_URL" write 1M)" MB/s
report "4 KiB rand write, 1 GiB" "$(fio_run "$TGT_URL" randwrite 4k)" "$(fio_run "$TG_URL" randwrite 4k)" iops
fi


# --- issue 20: the defaults, the way people first test a new LUN ----------------------------
fio_line() { # url rw bs qd secs -> "iops bytes_per_sec p99_ms" of the direction rw uses
    # Writes refill their buffers: every block new random bytes, as real data (fio's default
    # repeats one buffer, which a compressing target would turn into almost nothing).
    local dir=write fill=--refill_buffers
    case "$2" in *read) dir=read fill= ;; esac
    fio-libiscsi --name=b --ioengine=libiscsi --filename="$(fio_url "$1")" --rw="$2" --bs="$3" \
        --iodepth="$4" --size=1G --runtime="$5" --time_based $fill --output-format=json 2>/dev/null |
        fio_json "$dir"
}
matrix_report() { # name unit tgt_line tg_line
    local t g
    if [ "$2" = iops ]; then t=$(echo "$3" | awk '{print $1}'); g=$(echo "$4" | awk '{print $1}')
    else t=$(echo "$3" | awk '{printf "%.0f", $2/1e6}'); g=$(echo "$4" | awk '{printf "%.0f", $2/1e6}'); fi
    printf '%-30s %9.0f %-4s %9.0f %-4s %6.2f %9.2f %9.2f %6.2f\n' "$1" "$t" "$2" "$g" "$2" \
        "$(awk -v a="$g" -v b="$t" 'BEGIN{print (b>0)?a/b:0}')" \
        "$(echo "$3" | awk '{print $3}')" "$(echo "$4" | awk '{print $3}')" \
        "$(echo "$3 $4" | awk '{print ($3>0)?$6/$3:0}')"
}
if [ "$MATRIX" != 0 ]; then
    stop_tidegate
    stop_tgt
    wait 2>/dev/null || true
    rm -f "$WORK/tgt.img"
    truncate -s 1G "$WORK/tgt.img"
    start_tgt bench-tgt "$WORK/tgtd2.log" -b "$WORK/tgt.img"
    TGT_URL="$TGT_BASE/1"
    VOL_MIB=1024 start_tidegate "$WORK/matrix"
    echo
    echo "issue 20 matrix: 1 GiB LUNs, whole LUN, tidegate on the embedded default; load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BIN" --data-dir "$WORK/matrix" status 2>/dev/null | grep -E '^(cache|upload buffer):' -A1 | sed 's/^/# /'
    # Both LUNs written once whole, so reads return data (a new LUN read unwritten is only zeros).
    fio-libiscsi --name=f --ioengine=libiscsi --filename="$(fio_url "$TGT_URL")" --rw=write --bs=1M --iodepth=16 --size=1G >/dev/null 2>&1
    fio-libiscsi --name=f --ioengine=libiscsi --filename="$(fio_url "$TG_URL")" --rw=write --bs=1M --iodepth=16 --size=1G >/dev/null 2>&1
    printf '%-30s %14s %14s %6s %9s %9s %6s\n' "workload" "tgt" "tidegate" "ratio" "tgt p99" "tg p99" "p99 x"
    first=tgt
    for secs in $MATRIX_SECS; do
        for w in "randread 4k iops" "read 1M MB/s" "randwrite 4k iops" "write 1M MB/s"; do
            set -- $w
            for qd in 1 16; do
                # The two targets alternate which runs first, so drift in the machine hits both.
                if [ $first = tgt ]; then
                    t=$(fio_line "$TGT_URL" "$1" "$2" "$qd" "$secs"); g=$(fio_line "$TG_URL" "$1" "$2" "$qd" "$secs"); first=tg
                else
                    g=$(fio_line "$TG_URL" "$1" "$2" "$qd" "$secs"); t=$(fio_line "$TGT_URL" "$1" "$2" "$qd" "$secs"); first=tgt
                fi
                matrix_report "$1 $2 QD$qd ${secs}s" "$3" "$t" "$g"
            done
        done
    done
    echo "(p99 in ms; p99 x = tidegate's p99 / tgt's; load at the end $(cut -d' ' -f1-3 /proc/loadavg))"
    stop_tidegate
fi

# --- issue 20: sustained writes at the bucket's pace -------------------------------------------
if [ "$SUSTAIN" != 0 ]; then
    stop_tgt
    mkdir -p "$WORK/g"
    start_garage "$WORK/g" sustain
    total_mib=$((SUSTAIN_BUFFER_GIB * 4 * 1024))
    data="$WORK/sustain"
    mkdir -p "$data"
    printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$GK" "$GS" >"$WORK/creds.toml"
    chmod 600 "$WORK/creds.toml"
    "$BIN" --data-dir "$data" activate --bucket "s3://sustain/tg" --endpoint "http://127.0.0.1:$S3" \
        --region garage --credentials-file "$WORK/creds.toml" \
        --cache-size "${SUSTAIN_BUFFER_GIB}GiB" --upload-buffer-size "${SUSTAIN_BUFFER_GIB}GiB" >/dev/null
    VOL_MIB=$total_mib start_tidegate "$data"
    echo
    echo "issue 20 sustained: ${total_mib} MiB of 1 MiB sequential writes (QD16) on a ${SUSTAIN_BUFFER_GIB} GiB upload buffer into Garage, until the last byte is uploaded; load $(cut -d' ' -f1-3 /proc/loadavg)"
    t0=$(date +%s.%N)
    fio-libiscsi --name=s --ioengine=libiscsi --filename="$(fio_url "$TG_URL")" --rw=write --bs=1M \
        --iodepth=16 --size="${total_mib}M" --refill_buffers >/dev/null 2>&1
    t1=$(date +%s.%N)
    until "$BIN" --data-dir "$data" status 2>/dev/null | grep -q ' 0 B dirty'; do sleep 0.5; done
    t2=$(date +%s.%N)
    stop_tidegate
    head -c "${total_mib}M" /dev/urandom >"$WORK/sustain.bin"
    sync
    t3=$(date +%s.%N)
    garage_env aws --endpoint-url "http://127.0.0.1:$S3" s3 cp "$WORK/sustain.bin" s3://sustain/raw.bin >/dev/null
    t4=$(date +%s.%N)
    # Context, not the target: the same bytes as 1 MiB objects (a volume's chunks are objects of
    # that size), 16 PUTs in flight; Garage's cost per object shows here.
    mkdir -p "$WORK/pieces"
    (cd "$WORK/pieces" && split -b 1M -a 5 "$WORK/sustain.bin" c)
    rm -f "$WORK/sustain.bin"
    sync
    t5=$(date +%s.%N)
    printf '[default]\ns3 =\n  max_concurrent_requests = 16\n' >"$WORK/aws.cfg"
    AWS_CONFIG_FILE="$WORK/aws.cfg" garage_env aws --endpoint-url "http://127.0.0.1:$S3" \
        s3 cp --recursive --quiet "$WORK/pieces" s3://sustain/pieces >/dev/null
    t6=$(date +%s.%N)
    rm -rf "$WORK/pieces"
    awk -v m="$total_mib" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" -v f="$t5" -v g="$t6" 'BEGIN{
        tg = m / (c - a); raw = m / (e - d); pieces = m / (g - f)
        printf "tidegate: written in %.1f s, in the bucket after %.1f s: %.0f MiB/s\n", b - a, c - a, tg
        printf "aws s3 cp of the same size to the same Garage: %.1f s: %.0f MiB/s\n", e - d, raw
        printf "  (the same bytes as 1 MiB objects, 16 in flight: %.1f s: %.0f MiB/s)\n", g - f, pieces
        printf "sustained ratio (tidegate / raw ingest): %.2f (to the 1 MiB objects: %.2f)\n", tg / raw, tg / pieces }'
fi
