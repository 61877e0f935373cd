#!/usr/bin/env bash
# Install vpatch as a system service, or remove it (also run as `scripts/install.sh --system`).
#
#   scripts/system-install.sh [--root DIR] [--no-deps] [--python PY]          install
#   scripts/system-install.sh [--root DIR] --uninstall [--purge]              remove
#   scripts/system-install.sh --root DIR --stage --layout package             files only (build-deb.sh)
#
# What goes where (docs/install.md):
#   /opt/vpatch                 the source (gateway/, webui/, rules/, docs/) and .venv (its
#                               dependencies; /opt/vpatch is on the venv's path, so the bundled
#                               rules are /opt/vpatch/rules), .venv/bin/vpatch
#   /etc/vpatch/gateway.yaml    the configuration (written only when absent; kept on uninstall)
#   /var/lib/vpatch             policy and event databases, UI secret and TLS certificate
#   /var/log/vpatch             eve.json (rotated daily by /etc/logrotate.d/vpatch, copytruncate)
#   units, sysusers, tmpfiles   /etc/systemd/system, /etc/sysusers.d, /etc/tmpfiles.d (layout
#                               `local`, this script) or /lib/systemd/system, /usr/lib/... (layout
#                               `package`, the Debian package)
# Then (not with --stage): the users and directories (systemd-sysusers, systemd-tmpfiles, both
# with --root), and vpatch.service and vpatch-ui.service enabled (`systemctl --root`, so it
# works with or without a running systemd; nothing is started: configure the network first).
#
# --uninstall stops (when systemd runs) and disables the units, removes every file above and the
# network files `vpatch install-network` wrote; --purge also removes /etc/vpatch,
# /var/lib/vpatch, /var/log/vpatch and the users. Without --purge those three stay.
# --no-deps: the venv gets no dependencies from PyPI (tests; the result cannot run vpatch).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ROOT=/
ACTION=install
PURGE=""
STAGE=""
NO_DEPS=""
LAYOUT=local
PY=/usr/bin/python3
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --stage) STAGE=1; shift ;;
        --no-deps) NO_DEPS=1; shift ;;
        --layout) LAYOUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --system) shift ;;  # from install.sh
        *) echo "system-install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$ROOT" && pwd)"
R="${ROOT%/}"  # "" for /
if [ "$(id -u)" -ne 0 ] && [ -z "$STAGE" ]; then
    echo "system-install.sh: run as root" >&2
    exit 1
fi
case "$LAYOUT" in
    local) UNITS=etc/systemd/system; SYSUSERS=etc/sysusers.d; TMPFILES=etc/tmpfiles.d ;;
    package) UNITS=lib/systemd/system; SYSUSERS=usr/lib/sysusers.d; TMPFILES=usr/lib/tmpfiles.d ;;
    *) echo "system-install.sh: --layout local|package" >&2; exit 2 ;;
esac
UNIT_FILES=(vpatch.service vpatch-ui.service vpatch-scan.service vpatch-rules-update.service
            vpatch-rules-update.timer vpatch-report.service vpatch-report.timer
            vpatch-health.service vpatch-health.timer)
ENABLED=(vpatch.service vpatch-ui.service vpatch-health.timer)
NETWORK_HEADER='# written by `vpatch install-network`'
running_systemd() { [ "$R" = "" ] && [ -d /run/systemd/system ]; }

stage() {
    echo "system-install.sh: installing into $R/opt/vpatch"
    install -d -m 0755 "$R/opt/vpatch"
    for d in gateway webui rules docs; do
        rm -rf "${R:?}/opt/vpatch/$d"
        cp -r "$SRC/$d" "$R/opt/vpatch/$d"
    done
    install -m 0644 "$SRC/README.md" "$SRC/pyproject.toml" "$R/opt/vpatch/"
    find "$R/opt/vpatch" -name __pycache__ -prune -exec rm -rf {} +
    if [ ! -x "$R/opt/vpatch/.venv/bin/python" ]; then
        "$PY" -m venv "$R/opt/vpatch/.venv"
    fi
    if [ -z "$NO_DEPS" ]; then
        deps="$("$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$SRC/pyproject.toml")"
        mapfile -t reqs <<< "$deps"
        "$R/opt/vpatch/.venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
    fi
    site="$("$R/opt/vpatch/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo /opt/vpatch > "$site/vpatch.pth"
    cat > "$R/opt/vpatch/.venv/bin/vpatch" <<'SCRIPT'
#!/opt/vpatch/.venv/bin/python
import sys

from gateway.cli import main

sys.exit(main())
SCRIPT
    chmod 0755 "$R/opt/vpatch/.venv/bin/vpatch"
    if [ -n "$R" ]; then  # the venv was made under ROOT: its scripts must name /opt/vpatch
        grep -rlF "$R/opt/vpatch" "$R/opt/vpatch/.venv/bin" "$R/opt/vpatch/.venv/pyvenv.cfg" 2>/dev/null \
            | xargs -r sed -i "s#$R/opt/vpatch#/opt/vpatch#g"
    fi
    install -d -m 0755 "$R/$UNITS" "$R/$SYSUSERS" "$R/$TMPFILES" "$R/etc/logrotate.d"
    for u in "${UNIT_FILES[@]}"; do
        install -m 0644 "$SRC/systemd/$u" "$R/$UNITS/$u"
    done
    install -m 0644 "$SRC/systemd/vpatch.sysusers.conf" "$R/$SYSUSERS/vpatch.conf"
    install -m 0644 "$SRC/systemd/vpatch.tmpfiles.conf" "$R/$TMPFILES/vpatch.conf"
    install -m 0644 "$SRC/systemd/vpatch.logrotate" "$R/etc/logrotate.d/vpatch"
    install -d -m 0755 "$R/etc/vpatch"
    if [ ! -e "$R/etc/vpatch/gateway.yaml" ]; then
        install -m 0640 "$SRC/systemd/gateway.yaml" "$R/etc/vpatch/gateway.yaml"
    fi
}

