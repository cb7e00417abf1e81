#!/bin/sh
# The escape probe: run as root inside a berth machine (by the machine's own
# init, e.g. `systemd-run --wait --pipe sh -s < probe.sh`, so it has what
# the machine's processes have: their capability bounding set, seccomp
# filter, namespaces and mounts). Each check tries one way out and prints
# one line "NAME: RESULT", RESULT being the exact error text, "ok" for a
# call that worked, a word saying where it ended, or "ESCAPED: ..." for a
# way out that worked. Compared line by line with expected-*.txt by
# tests/escape.rs (host tier) and tests/system/in-vm/system-tests.
#
# What the host passes in (environment):
#   HOST_DISK      MAJOR:MINOR of the host's root file system's device
#   HOST_PID       a live process of the host (a number no machine process has)
#   HOST_CANARY    a path that exists only on the host
#   HOST_NS        the host's namespaces, as /proc/self/ns/* links read there
#                  ("mnt:[4026531841] pid:[...] ...")
#   HOST_ABSTRACT  an abstract UNIX socket name the host listens on
#   BIND_DIR       a host directory bound read-write into the machine with
#                  the default options (its path inside)
#   BIND_IDMAP_DIR (optional) the same, bound with the option idmap
# The probe changes nothing it reaches on the host: a file it could write
# there gets its own content back; a mount that works is undone at once; a
# file it makes in a host file system is removed again (the setuid files
# of the tree and the binds excepted: the host checks and removes those).
# Syscall numbers are x86_64's (the probe refuses to run elsewhere).
set -u
[ "$(uname -m)" = x86_64 ] || { echo "probe: x86_64 only (syscall numbers)"; exit 1; }
for v in HOST_DISK HOST_PID HOST_CANARY HOST_NS HOST_ABSTRACT BIND_DIR; do
  eval "[ -n \"\${$v:-}\" ]" || { echo "probe: $v is not set"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "probe: must run as root (uid 0 inside)"; exit 1; }

