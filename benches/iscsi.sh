#!/usr/bin/env bash
# iSCSI benchmark: tidegate vs tgt (Debian's reference target, file-backed LUN) in the same run,
# same initiator, same working set, data in cache. Reads with libiscsi's iscsi-perf, writes with
# fio's libiscsi engine (fio-libiscsi, built by ./scripts/test). Prints a table and ratios
# (tidegate / tgt; higher is better for tidegate).
#
# Usage: benches/iscsi.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
SECS=${1:-10}
SIZE_MIB=512
need tgtd tgtadm iscsi-perf fio-libiscsi
release_bin
WORK=$(mktemp -d)
cleanup() {
    stop_tgt
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT


# tgt, LUN 1 on a file in the same filesystem as tidegate's cache.
TGT_PORT=$(free_port)
CTL=$((TGT_PORT % 1000 + 1000))
truncate -s ${SIZE_MIB}M "$WORK/tgt.img"
tgtd -f -C $CTL --iscsi portal=127.0.0.1:$TGT_PORT >"$WORK/tgtd.log" 2>&1 &
TGT_PID=$!
for _ in $(seq 100); do
    tgtadm -C $CTL --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.org.tidegate:bench-tgt 2>/dev/null && break
    sleep 0.1
done
tgtadm -C $CTL --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgt.img"
tgtadm -C $CTL --lld iscsi --op bind --mode target --tid 1 -I ALL
TGT_URL="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.tidegate:bench-tgt/1"

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
    "$BIN" --data-dir "$data" volume create --name bench --size ${SIZE_MIB}MiB >/dev/null
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
    kill "$TG_PID" 2>/dev/null || true
    wait "$TG_PID" 2>/dev/null || true
    TG_PID=
}
BUFFER=4GiB
start_tidegate "$WORK/tidegate" --cache-size $BUFFER --upload-buffer-size $BUFFER

fio_url() { echo "$1" | sed 's/:/\\:/g'; }
fio_run() { # url rw bs -> "iops bytes_per_sec"
    fio-libiscsi --name=b --ioengine=libiscsi --filename="$(fio_url "$1")" --rw="$2" --bs="$3" \
        --iodepth=16 --size=${SIZE_MIB}M --runtime="$SECS" --time_based --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):]); w=d["jobs"][0]["write"]; print(w["iops"], w["bw_bytes"])'
}
perf_run() { # url blocks random? -> "iops bytes_per_sec"
    local flags=(-m 16 -b "$2" -t "$SECS")
    [ "$3" = random ] && flags+=(-r)
    iscsi-perf "${flags[@]}" "$1" 2>&1 | tr '\r' '\n' | sed -n 's/.*iops average \([0-9]*\) (\([0-9]*\) MB\/s).*/\1 \2/p' | tail -1 |
        awk '{print $1, $2*1000000}'
}

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
