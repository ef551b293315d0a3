#!/usr/bin/env bash
# Catalog copy memory (issue 21): the daemon's resident memory around its start-up catalog copy,
# and `recover`'s when it restores that copy, with the catalog grown to PAD_MIB by a table of
# blobs (half random, half zeros, so lz4 has something to do): a stand-in for the rows of many
# files (131,000 inodes made a 26 MB catalog; a million files make about 250 MB). The embedded
# default, with its local-directory bucket under the data dir.
#
# Prints one table: catalog MiB, seconds from start to the copy in the bucket, the daemon's MiB
# RSS after the copy and its peak (VmHWM), and recover's peak.
#
# Usage: PAD_MIB=250 benches/catalog-copy.sh; TIDEGATE_BIN=path measures another build (the
# copy's memory is buffers, the same in a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
PAD_MIB=${PAD_MIB:-250}
need sqlite3 /usr/bin/time
release_bin
WORK=$(mktemp -d)
DATA=$WORK/data
cleanup() {
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mib() { awk -v k="$1:" '$1==k{printf "%.0f", $2/1024}' "/proc/$TG_PID/status"; }
copies() { find "$DATA/bucket/gateway" -regextype posix-extended -regex '.*/catalog/[0-9]{20}' 2>/dev/null | sort; }
serve() {
    rm -f "$DATA/run/ready.toml"
    "$BIN" --data-dir "$DATA" serve --iscsi-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
        --nfs-listen 127.0.0.1:0 --rpcbind off >>"$WORK/tidegate.log" 2>&1 &
    TG_PID=$!
    for _ in $(seq 1200); do
        [ -f "$DATA/run/ready.toml" ] && return
        kill -0 "$TG_PID" 2>/dev/null || { tail "$WORK/tidegate.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "the daemon did not start in 60 s" >&2
    exit 1
}
stop() { kill "$TG_PID"; wait "$TG_PID" || true; TG_PID=; }

# The first start creates the key, the catalog and the bucket; then the catalog is padded.
serve
stop
sqlite3 "$DATA/catalog.db" "CREATE TABLE bench_pad(b BLOB);
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $PAD_MIB * 16)
    INSERT INTO bench_pad SELECT randomblob(32768) || zeroblob(32768) FROM n;"
CATALOG=$(du -m "$DATA/catalog.db" | cut -f1)
BEFORE=$(copies | tail -1)
T0=$EPOCHREALTIME
serve
until [ "$(copies | tail -1)" != "$BEFORE" ]; do sleep 0.05; done
SECONDS_TO_COPY=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
sleep 1
RSS=$(mib VmRSS)
PEAK=$(mib VmHWM)
stop

# recover from the same bucket onto a fresh data dir: its peak is the restore's memory.
REC=$WORK/recovered
/usr/bin/time -f '%M' -o "$WORK/recover.kib" "$BIN" --data-dir "$REC" recover \
    --bucket "file://$DATA/bucket" --key-file "$DATA/key" >/dev/null
REC_PEAK=$(awk '{printf "%.0f", $1/1024}' "$WORK/recover.kib")
cmp <(sqlite3 "$DATA/catalog.db" 'SELECT count(*) FROM bench_pad') \
    <(sqlite3 "$REC/catalog.db" 'SELECT count(*) FROM bench_pad') ||
    { echo "the recovered catalog differs" >&2; exit 1; }

printf '%-12s %16s %14s %14s %16s\n' "catalog MiB" "s to the copy" "MiB RSS after" "MiB RSS peak" "recover MiB peak"
printf '%-12s %16s %14s %14s %16s\n' "$CATALOG" "$SECONDS_TO_COPY" "$RSS" "$PEAK" "$REC_PEAK"