# check NAME PERL: run PERL with the helpers below; it ends with out(TEXT).
check() {
  name=$1; shift
  r=$(perl -e '
    use strict; use warnings; use POSIX (); use Fcntl;
    sub out { print "$_[0]\n"; exit 0 }
    sub err { out("$!") }
    # syscall(2) with copies of its arguments: perl passes a string as a
    # pointer the kernel may write through, and refuses a literal.
    sub sc { my ($n, @a) = map { my $c = $_; $c } @_; syscall($n, @a) }
    # A call: "ok" or its error.
    sub call { my $r = shift; out($r == -1 ? "$!" : "ok") }
    # Open PATH for writing; a file that opens gets its own content back.
    sub write_back {
      my $p = shift;
      my $old = "";
      if (open(my $r, "<", $p)) { local $/; $old = <$r> // "" }
      sysopen(my $w, $p, O_WRONLY) or err();
      defined(syswrite($w, $old)) or err();
      out("ESCAPED: wrote $p");
    }
    # mount(2): 0 or the error text.
    sub mnt { my ($src, $dst, $type, $flags) = @_; sc(165, $src, $dst, $type, $flags, 0) == -1 ? "$!" : 0 }
    sub umnt { sc(166, $_[0], 2) }   # MNT_DETACH
    # A fresh file system of TYPE, mounted and undone: its error, or what
    # the machine reached through it.
    sub try_fs {
      my ($type, $what) = @_;
      my $d = "/tmp/esc-fs-$type"; mkdir $d;
      my $e = mnt($type, $d, $type, 0); out($e) if $e;
      my $r = $what ? $what->($d) : "";
      umnt($d); out("ESCAPED: mounted the host'\''s $type$r");
    }
    sub makedev { my ($ma, $mi) = @_; ($mi & 0xff) | (($ma & 0xfff) << 8) | (($mi & ~0xff) << 12) | (($ma & ~0xfff) << 32) }
    ' -e "$1" 2>&1)
  # One line per check, whatever perl printed.
  echo "$name: $r" | paste -sd'|' | sed 's/|/ | /g'
}

# 1. chroot out: a chroot whose working directory stays outside, walked up.
check chroot-out '
  my @r = stat("/"); mkdir "/tmp/esc-chroot";
  chroot("/tmp/esc-chroot") or err();
  for (1..64) { chdir("..") or err() }
  chroot(".") or err(); my @n = stat("/");
  out(-e $ENV{HOST_CANARY} ? "ESCAPED: the host canary is visible"
    : ($n[0] == $r[0] && $n[1] == $r[1]) ? "the machine'\''s root" : "elsewhere")'
check chroot-out-fd '
  my @r = stat("/"); mkdir "/tmp/esc-chroot";
  opendir(my $d, "/") or err(); chdir("/tmp/esc-chroot") or err();
  chroot("/tmp/esc-chroot") or err(); chdir($d) or err();
  for (1..64) { chdir("..") or err() }
  chroot(".") or err(); my @n = stat("/");
  out(-e $ENV{HOST_CANARY} ? "ESCAPED: the host canary is visible"
    : ($n[0] == $r[0] && $n[1] == $r[1]) ? "the machine'\''s root" : "elsewhere")'

# 2. The host's disk: a node for it, read it, mount it (from that node).
check mknod-disk '
  my ($ma, $mi) = split /:/, $ENV{HOST_DISK};
  unlink "/dev/esc-disk";
  call(sc(259, -100, "/dev/esc-disk", 0060600, makedev($ma, $mi)))'   # mknodat
check read-disk '
  -e "/dev/esc-disk" or out("no node (mknod refused)");
  sysopen(my $f, "/dev/esc-disk", O_RDONLY) or err();
  defined(sysread($f, my $b, 512)) or err(); out("ESCAPED: read the host disk")'
check mount-disk '
  -e "/dev/esc-disk" or out("no node (mknod refused)");
  mkdir "/tmp/esc-mnt";
  my $e = mnt("/dev/esc-disk", "/tmp/esc-mnt", "ext4", 1); out($e) if $e;   # MS_RDONLY
  umnt("/tmp/esc-mnt"); out("ESCAPED: mounted the host disk")'

# 3. The kernel's helpers: a fresh proc or sysfs, and the existing files.
check mount-proc '
  mkdir "/tmp/esc-proc";
  my $e = mnt("proc", "/tmp/esc-proc", "proc", 0); out($e) if $e;
  my $w = sysopen(my $f, "/tmp/esc-proc/sys/kernel/core_pattern", O_WRONLY) ? "writable" : "$!";
  umnt("/tmp/esc-proc"); out("mounted, core_pattern: $w")'
check mount-sysfs '
  mkdir "/tmp/esc-sys";
  my $e = mnt("sysfs", "/tmp/esc-sys", "sysfs", 0); out($e) if $e;
  my $w = sysopen(my $f, "/tmp/esc-sys/kernel/uevent_helper", O_WRONLY) ? "writable" : "$!";
  umnt("/tmp/esc-sys"); out("mounted, uevent_helper: $w")'
# The same from a user namespace of the machine's own making (which owns
# the new mount and PID namespaces): the kernel refuses a proc while the
# machine's is masked ("mount_too_revealing").
check userns-mount-proc '
  sc(272, 0x10000000 | 0x20000 | 0x20000000) == -1 and err();   # unshare(NEWUSER|NEWNS|NEWPID)
  pipe(my $r, my $w) or err();
  my $pid = fork() // err();
  if ($pid == 0) {
    close $r; mkdir "/tmp/esc-uproc";
    my $e = mnt("proc", "/tmp/esc-uproc", "proc", 0);
    print $w ($e || "ESCAPED: mounted a fresh proc"); exit 0;
  }
  close $w; waitpid($pid, 0); local $/; out(<$r>)'
check core_pattern 'write_back("/proc/sys/kernel/core_pattern")'
# uevent_helper exists only with CONFIG_UEVENT_HELPER; without it, a
# writable file of the host's /sys/kernel stands in.
check uevent_helper '
  -e "/proc/sys/kernel/hotplug" or -e "/sys/kernel/uevent_helper" or do {
    my $p = "/sys/kernel/rcu_expedited";
    sysopen(my $w, $p, O_WRONLY) or out("absent from this kernel; $p: $!");
    out("absent from this kernel; ESCAPED: $p opens for writing") };
  write_back("/sys/kernel/uevent_helper")'

# 4. The masks and read-only parts of /proc stay.
check read-keys 'open(my $f, "<", "/proc/keys") or err(); local $/; my $t = <$f> // ""; out(length($t) . " bytes")'
check umount-keys 'call(sc(166, "/proc/keys", 0))'
check umount-sysrq '
  -e "/proc/sys/kernel/sysrq" or out("absent from this kernel (no /proc/sys/kernel/sysrq)");
  call(sc(166, "/proc/sysrq-trigger", 2))'     # MNT_DETACH
check umount-proc-sys 'call(sc(166, "/proc/sys", 2))'
check remount-proc-sys 'call(sc(165, "none", "/proc/sys", 0, 4096 | 32, 0))'  # MS_BIND|MS_REMOUNT, rw
# A copy of /proc without the masks above it: a bind that is not recursive,
# and open_tree(OPEN_TREE_CLONE) of it.
check bind-proc 'mkdir "/tmp/esc-bproc"; my $e = mnt("/proc", "/tmp/esc-bproc", 0, 4096); out($e) if $e;
  umnt("/tmp/esc-bproc"); out("ESCAPED: /proc bound without its masks")'
check open_tree-proc 'call(sc(428, -100, "/proc", 1))'          # open_tree(AT_FDCWD, OPEN_TREE_CLONE)
# From a user namespace of the machine's making, the mounts are its own
# to change, and locked.
check userns-umount-keys '
  sc(272, 0x10000000 | 0x20000) == -1 and err();   # unshare(NEWUSER|NEWNS)
  call(sc(166, "/proc/keys", 0))'

# 5. sysrq (h: help, harmless if it ever got through).
check sysrq-trigger '
  -e "/proc/sys/kernel/sysrq" or out("absent from this kernel (no /proc/sys/kernel/sysrq)");
  sysopen(my $f, "/proc/sysrq-trigger", O_WRONLY) or err();
  defined(syswrite($f, "h")) or err(); out("ESCAPED: wrote /proc/sysrq-trigger")'

# 6, 7. Kernel code: modules and kexec (bad arguments, so a call that got
# through would fail with EINVAL or ENOEXEC, never act).
check init_module 'call(sc(175, "\0" x 64, 64, ""))'
check finit_module 'sysopen(my $f, "/dev/null", O_RDONLY) or err(); call(sc(313, fileno($f), "", 0))'
check delete_module 'call(sc(176, "esc_none", 0x800))'        # O_NONBLOCK
check kexec_load 'call(sc(246, 0, 0, 0, 0xdead0000))'
check kexec_file_load 'call(sc(320, -1, -1, 0, "", 0xdead0000))'
check iopl 'call(sc(172, 3))'

# 8. Host processes: not visible, not reachable by number.
check host-pid-proc 'out(-e "/proc/$ENV{HOST_PID}" ? "ESCAPED: visible" : "absent")'
check host-pid-kill 'kill(0, $ENV{HOST_PID}) ? out("ESCAPED: signalled") : err()'
check host-pid-pidfd 'call(sc(434, $ENV{HOST_PID} + 0, 0))'            # pidfd_open
check host-pid-ptrace 'call(sc(101, 16, $ENV{HOST_PID} + 0, 0, 0))'    # PTRACE_ATTACH
check pid1 'open(my $f, "<", "/proc/1/comm") or err(); my $c = <$f>; chomp $c; out($c)'

# 9. Namespaces: which of PID 1's are the host's; no descriptor of a host
# namespace the machine does not share is open in it; none by /proc.
check ns-shared-with-host '
  my %host = map { /^(\w+):/ ? ($1 => $_) : () } split " ", $ENV{HOST_NS};
  my @same = grep { defined $host{$_} && (readlink("/proc/1/ns/$_") // "") eq $host{$_} }
    qw(cgroup ipc mnt net pid time user uts);
  out(@same ? "@same" : "none")'
check leaked-ns-fds '
  my %shared = map { (readlink($_) // "") => 1 } glob("/proc/1/ns/*");
  my @leak;
  for my $fd (glob("/proc/[0-9]*/fd/*")) {
    my $t = readlink($fd) // next;
    push @leak, "$fd -> $t" if !$shared{$t} && grep { $_ eq $t } split " ", $ENV{HOST_NS};
  }
  out(@leak ? "ESCAPED: @leak" : "none")'
check setns-host-mnt '
  sysopen(my $f, "/proc/$ENV{HOST_PID}/ns/mnt", O_RDONLY) or err();
  call(sc(308, fileno($f), 0))'

# 10. open_by_handle_at: the root directory of the file system under / by
# its handle (inode 2, FILEID_INO32_GEN), as "shocker" did.
check open_by_handle_at '
  sysopen(my $m, "/", O_RDONLY | O_DIRECTORY) or err();
  my $h = pack("IiII", 8, 1, 2, 0);
  call(sc(304, fileno($m), $h, 0))'

# 11. The kernel's keyrings.
check add_key 'call(sc(248, "user", "berth-escape", "x", 1, -2))'      # KEY_SPEC_PROCESS_KEYRING
check keyctl 'call(sc(250, 0, -4, 0))'          # KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING

# 12. cgroups: the machine's own limits (berth's sit above its cgroup
# root), what it sees of the tree, and a v1 hierarchy's release_agent.
for f in memory.max pids.max; do
  check "cgroup-$f" "
    my \$p = '/sys/fs/cgroup/$f'; -e \$p or out('absent');
    open(my \$r, '<', \$p) or err(); my \$v = <\$r>;
    sysopen(my \$w, \$p, O_WRONLY) or err(); defined(syswrite(\$w, \$v)) or err();
    out('ESCAPED: wrote ' . \$p)"
done
check cgroup-root '
  open(my $f, "<", "/proc/1/cgroup") or err();
  my ($p) = map { /^0::(.*)/ ? $1 : () } <$f>; out($p // "no cgroup2 line")'
check cgroup1-release_agent '
  mkdir "/tmp/esc-cg1";
  my $e = mnt("cgroup", "/tmp/esc-cg1", "cgroup", 0); out($e) if $e;
  my $w = sysopen(my $f, "/tmp/esc-cg1/release_agent", O_WRONLY) ? "writable" : "$!";
  umnt("/tmp/esc-cg1"); out("mounted, release_agent: $w")'

# 13. The host's abstract UNIX sockets.
check abstract-socket '
  use Socket;
  socket(my $s, AF_UNIX, SOCK_STREAM, 0) or err();
  connect($s, pack_sockaddr_un("\0$ENV{HOST_ABSTRACT}")) or err();
  out("ESCAPED: connected")'

# 14. Kernel-wide file systems: one instance for the whole host, so a
# machine that mounts one reaches the host's (devtmpfs is the host's /dev).
check mount-devtmpfs 'try_fs("devtmpfs", sub {
  my $r = "";
  my $p = "$_[0]/esc-probe-$$";
  if (sysopen(my $f, $p, O_WRONLY | O_CREAT | O_EXCL, 0600)) { close $f; unlink $p; $r = " and made a file in it" }
  # The host disk by its node there (the device policy decides).
  my $name = "";
  if (open(my $u, "<", "/sys/dev/block/$ENV{HOST_DISK}/uevent")) { /^DEVNAME=(.*)/ and $name = $1 for <$u> }
  my $d = sysopen(my $f, "$_[0]/$name", O_RDONLY) ? "ESCAPED: opened" : "$!";
  "$r; the host disk ($name) there: $d" })'
for fs in debugfs tracefs securityfs pstore bpf fusectl; do
  check "mount-$fs" "try_fs('$fs')"
done
# binfmt_misc has an instance per user namespace since Linux 6.7: which
# one the machine reached shows on the host, which looks for the entry
# registered here (a name and file extension nothing else uses).
check mount-binfmt_misc '
  my $d = "/tmp/esc-fs-binfmt_misc"; mkdir $d;
  my $e = mnt("binfmt_misc", $d, "binfmt_misc", 0); out($e) if $e;
  my $f; my $r = sysopen($f, "$d/register", O_WRONLY) && syswrite($f, ":t-esc-probe:E::tescprobe::/bin/true:")
    ? "registered t-esc-probe" : "register: $!";
  umnt($d); out("mounted an instance, $r")'

# 15. A setuid file in the tree and through the binds: made here; the host
# checks its owner (in the tree, root's: the tree keeps the host's IDs).
setuid_bind() {
  check "$1" "
    my \$p = '$2/esc-setuid'; unlink \$p;
    sysopen(my \$f, \$p, O_WRONLY | O_CREAT, 0755) or err(); close \$f;
    chown(0, 0, \$p) or err(); chmod(04755, \$p) or err();
    my @s = stat(\$p); out(sprintf('uid %d mode %o', \$s[4], \$s[2] & 07777))"
}
setuid_bind setuid-tree /var/tmp
setuid_bind setuid-bind "$BIND_DIR"
if [ -n "${BIND_IDMAP_DIR:-}" ]; then setuid_bind setuid-bind-idmap "$BIND_IDMAP_DIR"; else echo "setuid-bind-idmap: not bound"; fi
