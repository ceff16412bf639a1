#!/bin/bash
# PID 1 of a VMConfig(init="systemd") guest for a moment: prepares the guest's
# writable overlay root (tests/realkernel/initramfs.py, VMX_ROOT=overlay) for a
# real systemd, then execs it.  Every change lands in the overlay's tmpfs upper
# layer, never on the host.  The facts behind each step: shared/GUEST-SYSTEMD.md.
#
# The kernel command line selects vmx.target (systemd.unit=): basic.target plus
# vmx-runner.service, which runs guest_loop.sh (VMX_INIT=systemd) to serve the
# host's commands.

X=/run/vmx
[ -r $X/boot.env ] && . $X/boot.env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "vmx-systemd: $*" >/dev/console; }
UNITS=/etc/systemd/system

# The host image is a docker image: with /.dockerenv systemd thinks it runs in a
# container; policy-rc.d (exit 101) stops maintainer scripts from starting
# services; man-db's auto-update flag makes its dpkg trigger rebuild the man
# index.  Without the .updated stamps, ConditionNeedsUpdate= units run at every boot.
rm -f /.dockerenv /usr/sbin/policy-rc.d /var/lib/man-db/auto-update
touch /etc/.updated /var/.updated
echo vmx-guest >/etc/hostname

mkdir -p $UNITS /etc/systemd/system-generators /etc/tmpfiles.d /etc/udev/rules.d
mask() { for unit; do ln -sfn /dev/null "$UNITS/$unit"; done; }
# No network (timesyncd), nothing periodic, no settle (deprecated, slow).
mask systemd-timesyncd.service systemd-udev-settle.service \
     apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
     fstrim.timer man-db.timer systemd-tmpfiles-clean.timer
# Measured costs with nothing to gain in a test guest: modprobe@ (loads dm_mod, loop,
# fuse, efi_pstore: only the initramfs's modules are wanted), utmp (1.3 s under TCG),
# binfmt_misc, the host's modules-load.d.
mask modprobe@.service systemd-modules-load.service systemd-update-utmp.service \
     systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
# The journal stays in /run: flushing it to /var/log/journal copies it up in the overlay.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/etc/systemd/journald.conf.d/vmx.conf
# Generators with nothing to find cost a process at boot and every daemon-reload.
for gen in systemd-gpt-auto-generator systemd-cryptsetup-generator \
           systemd-integritysetup-generator systemd-veritysetup-generator \
           systemd-hibernate-resume-generator systemd-getty-generator \
           systemd-rc-local-generator systemd-sysv-generator \
           systemd-system-update-generator postgresql-generator; do
    ln -sfn /dev/null "/etc/systemd/system-generators/$gen"
done
# Debian's tmp.conf empties /tmp at boot ("D /tmp"); a checkout living there (a
# CI clone) must stay visible at its own path.
ln -sfn /dev/null /etc/tmpfiles.d/tmp.conf
# No module autoloading by udev: the guest loads exactly the initramfs's modules.
: >/etc/udev/rules.d/80-drivers.rules
if [ "${VMX_UDEV:-1}" != 1 ]; then
    mask systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
         systemd-udev-trigger.service
fi

# PrivateTmp= hides /tmp and /var/tmp from a service: give a checkout living
# there a second path that services see.
if [ -n "${VMX_CHECKOUT_ALIAS:-}" ]; then
    mkdir -p "$VMX_CHECKOUT_ALIAS"
    mount --bind "$VMX_CHECKOUT" "$VMX_CHECKOUT_ALIAS" || log "cannot bind $VMX_CHECKOUT"
fi

cat >$UNITS/vmx.target <<'EOF'
[Unit]
Description=vmem-agent test harness guest
Requires=basic.target vmx-runner.service
After=basic.target vmx-runner.service
AllowIsolate=yes
EOF

# Type=exec, not oneshot: a oneshot would keep the boot "starting" forever.
cat >$UNITS/vmx-runner.service <<EOF
[Unit]
Description=vmem-agent test harness command runner
After=basic.target systemd-udev-trigger.service systemd-udevd.service
RequiresMountsFor=$X

[Service]
Type=exec
Environment=VMX_INIT=systemd
ExecStart=/bin/bash $X/guest_loop.sh
StandardOutput=journal+console
StandardError=journal+console
EOF

log "overlay root prepared, exec systemd at $(cut -d' ' -f1 /proc/uptime)s"
exec /lib/systemd/systemd
