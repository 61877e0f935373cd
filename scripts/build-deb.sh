#!/usr/bin/env bash
# Build the Debian package vpatch_<version>_<arch>.deb from this checkout with dpkg-deb:
#   scripts/build-deb.sh [--out DIR] [--no-deps]
# The tree is the system install's (scripts/system-install.sh --stage --layout package: units in
# /lib/systemd/system, sysusers and tmpfiles in /usr/lib), the venv made with /usr/bin/python3
# (so the package depends on that exact python3.X) and filled from PyPI, unless --no-deps (tests:
# a package whose venv lacks the dependencies). Maintainer scripts: debian/postinst (users,
# directories, units enabled), prerm (units stopped and disabled), postrm (purge removes the
# configuration, the data and the users). Install: apt install ./vpatch_*.deb; remove: apt
# purge vpatch. Needs no root (the venv is built as the caller; files are root:root in the .deb).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$SRC/dist"
STAGE_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --no-deps) STAGE_ARGS+=(--no-deps); shift ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PKG="$WORK/pkg"
mkdir -p "$PKG"

"$SRC/scripts/system-install.sh" --root "$PKG" --stage --layout package "${STAGE_ARGS[@]}"
# byte-compiled again naming /opt/vpatch, not the build directory (the units' ProtectSystem
# keeps the gateway from writing bytecode there itself)
find "$PKG/opt/vpatch" -name __pycache__ -prune -exec rm -rf {} +
/usr/bin/python3 -m compileall -q -s "$PKG" -p / "$PKG/opt/vpatch" >/dev/null

VERSION="$(/usr/bin/python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SRC/pyproject.toml")"
ARCH="$(dpkg --print-architecture)"
SIZE="$(du -sk "$PKG" | cut -f1)"
mkdir -p "$PKG/DEBIAN"
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$SRC/debian/control.in" > "$PKG/DEBIAN/control"
printf '/etc/vpatch/gateway.yaml\n/etc/logrotate.d/vpatch\n' > "$PKG/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "$SRC/debian/$s" "$PKG/DEBIAN/$s"
done
DEB="$OUT/vpatch_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
