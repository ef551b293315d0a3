#!/usr/bin/env bash
# Scale bench (issue 21): the limits tidegate publishes, run on ONE gateway with the embedded
# default (no config file, a local-directory bucket under the data dir), with real clients:
#
#   volumes  VOLUMES cached volumes of VOLUME_SIZE (sparse), the last MiB of each written and
#            read back with a pattern check by qemu-io over iSCSI (libiscsi);
#   tapes    TAPES tapes in the library; tests/it/vtl_client.c (libiscsi) reads the changer's
#            element status over all of them and loads and unloads CYCLES tapes;
#   share    FILES files through the FUSE mount (WRITERS processes in parallel, 16 bytes each,
#            written and closed): BIG of them in one directory, RENAME in another, the rest
#            spread over DIRS directories; per-file costs probed (PROBE creates, lookups,
#            stats, removes and uploads) in a directory of 10 entries and in the big one; the
#            big directory listed through NFSv3 (libnfs's nfs-ls) and through FUSE, each name
#            checked to appear once; every file stat'ed; the RENAME directory renamed; uploads
#            drained;
#   restart  the daemon stopped and started at full size (start must take under a minute),
#            the first volume's last MiB read back and the big directory listed again; the log
#            shows whether any bucket level was listed after the restart.
#
# Prints ONE table: step, count, seconds, MiB RSS of the daemon after the step (and the peak).
# Ports: all chosen by the daemon (127.0.0.1:0), no portmapper (never 111 or 2049).
#
# Usage: benches/scale.sh    full size by default (1,000,000 files; hours on 2 cores);
#        FILES=20000 BIG=5000 RENAME=1000 benches/scale.sh for a look in a few minutes.
#        TIDEGATE_BIN=path runs that binary instead of building this tree; KEEP=1 keeps the
#        work dir (WORK_DIR=path puts it there; it needs room for FILES bucket objects).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
VOLUMES=${VOLUMES:-32}
VOLUME_SIZE=${VOLUME_SIZE:-32TiB}
TAPES=${TAPES:-1500}
CYCLES=${CYCLES:-20}
FILES=${FILES:-1000000}
BIG=${BIG:-100000}
RENAME=${RENAME:-10000}
DIRS=${DIRS:-1000}
WRITERS=${WRITERS:-4}
PROBE=${PROBE:-1000}
SPREAD=$((FILES - BIG - RENAME))
[ "$SPREAD" -ge "$DIRS" ] || { echo "FILES must exceed BIG + RENAME + DIRS" >&2; exit 2; }
need qemu-io nfs-ls cc python3 mountpoint fusermount3 iscsi-inq
[ -e /dev/fuse ] || { echo "no /dev/fuse: the share is driven through FUSE" >&2; exit 1; }
release_bin
WORK=${WORK_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
DATA=$WORK/data
MNT=$WORK/mnt
mkdir -p "$MNT"
FILESPY=benches/scale-files.py

cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    [ -n "${RSS_PID:-}" ] && kill "$RSS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/vtl_client" tests/it/vtl_client.c -liscsi

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
rss() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/${TG_PID:-none}/status" 2>/dev/null || echo -; }
peak() { awk '/^VmHWM/{printf "%.0f", $2/1024}' "/proc/${TG_PID:-none}/status" 2>/dev/null || echo -; }
ROWS=()
row() { ROWS+=("$(printf '%-44s %10s %10s %8s %8s' "$1" "$2" "$3" "$(rss)" "$(peak)")"); echo "${ROWS[-1]}" >&2; }
tg() { "$BIN" --data-dir "$DATA" "$@"; }

start() {
    rm -f "$DATA/run/ready.toml"
    RUST_LOG=${RUST_LOG:-info,tidegate::gateway::files::refresh=debug} \
        "$BIN" --data-dir "$DATA" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
        --nfs-listen 127.0.0.1:0 --rpcbind off --fuse "share=$MNT" >>"$WORK/tidegate.log" 2>&1 &
    TG_PID=$!
    for _ in $(seq 1200); do
        [ -f "$DATA/run/ready.toml" ] && mountpoint -q "$MNT" && break
        kill -0 "$TG_PID" 2>/dev/null || { tail "$WORK/tidegate.log" >&2; exit 1; }
        sleep 0.05
    done
    [ -f "$DATA/run/ready.toml" ] || { echo "the daemon did not start in 60 s" >&2; exit 1; }
    PORTAL=$(sed -n 's/^iscsi = "\(.*\)"/\1/p' "$DATA/run/ready.toml")
    NFS=$(sed -n 's/^nfs = "127.0.0.1:\(.*\)"/\1/p' "$DATA/run/ready.toml")
}
stop() {
    kill "$TG_PID"
    wait "$TG_PID" || true
}
# Waits until every file written so far is in the bucket.
drain() {
    until tg share status share | grep -q "every file written so far is safely there"; do sleep 0.5; done
}
val() { sed -n "s/^$2 //p" <<<"$1"; }
vol_url() { echo "iscsi://$PORTAL/iqn.2026-11.org.tidegate:tidegate.$1/0"; }
last_mib() {
    local bytes
    bytes=$(awk -v s="$VOLUME_SIZE" 'BEGIN{n=s+0; u=substr(s,length(n)+1); m=(u=="TiB")?2^40:(u=="GiB")?2^30:2^20; printf "%.0f", n*m}')
    echo $((bytes - (1 << 20)))
}
qemu_check() {
    local out
    out=$(qemu-io -f raw -c "$2" "$1" 2>&1)
    if grep -qi "fail\|error" <<<"$out"; then echo "qemu-io $2 on $1: $out" >&2; exit 1; fi
}

# --- volumes and tapes, created before the daemon starts (the CLI writes the catalog) --------
t=$(now)
for i in $(seq -w 1 "$VOLUMES"); do tg volume create --name "v$i" --size "$VOLUME_SIZE" >/dev/null; done
row "volume create ($VOLUME_SIZE)" "$VOLUMES" "$(since "$t")"
t=$(now)
for ((left = TAPES; left > 0; left -= 100)); do
    tg tape create --barcode-prefix SC --count $((left < 100 ? left : 100)) --size 100GiB >/dev/null
done
row "tape create" "$TAPES" "$(since "$t")"
t=$(now)
start
row "start (volumes and tapes only)" 1 "$(since "$t")"

OFF=$(last_mib)
FIRST=v$(seq -w 1 "$VOLUMES" | head -1)
LAST=v$(seq -w 1 "$VOLUMES" | tail -1)
for _ in $(seq 200); do iscsi-inq "$(vol_url "$LAST")" >/dev/null 2>&1 && break; sleep 0.1; done
t=$(now)
for i in $(seq -w 1 "$VOLUMES"); do qemu_check "$(vol_url "v$i")" "write -P 0x5a $OFF 1M"; done
row "volume: write last MiB" "$VOLUMES" "$(since "$t")"
t=$(now)
for i in $(seq -w 1 "$VOLUMES"); do qemu_check "$(vol_url "v$i")" "read -P 0x5a $OFF 1M"; done
row "volume: read back last MiB" "$VOLUMES" "$(since "$t")"

VTL=$(VTL_CYCLES=$CYCLES "$WORK/vtl_client" "iscsi://$PORTAL/iqn.2026-11.org.tidegate:tidegate:vtl" cycles)
grep -q "^ok" <<<"$VTL" || { echo "vtl_client: $VTL" >&2; exit 1; }
[ "$(val "$VTL" tapes)" = "$TAPES" ] || { echo "element status shows $(val "$VTL" tapes) tapes, not $TAPES" >&2; exit 1; }
row "tape: READ ELEMENT STATUS (all)" "$(val "$VTL" tapes)" "$(val "$VTL" element_status_seconds)"
row "tape: load + unload (each with RES)" "$CYCLES" "$(val "$VTL" cycle_seconds)"

# --- the share ---------------------------------------------------------------------------------
mkdir "$MNT/small"
for i in $(seq 10); do echo x >"$MNT/small/s$i"; done

t=$(now)
python3 "$FILESPY" create "$MNT" big "$BIG" "$WRITERS" >"$WORK/big.out"
row "share: create in one directory" "$BIG" "$(since "$t")"
while read -r _ tenth _ entries _ ms; do
    [ "$tenth" = 1 ] || [ "$tenth" = 5 ] || [ "$tenth" = 10 ] || continue
    row "  ms/file up to $entries entries" "$((BIG / 10))" "$ms"
done < <(grep '^tenth' "$WORK/big.out")
t=$(now)
drain
row "share: uploads drained" "$BIG" "$(since "$t")"

t=$(now)
python3 "$FILESPY" create "$MNT" move "$RENAME" "$WRITERS" >/dev/null
python3 "$FILESPY" spread "$MNT" d "$DIRS" "$SPREAD" "$WRITERS" >/dev/null
row "share: create in $DIRS + 1 directories" "$((SPREAD + RENAME))" "$(since "$t")"
t=$(now)
drain
row "share: uploads drained" "$FILES" "$(since "$t")"

# The two directories interleaved (every 100 files), so that both see the same load from
# elsewhere.
P=$(python3 "$FILESPY" probe "$MNT" "$PROBE" small big)
for op in create lookup stat remove; do
    row "probe in dir of 10: $op (us/op)" "$PROBE" "$(val "$P" "small $op us_per_op")"
    row "probe in dir of $BIG: $op (us/op)" "$PROBE" "$(val "$P" "big $op us_per_op")"
done
# Upload of one file: PROBE new files in each directory, the time until they are all in the
# bucket (the upload delay, 2 s, included).
for d in small big; do
    python3 "$FILESPY" create "$MNT" "$d" "$PROBE" 1 9000000 >/dev/null
    t=$(now)
    drain
    row "probe upload in $d (s for all, 2 s delay)" "$PROBE" "$(since "$t")"
done

list_check() {
    local what=$1 got=$2 want=$3
    if [ "$(val "$got" names)" != "$want" ] || [ "$(val "$got" unique)" != "$want" ]; then
        echo "$what listed $(val "$got" names) names ($(val "$got" unique) unique), not $want" >&2
        exit 1
    fi
}
WANT=$((BIG + PROBE))
t=$(now)
N=$(nfs-ls "nfs://127.0.0.1/share/big?nfsport=$NFS&mountport=$NFS" | awk '{print $NF}' | grep -v '^\.\.\?$' | sort)
list_check "nfs-ls" "$(printf 'names %s\nunique %s' "$(wc -l <<<"$N")" "$(uniq <<<"$N" | wc -l)")" "$WANT"
row "share: nfs-ls of the big directory" "$WANT" "$(since "$t")"
t=$(now)
L=$(python3 "$FILESPY" list "$MNT/big")
list_check "FUSE" "$L" "$WANT"
row "share: FUSE listing of the big directory" "$WANT" "$(since "$t")"
t=$(now)
S=$(python3 "$FILESPY" stat "$MNT" "$WRITERS")
row "share: stat every file (FUSE)" "$(val "$S" stats)" "$(since "$t")"
t=$(now)
mv "$MNT/move" "$MNT/moved"
row "share: rename a directory" "$RENAME" "$(since "$t")"
t=$(now)
drain
row "share: renamed objects copied" "$RENAME" "$(since "$t")"

# --- restart at full size ----------------------------------------------------------------------
t=$(now)
stop
row "stop (catalog backed up at shutdown)" 1 "$(since "$t")"
LOGLINES=$(wc -l <"$WORK/tidegate.log")
t=$(now)
start
START=$(since "$t")
row "restart at full size" 1 "$START"
AT_START=$(tail -n +"$((LOGLINES + 1))" "$WORK/tidegate.log" | grep -c "listed the bucket level" || true)
t=$(now)
for _ in $(seq 200); do iscsi-inq "$(vol_url "$FIRST")" >/dev/null 2>&1 && break; sleep 0.1; done
qemu_check "$(vol_url "$FIRST")" "read -P 0x5a $OFF 1M"
row "volume: last MiB after restart" 1 "$(since "$t")"
t=$(now)
N=$(nfs-ls "nfs://127.0.0.1/share/big?nfsport=$NFS&mountport=$NFS" | awk '{print $NF}' | grep -v '^\.\.\?$' | sort)
list_check "nfs-ls after restart" "$(printf 'names %s\nunique %s' "$(wc -l <<<"$N")" "$(uniq <<<"$N" | wc -l)")" "$WANT"
row "share: nfs-ls of the big directory" "$WANT" "$(since "$t")"
# A directory whose listing is older than the share's refresh interval (300 s) is listed again
# when next used, restart or not; the restart itself must list nothing.
LISTED=$(tail -n +"$((LOGLINES + 1))" "$WORK/tidegate.log" | grep -c "listed the bucket level" || true)

echo
uptime
printf '%-44s %10s %10s %8s %8s\n' step count seconds "MiB RSS" "peak"
printf '%s\n' "${ROWS[@]}"
echo "bucket levels listed by the restart: $AT_START; by the nfs-ls after it: $((LISTED - AT_START))"
awk -v s="$START" 'BEGIN{exit !(s < 60)}' || { echo "FAIL: the restart took $START s (limit 60)"; exit 1; }
