#!/usr/bin/env bash
# Build the sdn-netpol image, localhost/sdn-netpol:<version> and :latest, here and
# offline: only Debian's packages (mmdebstrap) and wheels (the project's, built from this
# checkout, and its dependencies' from PyPI). Run as root. See docs/image.md.
#
#   scripts/build-image.sh               build what is missing or stale, print the size
#   scripts/build-image.sh --refresh     also remake the cached root filesystem and wheels
#                                        (new Debian updates, new dependency releases)
#   scripts/build-image.sh --podman-env  print the exports that point podman at the
#                                        private store the image lives in; nothing else
#
# Cached under $CACHE (default /var/cache/sdn-netpol/image), each keyed by its inputs:
#   rootfs-<key>.tar   mmdebstrap's output; key = every mmdebstrap argument
#   wheels-<key>/      dependency wheels; key = requirements.txt and the Python version
#   tools-<python>/    a venv with pip, setuptools and wheel to build the project's wheel
#   podman/            podman's private config and image store (nothing global changes)
# The image carries a label with the hash of all inputs (base, wheels, sources,
# Containerfile): when it matches, nothing is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SDN_NETPOL_IMAGE_CACHE:-/var/cache/sdn-netpol/image}
PODMAN_DIR=$CACHE/podman
# Run-time state (locks, container state) is meant for a tmpfs; /run need not be one,
# so the boot id below tells a fresh boot and the stale state is dropped. One per store;
# short, as conmon's socket paths must be.
RUN_DIR=/run/sdn-netpol/image-podman-$(printf %s "$CACHE" | sha256sum | cut -c1-8)
IMAGE=localhost/sdn-netpol
BASE_IMAGE=localhost/sdn-netpol-base
SUITE=bookworm
PY_IMAGE=3.11  # bookworm's python3: the wheels are built by the host's, which must match
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=openvswitch-switch,python3,python3-venv,iproute2,containernetworking-plugins,ca-certificates
LABEL_KEY=io.sdn-netpol.inputs

export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
export CONTAINERS_REGISTRIES_CONF=$PODMAN_DIR/registries.conf

if [ "${1:-}" = "--podman-env" ]; then
  printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF"
  printf 'export CONTAINERS_STORAGE_CONF=%q\n' "$CONTAINERS_STORAGE_CONF"
  printf 'export CONTAINERS_REGISTRIES_CONF=%q\n' "$CONTAINERS_REGISTRIES_CONF"
  exit 0
fi
REFRESH=0
case "${1:-}" in
  "") ;;
  --refresh) REFRESH=1 ;;
  *) echo "usage: $0 [--refresh | --podman-env]" >&2; exit 2 ;;
esac

log() { echo "build-image: $*" >&2; }
now() { echo "${EPOCHREALTIME/./}"; }  # microseconds
elapsed() { local us=$(($(now) - $1)); printf '%d.%d s' $((us / 1000000)) $((us / 100000 % 10)); }
sha() { sha256sum | cut -c1-16; }
START=$(now)

# --- tools -------------------------------------------------------------------------
# runc before podman: podman depends on "crun | runc", and crun fails on this host.
need=""
for p in mmdebstrap runc podman python3-venv; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
  log "installing Debian packages:$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  # shellcheck disable=SC2086  # a list of package names
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $need >/dev/null
fi
py_host=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$py_host" != "$PY_IMAGE" ]; then
  echo "build-image: the host's python3 is $py_host, the image's is $PY_IMAGE: wheels built here may not fit" >&2
  exit 1
fi

mkdir -p "$CACHE" "$PODMAN_DIR"
exec 9>"$CACHE/.lock"
flock 9  # one build at a time (a test and a person may both ask)

