#!/bin/bash
# A real kube-apiserver for the test suite, built once per machine from Debian's own
# `kubernetes` source package (1.20.5+really1.20.2: the full upstream tree with vendor/;
# no Go module proxy needed).
#
#   scripts/kube-apiserver.sh build   build into the cache unless it is there; prints the path
#   scripts/kube-apiserver.sh path    print the cached binary's path (exit 1 when not built)
#
# The cache is /var/cache/sdn-netpol/kube-apiserver-v1.20.2/kube-apiserver (override the
# parent with SDN_NETPOL_CACHE). The build runs in a temporary directory beside the cache and
# the finished directory is renamed into place, so a reader sees a complete binary or none;
# a lock file makes a second concurrent run wait for the first and then find the cache.
# Run as root: it installs what it needs with apt-get (and the runtime packages the test tier
# uses: etcd-server, etcd-client, openssl), waiting for other apt users.
set -euo pipefail

VERSION=v1.20.2
DEB_SRC_PKG=kubernetes
ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
CACHE_ROOT=${SDN_NETPOL_CACHE:-/var/cache/sdn-netpol}
CACHE_DIR=$CACHE_ROOT/kube-apiserver-$VERSION
BINARY=$CACHE_DIR/kube-apiserver
LOCK=$CACHE_ROOT/kube-apiserver-$VERSION.lock

BUILD_PACKAGES=(golang-1.19-go golang-github-modern-go-reflect2-dev make rsync dpkg-dev)
RUNTIME_PACKAGES=(etcd-server etcd-client openssl)

WORK=  # the temporary build tree, removed at exit whatever happens

log() { echo "kube-apiserver.sh: $*" >&2; }

cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

apt_get() {
  # Other helpers install packages at the same time: wait for the dpkg lock, don't fail.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 "$@"
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt_get update -q >/dev/null
  apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_deb_src() {
  # `apt-get source` needs deb-src entries; Debian 12 images ship deb822 sources with only `deb`.
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -f "$f" ] && grep -q '^Types: deb$' "$f"; then
    log "adding deb-src to $f"
    sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"
    apt_get update -q >/dev/null
  fi
}

cached() { [ -x "$BINARY" ]; }

build() {
  local start work src
  start=$(date +%s)
  # Beside the cache, so that the final rename stays on one filesystem (atomic).
  work=$(mktemp -d "$CACHE_ROOT/.build-kube-apiserver-$VERSION.XXXXXX")
  WORK=$work
  chmod 0755 "$work"  # apt-get source downloads as the _apt user

  ensure_deb_src
  install_packages "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"

  log "fetching the $DEB_SRC_PKG source package into $work"
  mkdir -p "$work/src" "$work/home" "$work/out"
  (cd "$work/src" && apt_get -o APT::Sandbox::User=root source --download-only -q "$DEB_SRC_PKG" >/dev/null)
  tar -C "$work/src" -xzf "$work/src/$ORIG_TARBALL"
  src=$work/src/kubernetes-${VERSION#v}

  # The vendored github.com/modern-go/reflect2 v1.0.1 crashes with Go >= 1.18 (json-iterator
  # encoding maps: ?pretty=true, YAML output, CRD status). Debian's 1.0.2 has the same API.
  local reflect2=$src/vendor/github.com/modern-go/reflect2
  local debian_reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  cp "$reflect2/LICENSE" "$work/reflect2.LICENSE"
  rm -rf "$reflect2"
  mkdir "$reflect2"
  cp "$debian_reflect2"/*.go "$debian_reflect2"/*.s "$reflect2/"
  cp "$work/reflect2.LICENSE" "$reflect2/LICENSE"

  log "building cmd/kube-apiserver (niced; 4 to 15 min on 2 cores, depending on their load)"
  local make_start=$SECONDS
  (
    cd "$src"
    export PATH=/usr/lib/go-1.19/bin:$PATH HOME=$work/home CGO_ENABLED=0
    # No .git in the tarball: stamp the version ourselves.
    export KUBE_GIT_VERSION=$VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
    unset GOFLAGS GOPATH
    nice -n 19 make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1 || {
      tail -40 "$work/build.log" >&2
      exit 1
    }
    cp _output/bin/kube-apiserver "$work/out/kube-apiserver"
  )
  local make_seconds=$((SECONDS - make_start))
  "$work/out/kube-apiserver" --version >&2
  local seconds=$(($(date +%s) - start))
  printf 'built %s from Debian source package %s in %ss (make: %ss) on %s cores (%s)\n' \
    "$VERSION" "$DEB_SRC_PKG" "$seconds" "$make_seconds" "$(nproc)" "$(date -u +%FT%TZ)" >"$work/out/BUILD-INFO"
  chmod 0755 "$work/out/kube-apiserver"
  mv -T "$work/out" "$CACHE_DIR"
  log "built in ${seconds}s (make: ${make_seconds}s)"
}

cmd=${1:-build}
case $cmd in
  path)
    cached || { log "not built: run $0 build"; exit 1; }
    echo "$BINARY"
    ;;
  build)
    mkdir -p "$CACHE_ROOT"
    if ! cached; then
      exec 9>"$LOCK"
      flock -n 9 || { log "another build holds $LOCK: waiting for it"; flock 9; }
      # A concurrent run may have finished the build while we waited.
      cached || build
    fi
    install_packages "${RUNTIME_PACKAGES[@]}"
    echo "$BINARY"
    ;;
  *)
    echo "usage: $0 build|path" >&2
    exit 2
    ;;
esac
