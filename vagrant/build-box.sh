#!/usr/bin/env bash
# Build the Vagrant lab's Debian 12 box for the libvirt provider, locally, from Debian packages
# (no box image is downloaded). Run as root on a Debian 12 host after scripts/install-vagrant.sh:
#
#   vagrant/build-box.sh [OUTPUT.box]     (default /var/cache/vpatch-box/vpatch-debian12.box)
#
# What the box holds, so that the guests never need a package mirror:
# - Debian 12 (mmdebstrap from the host's own apt sources) with the kernel, systemd, ifupdown +
#   DHCP on eth0 (net.ifnames=0: eth0 management, eth1/eth2 lab networks), OpenSSH, sudo, rsync;
# - every package scripts/install.sh installs (nginx-light, samba, bind9, curl, smbclient,
#   bind9-dnsutils, iptables, ipset, the Python build tools, ...) and vpatch itself in /opt/vpatch
#   with its virtualenv /opt/vpatch/.venv, made by running scripts/install.sh inside the tree at
#   build time (pip reaches PyPI then; in a guest, install.sh finds everything installed and the
#   venv up to date, as long as pyproject.toml has not changed since the box was built);
# - nginx, smbd, nmbd, named disabled: the lab server starts its own copies
#   (`vpatch lab serve`, the namespace lab's configurations), the other guests none;
# - the user vagrant (password vagrant, sudo without password) with the insecure public key
#   shipped in Debian's vagrant package; SSH host keys made on each guest's first boot.
# Boot: one MBR partition (ext4, label vpatchroot, written with `mkfs.ext4 -d` at an offset, so no
# loop device or partition-table support is needed) and GRUB's BIOS boot image: boot.img's code in
# the MBR and a core.img from grub-mkimage (prefix (hd0,msdos1)/boot/grub) in the gap after it.
#
# Guarantees: the build happens in a temporary directory that is removed on exit (also on
# failure); OUTPUT is replaced only by a complete box (written beside it, then renamed); nothing
# on the host is changed outside that directory and OUTPUT. Takes about 3 to 10 minutes and 6 GB of
# disk while building (the box is about 2.5 GB: an uncompressed tar with a qcow2 image).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTPUT=${1:-/var/cache/vpatch-box/vpatch-debian12.box}
DISK_SIZE_MB=${VPATCH_BOX_DISK_MB:-8192}
PART_START_SECTOR=2048                  # the partition starts at 1 MiB; GRUB's core.img lives before it
ROOT_LABEL=vpatchroot
GRUB_DIR=/usr/lib/grub/i386-pc

if [[ $(id -u) -ne 0 ]]; then
    echo "build-box.sh: run as root (mmdebstrap, chroot)" >&2
    exit 1
fi
for tool in mmdebstrap mkfs.ext4 sfdisk grub-mkimage qemu-img; do
    command -v "$tool" >/dev/null || {
        echo "build-box.sh: $tool missing: run scripts/install-vagrant.sh" >&2
        exit 1
    }
done
[[ -f $GRUB_DIR/boot.img ]] || { echo "build-box.sh: $GRUB_DIR missing (grub-pc-bin)" >&2; exit 1; }

# The insecure Vagrant public key, from Debian's vagrant package (never downloaded).
VAGRANT_PUB=$(dpkg -L vagrant 2>/dev/null | grep -m1 '/keys/vagrant\.pub$' || true)
[[ -n $VAGRANT_PUB && -f $VAGRANT_PUB ]] || {
    echo "build-box.sh: keys/vagrant.pub not found in the vagrant package" >&2
    exit 1
}

