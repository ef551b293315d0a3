#!/usr/bin/env bash
# The NFS data path in cache and the metadata rates (issue 20): tidegate's NFSv3 share on the
# embedded default (local-directory bucket) against nfs-ganesha 4.3 (FSAL VFS, NFSv3, exporting a
# directory on the same disk), same run, same clients, the two servers alternating which runs
# first on each line:
#   data:     fio's nfs engine (libnfs; fio-libiscsi, built by ./scripts/test, carries it) on one
#             FILE_MIB file written once first: 1 MiB sequential read and write, 4 KiB random
#             read and write, at queue depth QD, SECS seconds each; writes refill their buffers;
#   metadata: benches/files-client.c over libnfs, one call after another on COUNT names in
#             directories of 100: CREATE of empty files, GETATTR of each by path, REMOVE.
# Prints each rate and the ratio tidegate / ganesha (issue 20's target: >= 0.8 on every line).
#
# Usage: benches/nfs-cache.sh
#   SECS=10 QD=16 FILE_MIB=512 COUNT=2000 ROUNDS=1   (TIDEGATE_BIN=path runs another build;
#   DATA=0 runs the metadata lines alone)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
SECS=${SECS:-10}
QD=${QD:-16}
FILE_MIB=${FILE_MIB:-512}
COUNT=${COUNT:-2000}
ROUNDS=${ROUNDS:-1}
DATA=${DATA:-1}
need fio-libiscsi ganesha.nfsd rpcbind unshare nsenter ip cc
[ -f /usr/include/nfsc/libnfs.h ] || { echo "missing libnfs-dev: run ./scripts/test first" >&2; exit 1; }
release_bin
WORK=$(mktemp -d)
CLIENT=$WORK/files-client
cc -O2 -Wall -o "$CLIENT" benches/files-client.c -lnfs
cleanup() {
    for p in ${TG_PID:-} ${GANESHA_PID:-}; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# tidegate: the embedded default, one share.
TG_DATA=$WORK/tidegate
"$BIN" --data-dir "$TG_DATA" share create bench --squash none >/dev/null
"$BIN" --data-dir "$TG_DATA" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
    --nfs-listen 127.0.0.1:0 --rpcbind off >"$WORK/tidegate.log" 2>&1 &
TG_PID=$!
for _ in $(seq 300); do [ -f "$TG_DATA/run/ready.toml" ] && break; sleep 0.1; done
TG_PORT=$(sed -n 's/^nfs = ".*:\([0-9]*\)"/\1/p' "$TG_DATA/run/ready.toml")
[ -n "$TG_PORT" ] || { cat "$WORK/tidegate.log" >&2; exit 1; }
TG_URL="nfs://127.0.0.1/bench?nfsport=$TG_PORT&mountport=$TG_PORT"

GA_DIR=$WORK/ganesha
GA_EXPORT=$GA_DIR/export
ganesha_start

on() { # server command...: runs the command where the server's clients run
    local server=$1
    shift
    if [ "$server" = ganesha ]; then nsenter -t "$GANESHA_PID" -n "$@"; else "$@"; fi
}
url_of() { [ "$1" = ganesha ] && echo "$GA_URL" || echo "$TG_URL"; }

fio_nfs() { # server rw bs [time] -> "iops bytes_per_sec p99_ms"
    local dir=write fill=--refill_buffers timing=(--runtime="$SECS" --time_based)
    case "$2" in *read) dir=read fill= ;; esac
    [ "${4:-}" = once ] && timing=()
    # fio 3.33's nfs engine sometimes never returns from a run, against ganesha as against
    # tidegate (docs/testing.md): a run is killed after three times its length and its line
    # says so (0 0), rather than the bench waiting forever. fio's job processes outlive the
    # kill of its main one, so they are killed by their command line.
    local cmd=(fio-libiscsi --name=n --ioengine=nfs --nfs_url="$(url_of "$1")" --filename=fio.dat
        --rw="$2" --bs="$3" --iodepth="$QD" --size="${FILE_MIB}M" "${timing[@]}" $fill
        --output-format=json)
    [ "$1" = ganesha ] && cmd=(nsenter -t "$GANESHA_PID" -n "${cmd[@]}")
    timeout -s KILL $((SECS * 3 + 60)) "${cmd[@]}" >"$WORK/fio.json" 2>/dev/null ||
        pkill -KILL -f "fio-libiscsi --name=n " || true
    if grep -q '{' "$WORK/fio.json"; then
        fio_json "$dir" <"$WORK/fio.json"
    else
        echo "0 0"
        echo "fio did not finish (killed)" >&2
    fi
}
meta() { # server mode -> calls per second
    local t0 t1
    t0=$EPOCHREALTIME
    on "$1" "$CLIENT" "$2" "$(url_of "$1")" "$COUNT" 7
    t1=$EPOCHREALTIME
    awk -v n="$COUNT" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n / (b - a)}'
}
line() { # name unit tidegate ganesha
    printf '%-28s %10.0f %-5s %10.0f %-5s %6.2f\n' "$1" "$3" "$2" "$4" "$2" \
        "$(awk -v a="$3" -v b="$4" 'BEGIN{print (b>0)?a/b:0}')"
}

echo "NFS in cache: tidegate (embedded default) vs nfs-ganesha (VFS, same disk), NFSv3 over libnfs;"
echo "fio QD$QD, ${SECS} s a line, one ${FILE_MIB} MiB file; metadata on $COUNT names; load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$DATA" = 1 ]; then
    fio_nfs tidegate write 1M once >/dev/null
    fio_nfs ganesha write 1M once >/dev/null
fi
printf '%-28s %16s %16s %6s\n' workload tidegate ganesha ratio
first=tidegate
for r in $(seq "$ROUNDS"); do
    for w in "read 1M MB/s" "write 1M MB/s" "randread 4k iops" "randwrite 4k iops"; do
        [ "$DATA" = 1 ] || break
        set -- $w
        declare -A got=()
        for s in $first $([ $first = tidegate ] && echo ganesha || echo tidegate); do
            got[$s]=$(fio_nfs "$s" "$1" "$2")
        done
        first=$([ $first = tidegate ] && echo ganesha || echo tidegate)
        if [ "$3" = iops ]; then
            line "$1 $2 QD$QD" iops "$(echo "${got[tidegate]}" | cut -d' ' -f1)" "$(echo "${got[ganesha]}" | cut -d' ' -f1)"
        else
            line "$1 $2 QD$QD" MB/s "$(echo "${got[tidegate]}" | awk '{print $2/1e6}')" "$(echo "${got[ganesha]}" | awk '{print $2/1e6}')"
        fi
    done
    # Metadata: each server creates, stats and removes the same names, in turn.
    for m in create-empty stat-small remove-small; do
        declare -A rate=()
        rate[tidegate]=$(meta tidegate "$m")
        rate[ganesha]=$(meta ganesha "$m")
        line "$m ($COUNT)" "/s" "${rate[tidegate]}" "${rate[ganesha]}"
    done
done
echo "ratio = tidegate / ganesha (issue 20's target: >= 0.8); load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
ganesha_stop
