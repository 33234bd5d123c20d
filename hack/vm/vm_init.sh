#!/bin/busybox sh
# Stage 1 of the kdive test VM: /init of the initramfs (see main.go).
# Loads the virtio, 9p and overlay modules, mounts the host's root (read-only,
# under a tmpfs overlay) with tmpfs on /tmp and /run and the read-write shares on top, and switch_roots
# into it to run stage 2. Messages go to the serial console, which the
# runner shows when the VM stops without reporting an exit status.

/bin/busybox --install -s /bin
export PATH=/bin

die() {
	echo "kdive-vm init: $*" >/dev/console
	poweroff -f
	sleep 5
	exit 1
}

mount -t devtmpfs devtmpfs /dev || die "mount /dev"
mount -t proc proc /proc || die "mount /proc"
mount -t sysfs sysfs /sys || die "mount /sys"

while read -r m; do
	insmod "/lib/modules/$m.ko" || die "insmod $m"
done </kdive/modules

# kdive/spec.sh comes from the runner's per-run archive: it defines
# kdive_mount_shares, which calls kdive_share TAG DIR for each share, and
# kdive_run, which stage 2 calls.
. /kdive/spec.sh || die "read /kdive/spec.sh"

opts=trans=virtio,version=9p2000.L,msize=512000
# The host's root, read-only, is the lower layer of an overlay whose upper
# layer is a tmpfs: the VM's root is writable like a machine's, and what the
# command writes there is gone with the VM (a lab's mount points under /etc
# and /var, say).
mkdir -p /host /rw || die "mkdir /host /rw"
mount -t 9p -o "$opts,ro,cache=loose" host /host || die "mount the host's root over 9p"
mount -t tmpfs -o mode=755 tmpfs /rw && mkdir /rw/upper /rw/work || die "mount the overlay's tmpfs"
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	die "mount the overlay root"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || die "mount /tmp"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run || die "mount /run"

# Read-write shares need mmap to work; the guest writes through to the host.
kdive_share() {
	mkdir -p "/newroot$2" && mount -t 9p -o "$opts,cache=mmap" "$1" "/newroot$2"
}
kdive_mount_shares || die "mount the shared directories"

mkdir -p /newroot/run/kdive || die "mkdir /run/kdive"
cp /bin/busybox /kdive/stage2.sh /kdive/spec.sh /newroot/run/kdive/ || die "copy stage 2"
for d in dev proc sys; do
	mount --move "/$d" "/newroot/$d" || die "move /$d"
done
exec switch_root /newroot /run/kdive/busybox sh /run/kdive/stage2.sh
die "switch_root failed"
