#!/usr/bin/env bash
# Install what the Vagrant lab (vagrant/) and its slow test (tests/lab/test_vagrant.py) need on a
# Debian 12 host, as root: Vagrant with the libvirt provider, libvirt with QEMU (TCG is enough:
# the lab does not need KVM), and mmdebstrap plus the tools vagrant/build-box.sh uses to build
# the lab's Debian 12 box locally. Not part of scripts/install.sh: CI does not run the VM lab.
#
# Guarantees: idempotent (apt runs only when a package is missing); never starts a service:
# a temporary policy-rc.d forbids package scripts from starting libvirtd/virtlogd (the test and
# docs/lab.md start them inside a network namespace of their own, never in the root namespace,
# because libvirt adds iptables rules even for isolated networks).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-vagrant.sh: run as root (apt-get)" >&2
    exit 1
fi

APT_PACKAGES=(
    # Vagrant and its libvirt provider (Debian 12: vagrant 2.3, vagrant-libvirt 0.11)
    vagrant vagrant-libvirt rsync openssh-client
    # libvirt driving QEMU (TCG), DHCP for the management network, qemu-img for boxes
    libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils
    dnsmasq-base iptables
    # building the box: a Debian tree, an ext4 file system from a directory, GRUB's BIOS images
    mmdebstrap debian-archive-keyring e2fsprogs fdisk grub-pc-bin
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "install-vagrant.sh: all packages already installed"
    exit 0
fi

echo "install-vagrant.sh: installing ${missing[*]}"
created_policy=""
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# vpatch install-vagrant.sh: no service starts during install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
trap '[[ -n $created_policy ]] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
