#!/usr/bin/env bash
# ONNX Runtime's C/C++ headers for the C++ host (engines/cpp), from Debian trixie's libonnxruntime-dev.
#
# The library comes from the onnxruntime wheel (onnxruntime/capi/libonnxruntime.so.<version>); no registry here
# ships its headers, Debian does. apt-get runs with its own source list, state and cache under a temporary
# directory, so the machine's apt sources and lists are never touched (no root needed). Only the headers are
# used: trixie's runtime package needs a newer glibc than this image has.
#
# Usage: scripts/fetch_ort_headers.sh [cache dir]   (default .cache/ort-headers; prints the include dir)
# Idempotent: a cache dir holding the headers is reused. Fails loudly when trixie cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.cache/ort-headers}"
case "$dest" in /*) ;; *) dest="$PWD/$dest" ;; esac
include="$dest/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then
    echo "$include"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
# Checked against Debian's archive keyring (Debian: installed; Ubuntu: apt-get install debian-archive-keyring).
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
[ -f "$keyring" ] && signed="[signed-by=$keyring] "
echo "deb ${signed}http://deb.debian.org/debian trixie main" > "$tmp/sources.list"
opts=(
    -o "Dir::Etc::sourcelist=$tmp/sources.list"
    -o "Dir::Etc::sourceparts=/nonexistent"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)"
)
if ! apt-get "${opts[@]}" -qq update >"$tmp/update.log" 2>&1; then
    cat "$tmp/update.log" >&2
    echo "fetch_ort_headers.sh: apt-get update against Debian trixie failed (network or archive keys)" >&2
    exit 1
fi
(cd "$tmp/debs" && apt-get "${opts[@]}" -qq download libonnxruntime-dev) >&2
deb="$(ls "$tmp"/debs/libonnxruntime-dev_*.deb)"
mkdir -p "$dest.partial"
dpkg-deb -x "$deb" "$dest.partial"
basename "$deb" > "$dest.partial/DEB"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "$include"