# The host's own apt sources (deb822 or one-line files): the box uses the mirror the host uses.
SOURCES=()
[[ -s /etc/apt/sources.list ]] && SOURCES+=(/etc/apt/sources.list)
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] && SOURCES+=("$f")
done
((${#SOURCES[@]})) || { echo "build-box.sh: no apt sources on this host" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/vpatch-box.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
DISK=$WORK/disk.raw
echo "build-box.sh: building in $WORK"

# The repository's files as they are now (not .git, no virtualenv, no build artefacts).
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./artifacts \
    --exclude='__pycache__' --exclude='*.egg-info' -cf "$WORK/vpatch.tar" .

# pip in the tree trusts what the host trusts (a proxy's CA, say) during the build only: the
# host's bundle replaces the tree's for scripts/install.sh, then Debian's own is put back. (The
# bundle's own path, not PIP_CERT: the host's REQUESTS_CA_BUNDLE & co. point there and win.)
HOST_CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
export TREE_CA=etc/ssl/certs/ca-certificates.crt
[[ -f $HOST_CA ]] || { echo "build-box.sh: no CA bundle at $HOST_CA" >&2; exit 1; }

BASE_PACKAGES=linux-image-amd64,systemd-sysv,udev,dbus,ifupdown,isc-dhcp-client,openssh-server,sudo
BASE_PACKAGES+=,rsync,iproute2,kmod,procps,less,netbase,ca-certificates,python3,initramfs-tools

# shellcheck disable=SC2016  # the hooks' $1 is the chroot, expanded by mmdebstrap's shell
mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
    --customize-hook='mkdir -p "$1/opt/vpatch"' \
    --customize-hook="tar -C \"\$1/opt/vpatch\" -xf '$WORK/vpatch.tar'" \
    --customize-hook='cp -p "$1/$TREE_CA" "$1/tmp/vpatch-debian-ca.crt"' \
    --customize-hook="cp '$HOST_CA' \"\$1/\$TREE_CA\"" \
    --customize-hook='chroot "$1" /opt/vpatch/scripts/install.sh' \
    --customize-hook='mv -f "$1/tmp/vpatch-debian-ca.crt" "$1/$TREE_CA"' \
    --customize-hook='chroot "$1" apt-get clean' \
    bookworm "$ROOT" "${SOURCES[@]}"

# --- the guest's configuration --------------------------------------------------------------
echo vpatch-box >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvpatch-box\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$ROOT/etc/hosts"
echo "LABEL=$ROOT_LABEL / ext4 errors=remount-ro 0 1" >"$ROOT/etc/fstab"
cat >"$ROOT/etc/network/interfaces" <<'EOF'
# vpatch box: eth0 is the Vagrant management network (DHCP); Vagrant configures eth1/eth2.
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
allow-hotplug eth0
iface eth0 inet dhcp
EOF
# A fresh machine-id and fresh SSH host keys on every guest's first boot.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT"/etc/ssh/ssh_host_*
mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$ROOT/etc/systemd/system/ssh.service.d/vpatch-box-hostkeys.conf"
echo 'UseDNS no' >"$ROOT/etc/ssh/sshd_config.d/vpatch-box.conf"
# The lab server runs its own nginx/smbd/named (`vpatch lab serve`); the packaged services stay off.
for unit in nginx smbd nmbd samba-ad-dc named; do
    chroot "$ROOT" systemctl mask "$unit.service" >/dev/null 2>&1 || true
done
chroot "$ROOT" systemctl enable ssh.service >/dev/null
# The vagrant user with the insecure key, sudo without password (Vagrant's box conventions).
chroot "$ROOT" useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant:vagrant' | chroot "$ROOT" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$ROOT/etc/sudoers.d/vagrant"
chmod 440 "$ROOT/etc/sudoers.d/vagrant"
install -d -m 700 "$ROOT/home/vagrant/.ssh"
install -m 600 "$VAGRANT_PUB" "$ROOT/home/vagrant/.ssh/authorized_keys"
chroot "$ROOT" chown -R vagrant:vagrant /home/vagrant/.ssh

# GRUB: its modules and a config in the file system, the boot images in the disk's first MiB.
KERNEL=$(cd "$ROOT/boot" && ls vmlinuz-* | sort -V | tail -n1)
INITRD=initrd.img-${KERNEL#vmlinuz-}
[[ -f $ROOT/boot/$INITRD ]] || { echo "build-box.sh: no $INITRD in the tree" >&2; exit 1; }
mkdir -p "$ROOT/boot/grub/i386-pc"
cp "$GRUB_DIR"/*.mod "$GRUB_DIR"/*.lst "$ROOT/boot/grub/i386-pc/"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# vpatch box: written by vagrant/build-box.sh (no grub-install, no update-grub).
set timeout=1
menuentry "Debian 12 (vpatch box)" {
    insmod part_msdos
    insmod ext2
    search --no-floppy --label --set=root $ROOT_LABEL
    linux /boot/$KERNEL root=LABEL=$ROOT_LABEL ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8
    initrd /boot/$INITRD
}
EOF

echo "build-box.sh: writing the disk image"
truncate -s "${DISK_SIZE_MB}M" "$DISK"
printf 'label: dos\nstart=%d, type=83, bootable\n' "$PART_START_SECTOR" | sfdisk -q "$DISK"
mkfs.ext4 -q -L "$ROOT_LABEL" -E "offset=$((PART_START_SECTOR * 512))" -d "$ROOT" "$DISK" \
    "$((DISK_SIZE_MB - 1))M"
grub-mkimage -O i386-pc -o "$WORK/core.img" -p "(hd0,msdos1)/boot/grub" \
    biosdisk part_msdos ext2 search search_label normal linux configfile
core_sectors=$(( ($(stat -c %s "$WORK/core.img") + 511) / 512 ))
((core_sectors < PART_START_SECTOR - 1)) || { echo "build-box.sh: core.img too big" >&2; exit 1; }
# boot.img's code only (440 bytes): the partition table after it stays. Its default points at
# sector 1, where core.img goes; core.img's first sector loads the rest from sector 2 onwards.
dd if="$GRUB_DIR/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none
rm -rf "$ROOT"

echo "build-box.sh: converting to qcow2 and packing the box"
qemu-img convert -O qcow2 "$DISK" "$WORK/box.img"
rm -f "$DISK"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' \
    $(( (DISK_SIZE_MB + 1023) / 1024 )) >"$WORK/metadata.json"
cat >"$WORK/Vagrantfile" <<'EOF'
# vpatch Debian 12 box (vagrant/build-box.sh): TCG-friendly defaults, see vagrant/Vagrantfile.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
mkdir -p "$(dirname "$OUTPUT")"
tar -C "$WORK" -cf "$OUTPUT.part" metadata.json Vagrantfile box.img
mv -f "$OUTPUT.part" "$OUTPUT"
echo "build-box.sh: wrote $OUTPUT ($(du -h "$OUTPUT" | cut -f1))"
