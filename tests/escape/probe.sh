#!/bin/sh
# The escape probe: run as root inside a berth machine (by the machine's own
# init, e.g. `systemd-run --wait --pipe sh -s < probe.sh`, so it has what
# the machine's processes have: their capability bounding set, seccomp
# filter, namespaces and mounts). Each check tries one way out and prints
# one line "NAME: RESULT", RESULT being the exact error text, "ok" for a
# call that worked, or a word saying where it ended. Compared line by line
# with expected-*.txt by tests/escape.rs (host tier) and the system tier.
#
# What the host passes in (environment):
#   HOST_DISK      MAJOR:MINOR of the host's root file system's device
#   HOST_PID       a live process of the host (a number no machine process has)
#   HOST_CANARY    a path that exists only on the host
#   HOST_NS        the host's namespaces, as /proc/self/ns/* links read there
#                  ("mnt:[4026531841] pid:[...] ...")
#   HOST_ABSTRACT  an abstract UNIX socket name the host listens on
#   BIND_DIR       a host directory bound read-write into the machine (its
#                  path inside)
# The probe changes nothing it reaches on the host: a file it could write
# there gets its own content back; a mount that works is undone at once.
# Syscall numbers are x86_64's (the probe refuses to run elsewhere).
set -u
[ "$(uname -m)" = x86_64 ] || { echo "probe: x86_64 only (syscall numbers)"; exit 1; }
for v in HOST_DISK HOST_PID HOST_CANARY HOST_NS HOST_ABSTRACT BIND_DIR; do
  eval "[ -n \"\${$v:-}\" ]" || { echo "probe: $v is not set"; exit 1; }
done

