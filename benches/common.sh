# Sourced by the benchmark scripts (from the repository root): what they all need.

# Fails loudly naming the first missing tool.
need() {
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "missing $t: run ./scripts/test first" >&2; exit 1; }
    done
}

# Builds the release binary and sets BIN to it (into $CARGO_TARGET_DIR when set), or uses
# $TIDEGATE_BIN when set: another build, e.g. to measure before and after a change.
release_bin() {
    if [ -n "${TIDEGATE_BIN:-}" ]; then
        BIN=$TIDEGATE_BIN
        return
    fi
    cargo build --release -q
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/tidegate
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Stops the tgtd started as TGT_PID on control port CTL, if any: tgtd -f does not stop on
# SIGTERM while its target exists, so ask it, then make sure.
stop_tgt() {
    if [ -n "${TGT_PID:-}" ]; then
        tgtadm -C "$CTL" --op delete --mode system >/dev/null 2>&1 || true
        sleep 0.5
        kill -9 "$TGT_PID" 2>/dev/null || true
    fi
}

# start_tgt NAME LOG LUN-ARGS...: starts tgtd on a free loopback port (log in LOG) with one
# target, iqn.2026-11.org.tidegate:NAME, whose LUN 1 is made with LUN-ARGS (tgtadm's
# logicalunit options); sets TGT_PID, CTL (for stop_tgt) and TGT_BASE (the target's URL).
start_tgt() {
    local name=$1 log=$2
    shift 2
    TGT_PORT=$(free_port)
    CTL=$((TGT_PORT % 1000 + 1000))
    tgtd -f -C $CTL --iscsi portal=127.0.0.1:$TGT_PORT >"$log" 2>&1 &
    TGT_PID=$!
    for _ in $(seq 100); do
        tgtadm -C $CTL --lld iscsi --op new --mode target --tid 1 -T "iqn.2026-11.org.tidegate:$name" 2>/dev/null && break
        sleep 0.1
    done
    tgtadm -C $CTL --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 "$@"
    tgtadm -C $CTL --lld iscsi --op bind --mode target --tid 1 -I ALL
    TGT_BASE="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.tidegate:$name"
}

hex() { python3 -c "import os; print(os.urandom($1).hex())"; }

# CPU seconds process $1 has used so far (user + system, from /proc).
CLK_TCK=$(getconf CLK_TCK)
cpu_of() { awk -v hz="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# fio's JSON report on stdin (anything fio printed before it skipped) -> "iops bytes_per_sec
# p99_ms" of direction $1 (read or write).
fio_json() {
    python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):])["jobs"][0][sys.argv[1]]
p=d["clat_ns"].get("percentile",{}).get("99.000000",0)/1e6
print(d["iops"], d["bw_bytes"], p)' "$1"
}

# Starts a single-node Garage under $1 with one bucket ($2); sets GARAGE_PID, S3 (its port), GK
# and GS (its key), defines garage_env (runs a command with its credentials) and waits until
# the bucket answers.
start_garage() {
    local dir=$1 bucket=$2 rpc admin
    rpc=$(free_port); S3=$(free_port); admin=$(free_port)
    GK="GK$(hex 12)"; GS=$(hex 32)
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3"
[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(hex 16)"
EOF
    GARAGE_DEFAULT_ACCESS_KEY=$GK GARAGE_DEFAULT_SECRET_KEY=$GS GARAGE_DEFAULT_BUCKET=$bucket \
        RUST_LOG=garage=warn garage -c "$dir/garage.toml" server --single-node --default-bucket \
        >"$dir/garage.log" 2>&1 &
    GARAGE_PID=$!
    garage_env() { env AWS_ACCESS_KEY_ID="$GK" AWS_SECRET_ACCESS_KEY="$GS" AWS_DEFAULT_REGION=garage "$@"; }
    for _ in $(seq 300); do
        garage_env aws --endpoint-url "http://127.0.0.1:$S3" s3 ls "s3://$bucket" >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "garage did not start; log in $dir/garage.log" >&2
    exit 1
}

# ganesha_config CONF EXPORT RECOVERY PROTOCOL CORE: writes to CONF an nfs-ganesha config that
# serves the directory EXPORT (FSAL VFS, no root squash, no grace period) as /share over NFS
# version PROTOCOL (3 or 4); CORE is extra NFS_CORE_PARAM lines (ports, bind address).
ganesha_config() {
    cat >"$1" <<EOF
NFS_CORE_PARAM {
$5
    Protocols = $4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}
NFSV4 { Graceless = true; RecoveryRoot = "$3"; }
EXPORT {
    Export_Id = 1;
    Path = "$2";
    Pseudo = /share;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = $4;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
EOF
}

# --- nfs-ganesha over NFSv3 (FSAL VFS), in a network namespace with its own rpcbind -----------
# ganesha's NFSv3 must register with rpcbind, so it runs with an rpcbind of its own in a network
# namespace (loopback only); clients reach it there with `nsenter -t "$GANESHA_PID" -n`, and the
# host's ports 111 and 2049 stay free. The caller sets GA_DIR (its files) and GA_EXPORT (the
# directory it exports); ganesha_start sets GANESHA_PID, GANESHA_NS and GA_URL (libnfs's URL).
ganesha_start() {
    mkdir -p "$GA_EXPORT" "$GA_DIR/recovery"
    ganesha_config "$GA_DIR/ganesha.conf" "$GA_EXPORT" "$GA_DIR/recovery" 3 \
        "    NFS_Port = 20490;
    MNT_Port = 20048;"
    # No Bind_addr: the namespace has loopback only, which getaddrinfo's AI_ADDRCONFIG would
    # not resolve, and nothing outside the namespace can reach it anyway. /run is private to
    # it, so its rpcbind's socket is not the host's.
    cat >"$GA_DIR/ns.sh" <<EOF
ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind
rpcbind -w -f & rpcb=\$!
trap 'kill \$rpcb \$ga 2>/dev/null; wait' EXIT TERM
for _ in \$(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done
ganesha.nfsd -F -f "$GA_DIR/ganesha.conf" -L "$GA_DIR/ganesha.log" -p "$GA_DIR/ganesha.pid" -N NIV_WARN & ga=\$!
wait \$ga
EOF
    rm -f "$GA_DIR/ganesha.pid"
    unshare --net --mount --fork --kill-child=TERM bash "$GA_DIR/ns.sh" >>"$GA_DIR/ns.log" 2>&1 &
    GANESHA_NS=$!
    GA_URL="nfs://127.0.0.1$GA_EXPORT?nfsport=20490&mountport=20048"
    for _ in $(seq 300); do
        [ -s "$GA_DIR/ganesha.pid" ] && GANESHA_PID=$(cat "$GA_DIR/ganesha.pid") &&
            nsenter -t "$GANESHA_PID" -n ss -Hltn "sport = :20048" | grep -q . && return 0
        sleep 0.1
    done
    cat "$GA_DIR/ns.log" "$GA_DIR/ganesha.log" >&2
    exit 1
}
# unshare ignores SIGTERM while its child runs: stopping ganesha ends the namespace's script,
# whose exit stops its rpcbind.
ganesha_stop() { kill "$GANESHA_PID"; wait "$GANESHA_NS" 2>/dev/null || true; GANESHA_PID=; }
