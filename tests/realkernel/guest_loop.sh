#!/bin/bash
# Guest side of the vmem-agent real-kernel harness.
#
# VMX_INIT=loop (default): runs as PID 1 inside the QEMU guest after /init
# (tests/realkernel/initramfs.py) switch_root'ed into the host root (read-only
# virtio-9p), and sets up scratch mounts and udevd itself.
# VMX_INIT=systemd: runs as vmx-runner.service under a real systemd
# (guest_systemd.sh), which has done that setup already.
# The exchange share (writable 9p, a host temp dir) is mounted at /run/vmx.
#
# Protocol (host side: tests/realkernel/vm.py):
#   host writes optionally q/ID.stdin and q/ID.cwd, then renames q/ID.tmp -> q/ID.cmd
#   guest runs q/ID.cmd with bash as a background job (own process group),
#         writes q/ID.pid, q/ID.out, q/ID.err and finally q/ID.rc ("N\n")
#   host may write q/ID.kill to SIGKILL the command's process group
#         (the host enforces the per-command timeout this way)
#   host may write q/shutdown to power the guest off
# The guest writes /run/vmx/ready once udevd has settled (and, under systemd,
# the boot has finished).

X=/run/vmx
Q=$X/q
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1
[ -r $X/boot.env ] && . $X/boot.env

log() { echo "vmx-loop: $*" >/dev/console; }
t() { cut -d' ' -f1 /proc/uptime; }

log "started at $(t)s"

if [ "${VMX_INIT:-loop}" = loop ]; then
    # Writable scratch space over the read-only host root. First keep the host's view
    # of the two temp dirs, so that a checkout (and its venv) living there, as a CI clone
    # may, stays visible at its own path (VMX_KEEP: host paths the host needs here).
    mkdir -p /run/host/tmp /run/host/var/tmp
    mount --bind /tmp /run/host/tmp
    mount --bind /var/tmp /run/host/var/tmp
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=1777 tmpfs /var/tmp
    for keep in $VMX_KEEP; do
        case "$keep" in
        /tmp/*|/var/tmp/*)
            mkdir -p "$keep" && mount --bind "/run/host$keep" "$keep" ;;
        esac
    done
    mount -t tmpfs -o mode=755 tmpfs /var/log
    mount -t tmpfs -o mode=755 tmpfs /var/cache
    # /var/lib writable over the host's (an overlay, so its contents stay visible): the
    # agent stores its target in /var/lib/vmem-agent, as it does on a real guest.
    mkdir -p /run/varlib/upper /run/varlib/work
    mount -t overlay overlay -o lowerdir=/var/lib,upperdir=/run/varlib/upper,workdir=/run/varlib/work /var/lib \
        || mount -t tmpfs -o mode=755 tmpfs /var/lib
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    mkdir -p /run/lock /run/udev
    # debugfs/tracefs are handy for research; failure is harmless.
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    mount -t configfs configfs /sys/kernel/config 2>/dev/null
    hostname vmx-guest 2>/dev/null

    # udev: no module autoloading (80-drivers.rules shadowed by an empty file in
    # a tmpfs over /etc/udev/rules.d), few workers.
    if [ "${VMX_UDEV:-1}" = 1 ] && [ -x /lib/systemd/systemd-udevd ]; then
        mount -t tmpfs -o mode=755 tmpfs /etc/udev/rules.d
        : >/etc/udev/rules.d/80-drivers.rules
        /lib/systemd/systemd-udevd --daemon --children-max=2 --resolve-names=never \
            >/run/udevd.log 2>&1
        # Populate the udev db for the memory/node devices that exist already
        # (what coldplug does on a real system), then settle.
        udevadm trigger --action=add --subsystem-match=memory --subsystem-match=node \
            >/dev/null 2>&1
        udevadm settle --timeout=30
    fi
else
    # systemd-udev-trigger.service has queued the coldplug events: let udevd
    # finish them, so the udev db is complete like in loop mode.
    [ "${VMX_UDEV:-1}" = 1 ] && udevadm settle --timeout=30
    system_state=$(timeout 120 systemctl is-system-running --wait)
fi

mkdir -p $Q
shopt -s nullglob
mkfifo /run/vmx-sleep
exec 9<>/run/vmx-sleep   # read -t on this fifo = sleep without forking

# Optional interactive shell on the serial console (tests/realkernel/shell.py).
if [ "${VMX_CONSOLE_SHELL:-0}" = 1 ]; then
    ( while :; do
          PS1='vmx-guest:\w# ' setsid -c -w bash --noprofile --norc -i \
              </dev/ttyS0 >/dev/ttyS0 2>&1
      done ) &
fi

{
    echo "uptime=$(t)"
    echo "kernel=$(uname -r)"
    if [ -n "${system_state:-}" ]; then echo "system_state=$system_state"; fi
} >$X/ready.tmp && mv $X/ready.tmp $X/ready
log "ready at $(t)s"

declare -A started
set -m   # job control: every background job gets its own process group
run_job() {  # ID
    local id=$1 in=/dev/null cwd=/
    [ -e $Q/$id.stdin ] && in=$Q/$id.stdin
    [ -r $Q/$id.cwd ] && read -r cwd <$Q/$id.cwd
    # Outer job (own process group): runs the command, then records its exit
    # status.  The inner bash is a child in the same group, so ID.kill
    # (kill -- -PGID) takes down the command and everything it started.
    {
        cd "$cwd" 2>/dev/null || cd /
        bash $Q/$id.cmd <"$in" >$Q/$id.out 2>$Q/$id.err
        echo $? >$Q/$id.rc
    } &
    echo $! >$Q/$id.pid
}

while :; do
    for f in $Q/*.cmd; do
        id=${f##*/}; id=${id%.cmd}
        [ -n "${started[$id]}" ] && continue
        started[$id]=1
        run_job "$id"
    done
    for f in $Q/*.kill; do
        id=${f##*/}; id=${id%.kill}
        rm -f "$f"
        if [ -r $Q/$id.pid ] && read -r pid <$Q/$id.pid; then
            kill -KILL -- "-$pid" 2>/dev/null   # also kills the job's rc writer
            wait "$pid" 2>/dev/null
            [ -e $Q/$id.rc ] || echo 137 >$Q/$id.rc
        fi
    done
    if [ -e $Q/shutdown ]; then
        log "shutdown requested"
        rm -f $Q/shutdown
        sync
        if [ "${VMX_INIT:-loop}" = systemd ]; then
            # Directly, not `systemctl poweroff`: that waits for D-Bus and logind.
            systemctl --no-block start poweroff.target
        else
            /bin/busybox poweroff -f
        fi
    fi
    read -r -t "${VMX_POLL:-0.05}" -u 9 _
done
