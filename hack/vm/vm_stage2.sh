# Stage 2 of the kdive test VM: PID 1 in the host's root (see main.go), run
# by /run/kdive/busybox so it needs nothing from the host. Sets up the
# machine, runs the command with its output on the virtio-serial ports, and
# reports the exit status on kdive.status before powering off.

bb=/run/kdive/busybox

die() {
	echo "kdive-vm stage 2: $*" >/dev/console
	$bb poweroff -f
	$bb sleep 5
	exit 1
}

# port NAME prints the device of the virtio-serial port qemu named NAME.
port() {
	for p in /sys/class/virtio-ports/*; do
		if [ "$($bb cat "$p/name" 2>/dev/null)" = "$1" ]; then
			echo "/dev/${p##*/}"
			return 0
		fi
	done
	return 1
}

out=$(port kdive.stdout) || die "no kdive.stdout port"
err=$(port kdive.stderr) || die "no kdive.stderr port"
status=$(port kdive.status) || die "no kdive.status port"

$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
$bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# cgroup2 alone at /sys/fs/cgroup, as systemd mounts it on Debian's kernel
# (the host has the v1 hierarchies: a Kubernetes lab runs on both).
$bb mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || die "mount cgroup2"
$bb ip link set lo up || die "set lo up"
$bb hostname kdive-vm

. /run/kdive/spec.sh || die "read /run/kdive/spec.sh"
(kdive_run) >"$out" 2>"$err" </dev/null
echo "$?" >"$status"
$bb sync
$bb poweroff -f
$bb sleep 5