# check NAME PERL: run PERL with the helpers below; it ends with out(TEXT).
check() {
  name=$1; shift
  r=$(perl -e '
    use strict; use warnings; use POSIX (); use Fcntl;
    sub out { print "$_[0]\n"; exit 0 }
    sub err { out("$!") }
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

# 2. The host's disk: a node for it, read it, mount it.
check mknod-disk '
  my ($ma, $mi) = split /:/, $ENV{HOST_DISK};
  unlink "/dev/esc-disk";
  call(syscall(259, -100, "/dev/esc-disk", 0060600, makedev($ma, $mi)))'   # mknodat
check read-disk '
  sysopen(my $f, "/dev/esc-disk", O_RDONLY) or err();
  defined(sysread($f, my $b, 512)) or err(); out("ESCAPED: read the host disk")'
check mount-disk '
  mkdir "/tmp/esc-mnt";
  syscall(165, "/dev/esc-disk", "/tmp/esc-mnt", "ext4", 1, 0) == -1 and err();  # mount, MS_RDONLY
  syscall(166, "/tmp/esc-mnt", 2); out("ESCAPED: mounted the host disk")'

# 3. The kernel's helpers: a fresh proc or sysfs, and the existing files.
check mount-proc '
  mkdir "/tmp/esc-proc";
  syscall(165, "proc", "/tmp/esc-proc", "proc", 0, 0) == -1 and err();
  my $w = sysopen(my $f, "/tmp/esc-proc/sys/kernel/core_pattern", O_WRONLY) ? "writable" : "$!";
  syscall(166, "/tmp/esc-proc", 2); out("mounted, core_pattern: $w")'
check mount-sysfs '
  mkdir "/tmp/esc-sys";
  syscall(165, "sysfs", "/tmp/esc-sys", "sysfs", 0, 0) == -1 and err();
  my $w = sysopen(my $f, "/tmp/esc-sys/kernel/uevent_helper", O_WRONLY) ? "writable" : "$!";
  syscall(166, "/tmp/esc-sys", 2); out("mounted, uevent_helper: $w")'
check core_pattern 'write_back("/proc/sys/kernel/core_pattern")'
check uevent_helper 'write_back("/sys/kernel/uevent_helper")'

# 4. The masks and read-only binds stay.
check umount-keys 'call(syscall(166, "/proc/keys", 0))'
check umount-sysrq 'call(syscall(166, "/proc/sysrq-trigger", 2))'     # MNT_DETACH
check umount-proc-sys 'call(syscall(166, "/proc/sys", 2))'
check remount-proc-sys 'call(syscall(165, "none", "/proc/sys", 0, 4096 | 32, 0))'  # MS_BIND|MS_REMOUNT, rw

# 5. sysrq (h: help, harmless if it ever got through).
check sysrq-trigger '
  sysopen(my $f, "/proc/sysrq-trigger", O_WRONLY) or err();
  defined(syswrite($f, "h")) or err(); out("ESCAPED: wrote /proc/sysrq-trigger")'

# 6, 7. Kernel code: modules and kexec (bad flags, so a call that got
# through would fail with EINVAL, never act).
check init_module 'call(syscall(175, "\0" x 64, 64, ""))'
check finit_module 'sysopen(my $f, "/dev/null", O_RDONLY) or err(); call(syscall(313, fileno($f), "", 0))'
check kexec_load 'call(syscall(246, 0, 0, 0, 0xdead0000))'
check kexec_file_load 'call(syscall(320, -1, -1, 0, "", 0xdead0000))'

# 8. Host processes: not visible, not reachable by number.
check host-pid-proc 'out(-e "/proc/$ENV{HOST_PID}" ? "ESCAPED: visible" : "absent")'
check host-pid-kill 'kill(0, $ENV{HOST_PID}) ? out("ESCAPED: signalled") : err()'
check host-pid-pidfd 'call(syscall(434, $ENV{HOST_PID} + 0, 0))'            # pidfd_open
check host-pid-ptrace 'call(syscall(101, 16, $ENV{HOST_PID} + 0, 0, 0))'    # PTRACE_ATTACH
check pid1 'open(my $f, "<", "/proc/1/comm") or err(); my $c = <$f>; chomp $c; out($c)'

# 9. Namespaces: which of PID 1's are the host's, and no descriptor of a
# host namespace the machine does not share is open in it.
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

# 10. open_by_handle_at: the root directory of the file system under / by
# its handle (inode 2, FILEID_INO32_GEN), as "shocker" did.
check open_by_handle_at '
  sysopen(my $m, "/", O_RDONLY | O_DIRECTORY) or err();
  my $h = pack("IiII", 8, 1, 2, 0);
  call(syscall(304, fileno($m), $h, 0))'

# 11. The kernel's keyrings.
check add_key 'call(syscall(248, "user", "berth-escape", "x", 1, -2))'      # KEY_SPEC_PROCESS_KEYRING
check keyctl 'call(syscall(250, 0, -4, 0))'          # KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING

# 12. The machine's own cgroup limits (berth's sit above its cgroup root).
for f in memory.max pids.max; do
  check "cgroup-$f" "
    my \$p = '/sys/fs/cgroup/$f'; -e \$p or out('absent');
    open(my \$r, '<', \$p) or err(); my \$v = <\$r>;
    sysopen(my \$w, \$p, O_WRONLY) or err(); defined(syswrite(\$w, \$v)) or err();
    out('ESCAPED: wrote ' . \$p)"
done

# 13. The host's abstract UNIX sockets.
check abstract-socket '
  use Socket;
  socket(my $s, AF_UNIX, SOCK_STREAM, 0) or err();
  connect($s, pack_sockaddr_un("\0$ENV{HOST_ABSTRACT}")) or err();
  out("ESCAPED: connected")'

# 14. A setuid file through a bind: made here; the host checks its owner.
check setuid-bind "
  my \$p = '$BIND_DIR/esc-setuid'; unlink \$p;
  sysopen(my \$f, \$p, O_WRONLY | O_CREAT, 0755) or err(); close \$f;
  chown(0, 0, \$p) or err(); chmod(04755, \$p) or err();
  my @s = stat(\$p); out(sprintf('uid %d mode %o', \$s[4], \$s[2] & 07777))"
