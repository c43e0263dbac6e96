#!/usr/bin/env bash
# The VM image of the kernel-datapath tier (issue 16): a Debian 12 root with Open vSwitch,
# the guest kernel (its openvswitch module), python3 and a venv holding the project's runtime
# dependencies, built offline from the apt mirror and PyPI, once per machine. See docs/lab.md,
# "Kernel datapath".
#
#   scripts/vm-image.sh [build]   build unless cached; prints the image directory on stdout
#   scripts/vm-image.sh path      print the image directory (exit 1 when not built)
#
# Cached under $SDN_NETPOL_CACHE/vm-image (default /var/cache/sdn-netpol/vm-image):
#   <key>/vmlinux      the guest kernel, uncompressed ELF: qemu boots it directly (PVH entry)
#   <key>/initrd.img   a small initramfs (MODULES=list: virtio_pci, virtio_blk, ext4)
#   <key>/base.img     raw ext4 root (2 GiB sparse), no bootloader; VMs boot it with
#                      snapshot=on and never write it
# key = every input: mmdebstrap arguments, mirrors, requirements.txt, the stub init below.
# The project itself is NOT in the image: each VM mounts the checkout read-only over 9p
# (-virtfs, mount tag "project") at /opt/sdn-netpol/src, so a code change needs no rebuild;
# the stub init mounts it and hands over to scripts/vm-guest-init.sh from there.
# A lock makes a second concurrent run wait for the first and then find the cache. The build
# is done in <key>.part and renamed into place: a reader sees a complete image or none.
# Run as root (mmdebstrap --mode=root, chroot, mkfs).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT=${SDN_NETPOL_CACHE:-/var/cache/sdn-netpol}
CACHE=$CACHE_ROOT/vm-image
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# systemd-sysv and udev: initramfs-tools' hooks want them; nothing runs systemd (our init is PID 1).
PACKAGES=systemd-sysv,udev,kmod,iproute2,iputils-ping,procps,ethtool,iperf3,openvswitch-switch,python3,python3-venv,containernetworking-plugins,linux-image-amd64,initramfs-tools
MODE=${1:-build}

log() { echo "vm-image: $*" >&2; }
now() { echo "${EPOCHREALTIME/./}"; }
elapsed() { local us=$(($(now) - $1)); printf '%d.%d s' $((us / 1000000)) $((us / 100000 % 10)); }
sha() { sha256sum | cut -c1-16; }

# The guest's PID 1 as baked into the image: mount what the kernel needs and the project
# (9p), then run the checkout's scripts/vm-guest-init.sh. Anything that may change lives there.
STUB=$(cat <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /opt/sdn-netpol/src
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
modprobe 9pnet_virtio; modprobe 9p
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 project /opt/sdn-netpol/src; then
  exec /bin/sh /opt/sdn-netpol/src/scripts/vm-guest-init.sh
fi
echo "SDN-NETPOL-VM: FAILED cannot mount the project share (9p tag 'project')"
echo o > /proc/sysrq-trigger
EOF
)
MMDEBSTRAP_OPTS=(
  --mode=root --variant=minbase --include="$PACKAGES"
  --aptopt='Acquire::Retries "3"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
)
MIRRORS=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main"
         "deb $SECURITY_MIRROR $SUITE-security main")
KEY=$({ printf '%s\n' "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "${MIRRORS[@]}" "$STUB"; cat requirements.txt; } | sha)
DIR=$CACHE/$KEY

complete() { [ -f "$DIR/.complete" ]; }
case "$MODE" in
  path) complete && { echo "$DIR"; exit 0; }; log "not built: $DIR (run scripts/vm-image.sh)"; exit 1 ;;
  build) ;;
  *) echo "usage: $0 [build|path]" >&2; exit 2 ;;
esac
if complete; then echo "$DIR"; exit 0; fi

for tool in qemu-system-x86_64 mmdebstrap; do
  command -v "$tool" >/dev/null || {
    log "$tool is missing: scripts/bootstrap.sh installs it (Debian qemu-system-x86, mmdebstrap)"
    exit 1
  }
