#!/usr/bin/env bash
# Set up (once) an aarch64 Python with the aarch64 onnxruntime and numpy wheels, run under qemu user-mode emulation.
#
# Usage: scripts/arm64/setup.sh [HOST_PYTHON]
#   HOST_PYTHON  an x86 Python with pip, used only to fetch the aarch64 wheels (default: python3)
# Prints the path of the aarch64 python wrapper on its last line.
#
# Everything comes from Debian packages and the Python package index:
#   * qemu-user-static (Debian) runs aarch64 binaries; binfmt is not needed, the wrapper calls qemu directly.
#   * The aarch64 python3.11 and the shared libraries it and onnxruntime need are Debian bookworm arm64 packages,
#     resolved by apt with a private state directory (the host's dpkg database and architectures are untouched)
#     and unpacked with `dpkg -x` into a rootfs; no maintainer scripts run, so no chroot or debootstrap stage 2.
#   * onnxruntime and numpy are the manylinux aarch64 wheels, installed with `pip install --target`.
# The result is cached under $LRD_ARM64_CACHE (default ~/.cache/lowrank-deploy/arm64); each part has a stamp that
# records what it was built from, so a rerun with the same settings does nothing and a changed setting rebuilds
# only that part.
#
# Settings (environment):
#   ARM64_ORT_VERSION   onnxruntime version on the arm64 side (default 1.19.2; 1.32.0 segfaults at import under
#                       qemu 7.2, see docs/arm64-check.md)
#   ARM64_NUMPY         numpy requirement (default numpy==1.26.4)
#   LRD_ARM64_CACHE     cache folder
set -euo pipefail

HOST_PYTHON="${1:-python3}"
CACHE="${LRD_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowrank-deploy/arm64}"
ORT_VERSION="${ARM64_ORT_VERSION:-1.19.2}"
NUMPY_REQ="${ARM64_NUMPY:-numpy==1.26.4}"
SUITE=bookworm
PYVER=3.11
# python3.11-minimal + the stdlib bring libc6, zlib, libffi, libssl...; onnxruntime's .so also needs libstdc++/libgcc.
# libzstd-dev + zlib1g-dev (arm64, ~1 MB): headers and link libraries for cross-compiling the native decoder.
DEB_PACKAGES="python${PYVER}-minimal libpython${PYVER}-stdlib libstdc++6 libgcc-s1 libzstd-dev zlib1g-dev"
NATIVE_DIR="${ARM64_NATIVE_DIR:-native/lrdc}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "arm64-setup: $*" >&2; }
die() { echo "arm64-setup: error: $*" >&2; exit 1; }

mkdir -p "$CACHE"

