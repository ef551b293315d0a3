#!/bin/bash
# Builds a client guest (tape or NFS) from Debian's packages: a debootstrap root (minbase plus the
# packages named in $PACKAGES) packed as an uncompressed initramfs, and the kernel of
# linux-image-amd64 unpacked with dpkg-deb. Usage: build.sh OUT_DIR (writes OUT_DIR/vmlinuz and
# OUT_DIR/root.cpio); $MODULES are the kernel modules to keep. Needs root (debootstrap chroots),
# debootstrap, dpkg-deb and cpio.
set -euo pipefail
out=$1
mirror=${MIRROR:-http://deb.debian.org/debian}
work=$out.work
rm -rf "$work"
mkdir -p "$work" "$out"
root=$work/root

debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -40 "$work/debootstrap.log"; exit 1; }

# The kernel: the image package linux-image-amd64 points at, unpacked, not installed (no
# initramfs-tools run; the root below is the initramfs).
(cd "$work" && apt-get download -q linux-image-amd64 >/dev/null)
meta=$(ls "$work"/linux-image-amd64_*.deb)
pkg=$(dpkg-deb -f "$meta" Depends | sed -E 's/^([^ ,]+).*/\1/')
(cd "$work" && apt-get download -q "$pkg" >/dev/null)
dpkg-deb -x "$(ls "$work/${pkg}"_*.deb)" "$work/kernel"
kver=${pkg#linux-image-}
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# Only the modules the guest loads and what they depend on: the full tree would triple the
# initramfs. Copy the candidate directories, resolve the dependencies there, drop the rest.
mods=$work/kernel/lib/modules/$kver
dest=$root/lib/modules/$kver
mkdir -p "$dest"
cp -a "$mods"/modules.order "$mods"/modules.builtin* "$dest/"
for d in drivers/scsi drivers/virtio drivers/net net/core lib crypto \
    fs/nfs fs/nfs_common fs/lockd fs/fscache fs/netfs net/sunrpc net/dns_resolver; do
    [ -e "$mods/kernel/$d" ] || continue
    mkdir -p "$(dirname "$dest/kernel/$d")"
    cp -a "$mods/kernel/$d" "$dest/kernel/$d"
done
chroot "$root" depmod "$kver"
keep=$(chroot "$root" modprobe -S "$kver" --show-depends -a $MODULES | awk '$1 == "insmod" {print $2}')
find "$dest/kernel" -name '*.ko*' | while read -r f; do
    case " $(echo $keep) " in *" ${f#"$root"} "*) ;; *) rm "$f" ;; esac
done
find "$dest/kernel" -depth -type d -empty -delete
chroot "$root" depmod "$kver"

# What a RAM root never needs.
rm -rf "$root"/usr/share/{doc,man,info,locale,i18n} "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/*
install -m 0755 "$INIT" "$root/init"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$out/root.cpio.tmp"
mv "$out/root.cpio.tmp" "$out/root.cpio"
echo "$kver" >"$out/kernel-version"
rm -rf "$work"
