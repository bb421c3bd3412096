#!/usr/bin/env bash
# The board for real: the project's Debian package installed and run by a real systemd in a
# virtual machine. Builds (once, cached under target/vm/ARCH) a minimal Debian 12 guest with
# mmdebstrap from Debian's packages and the distribution's kernel, boots it (x86-64 with KVM
# when /dev/kvm is usable, TCG otherwise; aarch64 under qemu-system-aarch64 TCG), and runs
# tests/vm.rs: the host side (mosquitto, `hedge decrypt`, enrolment, the reference classes)
# around scripts/vm-guest.sh, which does in the guest what a person would (dpkg -i, the
# bundle and key where the README says, systemctl enable --now, reload, a stalled daemon, a
# reboot, dpkg -r and -P). Ends with "VM-TEST OK <arch> …figures…" or names the failed check.
#   scripts/vm-test.sh [x86_64|aarch64]        (as root: mmdebstrap and the image need it)
#   scripts/vm-test.sh --image [x86_64|aarch64] builds the image only
set -euo pipefail
cd "$(dirname "$0")/.."
image_only=
if [ "${1:-}" = --image ]; then image_only=1; shift; fi
arch=${1:-x86_64}
case $arch in
  x86_64) debarch=amd64 kernel=linux-image-amd64 qemu=qemu-system-x86_64 qemupkg=qemu-system-x86 ;;
  aarch64) debarch=arm64 kernel=linux-image-arm64 qemu=qemu-system-aarch64 qemupkg=qemu-system-arm ;;
  *) echo "usage: scripts/vm-test.sh [--image] [x86_64|aarch64]" >&2; exit 2 ;;
esac
vm=$PWD/target/vm/$arch

# What the host needs, from Debian's packages.
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v "$qemu" >/dev/null || missing+=("$qemupkg")
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v mke2fs >/dev/null || [ -x /usr/sbin/mke2fs ] || missing+=(e2fsprogs)
foreign=
if [ "$arch" = aarch64 ] && [ "$(uname -m)" != aarch64 ]; then
  # mmdebstrap runs the arm64 maintainer scripts under qemu-user through binfmt_misc.
  foreign=1
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || missing+=(qemu-user-static binfmt-support)
  command -v arch-test >/dev/null || missing+=(arch-test)
fi
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -n "$foreign" ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64
fi

# The guest image: its recipe is this section; a change to it builds a new image.
recipe() {
  cat <<EOF
packages=systemd,systemd-sysv,udev,dbus,$kernel,python3,procps,kmod,iproute2,util-linux
suite=bookworm arch=$debarch
hooks=hostname fstab networkd vm-test.service root-without-password
EOF
}
stamp=$(recipe | sha256sum | cut -c1-16)
build_image() {
  rm -rf "$vm" && mkdir -p "$vm"
  local root=$vm/root
  echo "vm-test: building the $arch guest image (mmdebstrap, Debian 12)" >&2
  mmdebstrap --quiet --variant=minbase --architectures="$debarch" \
    --include="$(recipe | sed -n 's/^packages=//p')" \
    --customize-hook='echo hedge-vm > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\nhost /mnt/host 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0\n" > "$1/etc/fstab"; mkdir -p "$1/mnt/host"' \
    --customize-hook='printf "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-dhcp.network"; chroot "$1" systemctl enable systemd-networkd systemd-networkd-wait-online' \
    --customize-hook='printf "[Unit]\nDescription=hedge VM test (scripts/vm-guest.sh from the host)\nAfter=network-online.target mnt-host.mount\nWants=network-online.target\nRequiresMountsFor=/mnt/host\n[Service]\nType=oneshot\nExecStart=/bin/bash /mnt/host/vm-guest.sh\nStandardOutput=journal+console\nStandardError=journal+console\nTimeoutStartSec=infinity\n[Install]\nWantedBy=multi-user.target\n" > "$1/etc/systemd/system/hedge-vm-test.service"; chroot "$1" systemctl enable hedge-vm-test.service' \
    --customize-hook='chroot "$1" passwd -d root' \
    bookworm "$root"
  cp "$root"/boot/vmlinuz-* "$vm/vmlinuz"
  cp "$root"/boot/initrd.img-* "$vm/initrd.img"
  mke2fs -q -t ext4 -L root -d "$root" "$vm/image.raw" 2G
  rm -rf "$root"
  echo "$stamp" >"$vm/stamp"
}
if [ "$(cat "$vm/stamp" 2>/dev/null)" != "$stamp" ]; then
  t0=$(date +%s)
  build_image
  echo "vm-test: image built in $(($(date +%s) - t0)) s ($(du -sh "$vm/image.raw" | cut -f1) used)" >&2
fi
[ -n "$image_only" ] && exit 0

# The package under test: the backend's on x86-64, the boards' on aarch64.
if [ "$arch" = x86_64 ]; then
  cargo build --release --quiet
  command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb
  cargo deb --no-build --strip --quiet >/dev/null
  deb=$(ls -t target/debian/hedge_*_amd64.deb | head -1)
else
  scripts/build-aarch64.sh >/dev/null
  command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb
  cargo deb --no-build --strip --quiet --variant edge --target aarch64-unknown-linux-musl >/dev/null
  deb=$(ls -t target/aarch64-unknown-linux-musl/debian/hedge-edge_*_arm64.deb target/debian/hedge-edge_*_arm64.deb 2>/dev/null | head -1)
fi

export HEDGE_VM_ARCH=$arch HEDGE_VM_DIR=$vm HEDGE_VM_DEB=$PWD/$deb
export HEDGE_VM_GUEST=$PWD/scripts/vm-guest.sh
cargo test --release --test vm -- --ignored --nocapture 2>&1 | tee "$vm/test.log" |
  grep -E '^VM-TEST|^vm:|test result|panicked' || true
grep -q "^VM-TEST OK $arch" "$vm/test.log"