# --- 1. qemu -------------------------------------------------------------------------------------------------
need_apt=()
command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
# The cross compiler is only needed for the native decoder hook; install it when that decoder exists.
if [ -d "$NATIVE_DIR" ] && ! command -v aarch64-linux-gnu-gcc >/dev/null; then need_apt+=(gcc-aarch64-linux-gnu); fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${need_apt[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >"$CACHE/apt-install.log" 2>&1 || {
            apt-get update -qq >>"$CACHE/apt-install.log" 2>&1
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >>"$CACHE/apt-install.log" 2>&1
        } || die "apt-get install ${need_apt[*]} failed; see $CACHE/apt-install.log"
    else
        die "missing ${need_apt[*]}: install them (Debian: sudo apt-get install ${need_apt[*]})"
    fi
fi
QEMU="$(command -v qemu-aarch64-static)"

# --- 2. aarch64 rootfs from Debian arm64 packages -------------------------------------------------------------
ROOTFS="$CACHE/rootfs"
ROOTFS_KEY="suite=$SUITE packages=$DEB_PACKAGES"
if [ ! -x "$ROOTFS/usr/bin/python$PYVER" ] || [ "$(cat "$ROOTFS.stamp" 2>/dev/null)" != "$ROOTFS_KEY" ]; then
    [ -r "$KEYRING" ] || die "$KEYRING missing (Debian package debian-archive-keyring)"
    log "building the aarch64 rootfs ($DEB_PACKAGES)"
    APT="$CACHE/apt"
    rm -rf "$APT" "$ROOTFS.tmp"
    mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/etc/parts" "$APT/etc/prefs"
    : >"$APT/state/status"   # empty dpkg status: apt resolves the full dependency closure for arm64
    cat >"$APT/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian $SUITE main
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian $SUITE-updates main
deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian-security $SUITE-security main
EOF
    APT_OPTS=(-o "Dir::State=$APT/state" -o "Dir::State::status=$APT/state/status" -o "Dir::Cache=$APT/cache"
              -o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/etc/parts"
              -o "Dir::Etc::Parts=$APT/etc/parts" -o "Dir::Etc::PreferencesParts=$APT/etc/prefs"
              -o "Dir::Etc::Preferences=$APT/etc/prefs/none" -o "APT::Architecture=arm64"
              -o "APT::Architectures::=arm64" -o "APT::Install-Recommends=0" -o "Debug::NoLocking=1")
    apt-get "${APT_OPTS[@]}" update -qq >"$CACHE/apt-arm64.log" 2>&1 \
        || die "apt-get update for arm64 failed; see $CACHE/apt-arm64.log"
    # shellcheck disable=SC2086
    apt-get "${APT_OPTS[@]}" install -y -qq --download-only $DEB_PACKAGES >>"$CACHE/apt-arm64.log" 2>&1 \
        || die "downloading arm64 packages failed; see $CACHE/apt-arm64.log"
    mkdir -p "$ROOTFS.tmp"
    for deb in "$APT"/cache/archives/*.deb; do dpkg -x "$deb" "$ROOTFS.tmp"; done
    rm -rf "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
    rm -rf "$APT"              # the .debs are no longer needed (about 15 MB)
    echo "$ROOTFS_KEY" >"$ROOTFS.stamp"
fi

# --- 3. aarch64 wheels ------------------------------------------------------------------------------------------
SITE="$CACHE/site"
SITE_KEY="onnxruntime==$ORT_VERSION $NUMPY_REQ cp${PYVER/./}"
if [ ! -d "$SITE/onnxruntime" ] || [ "$(cat "$SITE.stamp" 2>/dev/null)" != "$SITE_KEY" ]; then
    log "installing aarch64 wheels: onnxruntime==$ORT_VERSION $NUMPY_REQ"
    rm -rf "$SITE.tmp"
    # --no-deps: the check needs only onnxruntime's runtime and numpy (its other deps serve its tools and
    # would pull protobuf etc. for nothing).
    "$HOST_PYTHON" -m pip install -q --no-deps --no-compile --target "$SITE.tmp" \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
        --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --only-binary=:all: \
        "onnxruntime==$ORT_VERSION" "$NUMPY_REQ" >"$CACHE/pip-arm64.log" 2>&1 \
        || die "pip could not install the aarch64 wheels; see $CACHE/pip-arm64.log"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    echo "$SITE_KEY" >"$SITE.stamp"
fi

# --- 4. wrapper -------------------------------------------------------------------------------------------------
WRAPPER="$CACHE/bin/python3-aarch64"
mkdir -p "$CACHE/bin"
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# aarch64 python $PYVER under qemu user-mode emulation (written by scripts/arm64/setup.sh)
unset PYTHONHOME
export QEMU_LD_PREFIX="$ROOTFS" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
exec "$QEMU" "$ROOTFS/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"

# Smoke test once per set-up (cheap enough to keep: the import is what crashes on unsupported versions).
if [ "$(cat "$CACHE/smoke.stamp" 2>/dev/null)" != "$ROOTFS_KEY $SITE_KEY" ]; then
    "$WRAPPER" -c "import platform, numpy, onnxruntime; assert platform.machine() == 'aarch64'" \
        || die "the aarch64 python cannot import onnxruntime $ORT_VERSION under $QEMU (try ARM64_ORT_VERSION=1.19.2)"
    echo "$ROOTFS_KEY $SITE_KEY" >"$CACHE/smoke.stamp"
fi
echo "$WRAPPER"
