# Sourced by the guests' test scripts (appended beside /test.sh as /steps.sh): `step NAME
# COMMAND...` runs a command with its output between `== BEGIN NAME` / `== END NAME` markers,
# then `== TIME NAME SECONDS` and `== RC NAME STATUS`, which the host's tests read.
step() { # step NAME COMMAND...: runs it with its output between markers
    name=$1; shift
    echo "== BEGIN $name"
    t0=$(date +%s)
    "$@" 2>&1
    rc=$?
    echo "== END $name"
    echo "== TIME $name $(($(date +%s) - t0))"
    echo "== RC $name $rc"
    return $rc
}