done
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -n 9 || { log "another build holds $CACHE/.lock: waiting for it"; flock 9; }
if complete; then echo "$DIR"; exit 0; fi
START=$(now)
WORK=$DIR.part
cleanup() { mountpoint -q "$WORK/rootfs/proc" && umount "$WORK/rootfs/proc"; rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
BUILD_LOG=$WORK/build.log
fail() {
  log "$1; the last lines of its log ($CACHE/failed-build.log):"
  cp "$BUILD_LOG" "$CACHE/failed-build.log"
  tail -n 30 "$BUILD_LOG" >&2
  exit 1
}

# --- 1. root filesystem ---------------------------------------------------------------
log "mmdebstrap $SUITE -> $WORK/rootfs"
t=$(now)
nice -n 10 mmdebstrap "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "$WORK/rootfs" "${MIRRORS[@]}" \
  >>"$BUILD_LOG" 2>&1 || fail "mmdebstrap failed"
log "root filesystem in $(elapsed "$t")"

# --- 2. the project's runtime dependencies, in a venv of the guest's python3 -------------
t=$(now)
mkdir -p "$WORK/rootfs/tmp/wheels"
# Wheels are built by the host's Python; they must fit the guest's (bookworm: 3.11).
guest_py=$(chroot "$WORK/rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$guest_py" = "$host_py" ] || fail "the host's python3 is $host_py, the guest's $guest_py"
nice -n 10 python3 -m pip wheel -q --disable-pip-version-check -w "$WORK/rootfs/tmp/wheels" \
  -r requirements.txt >>"$BUILD_LOG" 2>&1 || fail "pip wheel failed"
cp requirements.txt "$WORK/rootfs/tmp/wheels/"
chroot "$WORK/rootfs" python3 -m venv /opt/sdn-netpol/venv >>"$BUILD_LOG" 2>&1 || fail "venv failed"
chroot "$WORK/rootfs" /opt/sdn-netpol/venv/bin/pip install -q --no-index --find-links /tmp/wheels \
  -r /tmp/wheels/requirements.txt >>"$BUILD_LOG" 2>&1 || fail "pip install in the guest venv failed"
rm -rf "$WORK/rootfs/tmp/wheels"
log "guest venv in $(elapsed "$t")"

# --- 3. the guest's boot: small initramfs, stub init, console scripts ----------------------
t=$(now)
R=$WORK/rootfs
printf 'virtio_pci\nvirtio_blk\next4\n' >"$R/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
mount --bind /proc "$R/proc"
nice -n 10 chroot "$R" update-initramfs -u -k all >>"$BUILD_LOG" 2>&1 || fail "update-initramfs failed"
umount "$R/proc"
printf '%s\n' "$STUB" >"$R/sbin/sdn-netpol-init"
chmod 755 "$R/sbin/sdn-netpol-init"
for cmd in sdn-netpol:sdn_netpol.cli sdn-netpol-cni:sdn_netpol.cni.plugin; do
  printf '#!/bin/sh\nPYTHONPATH=/opt/sdn-netpol/src exec /opt/sdn-netpol/venv/bin/python -c "import sys; from %s import main; sys.exit(main())" "$@"\n' \
    "${cmd#*:}" >"$R/usr/local/bin/${cmd%%:*}"
  chmod 755 "$R/usr/local/bin/${cmd%%:*}"
done
echo sdn-netpol-vm >"$R/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' >"$R/etc/fstab"
cp "$R"/boot/initrd.img-* "$WORK/initrd.img"
# The uncompressed ELF inside vmlinuz: qemu boots it through its PVH note, no bootloader.
python3 - "$R"/boot/vmlinuz-* "$WORK/vmlinux" <<'PY' >>"$BUILD_LOG" 2>&1 || fail "no vmlinux in vmlinuz"
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
open(sys.argv[2], "wb").write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:]))
PY
truncate -s 2G "$WORK/base.img"
nice -n 10 mkfs.ext4 -q -F -L sdnvmroot -d "$R" "$WORK/base.img" >>"$BUILD_LOG" 2>&1 || fail "mkfs.ext4 failed"
rm -rf "$R"  # base.img holds it now
log "kernel, initrd, disk in $(elapsed "$t")"

touch "$WORK/.complete"
mv "$WORK" "$DIR"
WORK=
# keep only the current key's image
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" -exec rm -rf {} +
log "$DIR: $(du -sm --apparent-size "$DIR/base.img" | cut -f1) MB disk ($(du -sm "$DIR/base.img" | cut -f1) MB used), $(elapsed "$START")"
echo "$DIR"
