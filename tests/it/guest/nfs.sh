#!/bin/sh
# Runs in the NFS-client guest (see guest/init.sh) as /test.sh: mounts tidegate's share with
# the kernel's NFS client as `mount -t nfs @OPTIONS@ 10.0.2.2:/share /mnt` (the host fills in
# @OPTIONS@; no port options: mount.nfs finds MOUNT and NFS through rpcbind on port 111),
# writes a file tree with `cp -a` and with `tar`, remounts, and prints checksums and attributes
# of the source and of both copies for the host to compare. Markers from guest/steps.sh:
# `== BEGIN x` / `== END x` around output, `== RC x N` for each step's exit status.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

. /steps.sh

# A tree with what trips file gateways: nested and empty directories, empty, small and
# multi-MiB files, odd modes, a symlink, a name with spaces.
src=/src/tree
mkdir -p $src/a/b/c $src/empty-dir "$src/with space"
head -c 1048576 /dev/urandom >$src/a/one-mib.bin
head -c 3000001 /dev/urandom >$src/a/b/odd-size.bin
echo hello >$src/a/b/c/hello.txt
: >$src/empty.txt
echo spaced >"$src/with space/file name.txt"
i=0
while [ $i -lt 40 ]; do echo "small file $i" >$src/a/small-$i.txt; i=$((i + 1)); done
ln -s a/b/c/hello.txt $src/link
chmod 0640 $src/a/b/c/hello.txt
chmod 0755 $src/a/one-mib.bin
chmod 0700 $src/a/b
touch -d '2021-03-04 05:06:07' $src/a/small-7.txt

# Checksums of regular files and attributes of everything, relative to a tree's root.
sums() { (cd "$1" && find . -type f | LC_ALL=C sort | while read -r f; do sha256sum "$f"; done); }
attrs() { (cd "$1" && find . -mindepth 1 -printf '%y %m %s %U %G %T@ %P -> %l\n' | LC_ALL=C sort); }

for m in sunrpc lockd nfs nfsv3 nfsv4; do modprobe "$m" || echo "modprobe $m failed"; done
# A v3 mount with the default `lock` option wants the client's own rpcbind and rpc.statd
# running (as on any Linux client); NFSv4 needs neither.
rpcbind -w 2>/dev/null || rpcbind
rpc.statd --no-notify
mkdir -p /mnt
step mount mount -t nfs @OPTIONS@ 10.0.2.2:/share /mnt || exit 1
step proc-mounts grep ' /mnt ' /proc/mounts
step cp cp -a $src /mnt/copied
# POSIX (pax) format: the default GNU format keeps mtimes to the second only.
step tar sh -c "mkdir /mnt/untarred && tar --format=posix -C /src -cf - tree | tar -C /mnt/untarred -xpf -"
step sync sync
step umount umount /mnt
echo 3 >/proc/sys/vm/drop_caches
# Read back through a new mount: nothing comes from this client's page cache.
step remount mount -t nfs @OPTIONS@ 10.0.2.2:/share /mnt || exit 1
step src-sums sums $src
step copied-sums sums /mnt/copied
step untarred-sums sums /mnt/untarred/tree
step src-attrs attrs $src
step copied-attrs attrs /mnt/copied
step untarred-attrs attrs /mnt/untarred/tree
# POSIX times through the kernel client: each change of a directory's entries moves its mtime
# and ctime; a read of a file whose atime is older than its mtime moves its atime (relatime).
mkdir /mnt/tdir
dirtimes() { stat -c '%y|%z' /mnt/tdir; }
times_of() {
    for op in create mkdir rename unlink rmdir; do
        before=$(dirtimes)
        sleep 0.2
        case $op in
        create) : >/mnt/tdir/f ;;
        mkdir) mkdir /mnt/tdir/d ;;
        rename) mv /mnt/tdir/f /mnt/tdir/g ;;
        unlink) rm /mnt/tdir/g ;;
        rmdir) rmdir /mnt/tdir/d ;;
        esac
        echo "$op|$before|$(dirtimes)"
    done
    echo data >/mnt/tdir/a
    touch -a -d '2020-01-02 03:04:05' /mnt/tdir/a
    sync
    echo 3 >/proc/sys/vm/drop_caches
    before=$(stat -c '%x' /mnt/tdir/a)
    cat /mnt/tdir/a >/dev/null
    echo 3 >/proc/sys/vm/drop_caches
    echo "atime|$before|$(stat -c '%x' /mnt/tdir/a)"
}
step dir-times times_of
# Hard links: two names, one inode with 2 links; a write through one name reads through the
# other (after the page cache is dropped); removing the first name leaves the other.
hard_links() {
    echo linked >/mnt/hl-a
    ln /mnt/hl-a /mnt/tdir/hl-b
    stat -c '%h %i' /mnt/hl-a /mnt/tdir/hl-b
    echo changed >/mnt/tdir/hl-b
    sync
    echo 3 >/proc/sys/vm/drop_caches
    cat /mnt/hl-a
    rm /mnt/hl-a
    stat -c '%h %i' /mnt/tdir/hl-b
    cat /mnt/tdir/hl-b
}
step hard-links hard_links
step final-umount umount /mnt