# --- podman's private configuration --------------------------------------------------
# runc: crun fails on this hybrid-cgroup host; cgroupfs: no systemd to ask; the ulimits:
# podman 4.3's defaults exceed what runc may set here.
cat >"$CONTAINERS_CONF.new" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_config_dir = "$PODMAN_DIR/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "$RUN_DIR/libpod"
EOF
cat >"$CONTAINERS_STORAGE_CONF.new" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$RUN_DIR/storage"
EOF
# No registry is reachable or wanted: every image here is localhost/.
printf 'unqualified-search-registries = []\n' >"$CONTAINERS_REGISTRIES_CONF.new"
for f in "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" "$CONTAINERS_REGISTRIES_CONF"; do
  if cmp -s "$f.new" "$f"; then rm "$f.new"; else mv "$f.new" "$f"; fi
done
mkdir -p "$PODMAN_DIR/networks" "$RUN_DIR"
boot_id=$(cat /proc/sys/kernel/random/boot_id)
if [ "$(cat "$RUN_DIR/boot_id" 2>/dev/null)" != "$boot_id" ]; then
  rm -rf "${RUN_DIR:?}/libpod" "${RUN_DIR:?}/storage"
  echo "$boot_id" >"$RUN_DIR/boot_id"
fi

# --- inputs and their keys -------------------------------------------------------------
VERSION=$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' setup.py)
[ -n "$VERSION" ] || { echo "build-image: no version= in setup.py" >&2; exit 1; }

