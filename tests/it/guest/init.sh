#!/bin/sh
# The guest's /init (PID 1 from the initramfs): mounts the kernel file systems, brings up
# QEMU's user-mode network (the host's loopback is 10.0.2.2), runs the test's /test.sh (a
# second cpio appended to the initramfs) and powers off. Markers on the serial console
# (ttyS0) tell the host where it is.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
exec >/dev/ttyS0 2>&1 </dev/null
echo "GUEST: init"
for m in virtio_pci virtio_net; do modprobe "$m" || echo "GUEST: modprobe $m failed"; done
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
ip route add default via 10.0.2.2
echo "GUEST: network $dev up"
if [ -x /test.sh ]; then
    /test.sh
    echo "GUEST: test.sh exit $?"
else
    echo "GUEST: no /test.sh"
fi
sync
echo "GUEST: power off"
echo o >/proc/sysrq-trigger
sleep 30