configure() {
    local root_args=()
    [ -n "$R" ] && root_args=(--root="$ROOT")
    systemd-sysusers "${root_args[@]}" "$R/$SYSUSERS/vpatch.conf"
    systemd-tmpfiles --create "${root_args[@]}" "$R/$TMPFILES/vpatch.conf"
    chgrp vpatch "$R/etc/vpatch/gateway.yaml" 2>/dev/null \
        || chgrp "$(awk -F: '$1 == "vpatch" {print $3}' "$R/etc/group")" "$R/etc/vpatch/gateway.yaml"
    running_systemd && systemctl daemon-reload
    systemctl "${root_args[@]}" enable "${ENABLED[@]}"
    echo "system-install.sh: installed; vpatch.service and vpatch-ui.service enabled, not started."
    echo "  Next: vpatch install-network (docs/install.md), edit /etc/vpatch/gateway.yaml, then"
    echo "  systemctl start vpatch vpatch-ui"
}

uninstall() {
    local root_args=()
    [ -n "$R" ] && root_args=(--root="$ROOT")
    if running_systemd; then
        systemctl stop vpatch-health.timer vpatch-report.timer vpatch-rules-update.timer vpatch-scan.service vpatch-ui.service vpatch.service || true
    fi
    for u in "${UNIT_FILES[@]}"; do
        if [ -e "$R/$UNITS/$u" ]; then
            systemctl "${root_args[@]}" disable "$u" >/dev/null 2>&1 || true
        fi
        rm -f "$R/$UNITS/$u"
    done
    rm -f "$R/$SYSUSERS/vpatch.conf" "$R/$TMPFILES/vpatch.conf" "$R/etc/logrotate.d/vpatch"
    # the network files of `vpatch install-network` (recognised by their first line)
    for f in "$R"/etc/systemd/network/50-vpatch-* "$R"/etc/network/interfaces.d/vpatch-* \
             "$R/etc/sysctl.d/90-vpatch.conf" "$R/etc/modules-load.d/br_netfilter.conf" \
             "$R/etc/systemd/system/vpatch.service.d/bridge-ports.conf"; do
        if [ -f "$f" ] && head -n1 "$f" | grep -qF "$NETWORK_HEADER"; then
            rm -f "$f"
        fi
    done
    rmdir "$R/etc/systemd/system/vpatch.service.d" 2>/dev/null || true
    rm -rf "${R:?}/opt/vpatch"
    running_systemd && systemctl daemon-reload
    if [ -n "$PURGE" ]; then
        rm -rf "${R:?}/etc/vpatch" "${R:?}/var/lib/vpatch" "${R:?}/var/log/vpatch"
        local ud=()
        [ -n "$R" ] && ud=(--root "$ROOT")
        if grep -q '^vpatch-ui:' "$R/etc/passwd" 2>/dev/null; then userdel "${ud[@]}" vpatch-ui; fi
        if grep -q '^vpatch:' "$R/etc/group" 2>/dev/null; then groupdel "${ud[@]}" vpatch; fi
        echo "system-install.sh: removed, with the configuration, the data and the users"
    else
        echo "system-install.sh: removed; kept /etc/vpatch, /var/lib/vpatch, /var/log/vpatch (--purge removes them)"
    fi
}

if [ "$ACTION" = uninstall ]; then
    uninstall
else
    stage
    [ -n "$STAGE" ] || configure
fi