# Variant "essential" (no apt, no Priority:required extras) plus our packages; usr-is-merged
# from the merged-usr hooks, or init-system-helpers pulls usrmerge and with it ~45 MB of perl.
# Only host-local and loopback of the CNI plugins (the others are 40 MB); no docs but the
# copyright files, no man pages, no translations.
# shellcheck disable=SC2016  # the hook's "$1" (the chroot) is mmdebstrap's to expand
MMDEBSTRAP_OPTS=(
  --format=tar
  --variant=essential
  --include="$PACKAGES"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='Acquire::Retries "3"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/lib/cni/*'
  --dpkgopt='path-include=/usr/lib/cni/host-local'
  --dpkgopt='path-include=/usr/lib/cni/loopback'
  # The host's resolver and name must not ship; the runtime supplies both.
  --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"'
)
MIRRORS=(
  "deb $MIRROR $SUITE main"
  "deb $MIRROR $SUITE-updates main"
  "deb $SECURITY_MIRROR $SUITE-security main"
)
ROOTFS_KEY=$(printf '%s\n' "$(mmdebstrap --version)" "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "${MIRRORS[@]}" | sha)
WHEELS_KEY=$({ cat requirements.txt; echo "python $py_host"; } | sha)
SRC_FILES=(setup.py requirements.txt pyproject.toml sdn_netpol)
SRC_KEY=$(find "${SRC_FILES[@]}" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha)
IMAGE_KEY=$(printf '%s\n' "$ROOTFS_KEY" "$WHEELS_KEY" "$SRC_KEY" "$VERSION" "$(sha256sum image/Containerfile)" | sha)

print_size() {
  local bytes
  bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE:$VERSION")
  log "$IMAGE:$VERSION (and :latest): $((bytes / 1000000)) MB ($bytes bytes), inputs $IMAGE_KEY, $(elapsed "$START")"
}

current=$(podman image inspect --format "{{index .Labels \"$LABEL_KEY\"}}" "$IMAGE:$VERSION" 2>/dev/null || true)
if [ "$REFRESH" = 0 ] && [ "$current" = "$IMAGE_KEY" ]; then
  podman tag "$IMAGE:$VERSION" "$IMAGE:latest"
  log "up to date"
  print_size
  exit 0
fi

# --- 1. the root filesystem ----------------------------------------------------------
ROOTFS=$CACHE/rootfs-$ROOTFS_KEY.tar
if [ "$REFRESH" = 1 ] || [ ! -s "$ROOTFS" ]; then
  log "mmdebstrap $SUITE ($PACKAGES) -> $ROOTFS"
  t=$(now)
  rm -f "$ROOTFS.part"
  # Its hooks print apt's and dpkg's chatter even with --quiet: to a log, shown on failure.
  if ! nice -n 10 mmdebstrap --quiet "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "$ROOTFS.part" "${MIRRORS[@]}" \
      >"$CACHE/mmdebstrap.log" 2>&1; then
    tail -n 40 "$CACHE/mmdebstrap.log" >&2
    log "mmdebstrap failed; its log: $CACHE/mmdebstrap.log"
    exit 1
  fi
  mv "$ROOTFS.part" "$ROOTFS"
  log "root filesystem: $(du -m "$ROOTFS" | cut -f1) MB tarball in $(elapsed "$t")"
  podman rmi --force "$BASE_IMAGE:$ROOTFS_KEY" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE_IMAGE:$ROOTFS_KEY"; then
  log "podman import -> $BASE_IMAGE:$ROOTFS_KEY"
  t=$(now)
  nice -n 10 podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$ROOTFS" "$BASE_IMAGE:$ROOTFS_KEY" >/dev/null
  log "imported in $(elapsed "$t")"
fi

# --- 2. wheels -----------------------------------------------------------------------
TOOLS=$CACHE/tools-py$py_host
quiet_pip() {
  # pip's failure still fails the build (pipefail); only its noise about this machine's
  # optional local indexes is dropped.
  "$TOOLS/bin/pip" "$@" 2>&1 | { grep -vE "^WARNING: Location|^ *$" || true; }
}
if [ ! -x "$TOOLS/bin/wheel" ]; then
  log "tools venv -> $TOOLS"
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  quiet_pip install -q --disable-pip-version-check setuptools wheel
fi
WHEELS=$CACHE/wheels-$WHEELS_KEY
if [ "$REFRESH" = 1 ] || [ ! -f "$WHEELS/.complete" ]; then
  log "dependency wheels (PyPI) -> $WHEELS"
  t=$(now)
  rm -rf "$WHEELS"
  nice -n 10 "$TOOLS/bin/pip" --disable-pip-version-check wheel -q -w "$WHEELS" -r requirements.txt 2>&1 |
    { grep -vE "^WARNING: Location|^ *$" || true; }
  touch "$WHEELS/.complete"
  log "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sm "$WHEELS" | cut -f1) MB in $(elapsed "$t")"
fi

# The build context: the dependency wheels (hard links) and the project's wheel, built
# from a copy of the sources so the checkout gets no build/ or egg-info.
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src" "$WORK/context/wheels"
tar -c --exclude=__pycache__ --exclude='*.pyc' "${SRC_FILES[@]}" | tar -x -C "$WORK/src"
cp -l "$WHEELS"/*.whl "$WORK/context/wheels/"
quiet_pip --disable-pip-version-check wheel -q --no-deps --no-build-isolation \
  -w "$WORK/context/wheels" "$WORK/src"

# --- 3. the image --------------------------------------------------------------------
log "podman build -> $IMAGE:$VERSION"
t=$(now)
nice -n 10 podman build --quiet --network=none --pull=never \
  --file image/Containerfile \
  --build-arg "BASE=$BASE_IMAGE:$ROOTFS_KEY" \
  --build-arg "VERSION=$VERSION" \
  --build-arg "WHEELS_FROM=$WHEELS_KEY-$SRC_KEY" \
  --label "$LABEL_KEY=$IMAGE_KEY" \
  --tag "$IMAGE:$VERSION" --tag "$IMAGE:latest" \
  "$WORK/context" >/dev/null
log "built in $(elapsed "$t")"

# --- tidy: keep only what the current inputs use --------------------------------------
podman image prune --force >/dev/null
podman images --format '{{.Repository}}:{{.Tag}}' "$BASE_IMAGE" | while read -r ref; do
  [ "$ref" = "$BASE_IMAGE:$ROOTFS_KEY" ] || podman rmi "$ref" >/dev/null 2>&1 || true
done
find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$ROOTFS_KEY.tar" -delete
find "$CACHE" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$WHEELS_KEY" -exec rm -rf {} +

print_size
