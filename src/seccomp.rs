//! The system-call filter of a machine: a deny list, installed in the init
//! just before execve.
//!
//! Why not the seccompiler crate: its filters kill any process of a foreign
//! architecture (an i386 binary inside an amd64 machine would die), it does
//! not guard the x32 number space, and its `apply_filter` sets no_new_privs,
//! which would break su, sudo and login inside the machine. The filter below
//! is a table plus a few lines of BPF, and answers EPERM for a denied call
//! on every ABI the kernel offers here.

use crate::sys;

/// A call refused inside every machine, with its number per ABI.
pub struct Denied {
    pub name: &'static str,
    /// Number on the native ABI (libc's, for the architecture built for).
    pub native: Option<i64>,
    /// Number on the i386 compat ABI (x86_64 builds only).
    pub i386: Option<i64>,
}

macro_rules! denied {
    ($name:ident, $nr:expr, $i386:expr) => {
        Denied {
            name: stringify!($name),
            native: Some($nr),
            i386: $i386,
        }
    };
}

/// i386 numbers are from the kernel's arch/x86/entry/syscalls/syscall_32.tbl.
pub const DENIED: &[Denied] = &[
    denied!(kexec_load, libc::SYS_kexec_load, Some(283)),
    denied!(kexec_file_load, libc::SYS_kexec_file_load, None),
    denied!(init_module, libc::SYS_init_module, Some(128)),
    denied!(finit_module, libc::SYS_finit_module, Some(350)),
    denied!(delete_module, libc::SYS_delete_module, Some(129)),
    denied!(add_key, libc::SYS_add_key, Some(286)),
    denied!(request_key, libc::SYS_request_key, Some(287)),
    denied!(keyctl, libc::SYS_keyctl, Some(288)),
    denied!(bpf, libc::SYS_bpf, Some(357)),
    denied!(perf_event_open, libc::SYS_perf_event_open, Some(336)),
    denied!(open_by_handle_at, libc::SYS_open_by_handle_at, Some(342)),
    denied!(quotactl, libc::SYS_quotactl, Some(131)),
    denied!(swapon, libc::SYS_swapon, Some(87)),
    denied!(swapoff, libc::SYS_swapoff, Some(115)),
    denied!(fanotify_init, libc::SYS_fanotify_init, Some(338)),
    denied!(fanotify_mark, libc::SYS_fanotify_mark, Some(339)),
    denied!(lookup_dcookie, libc::SYS_lookup_dcookie, Some(253)),
    // Obsolete calls, x86_64 numbers (never used by a current userland).
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "uselib",
        native: Some(134),
        i386: Some(86),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "ustat",
        native: Some(136),
        i386: Some(62),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "sysfs",
        native: Some(139),
        i386: Some(135),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "_sysctl",
        native: Some(156),
        i386: Some(149),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "create_module",
        native: Some(174),
        i386: Some(127),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "get_kernel_syms",
        native: Some(177),
        i386: Some(130),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "query_module",
        native: Some(178),
        i386: Some(167),
    },
    #[cfg(target_arch = "x86_64")]
    Denied {
        name: "nfsservctl",
        native: Some(180),
        i386: Some(169),
    },
];

// linux/audit.h
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 183 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
/// x86_64 calls with this bit set are x32 calls: refused as a whole.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const OFFSET_NR: u32 = 0; // struct seccomp_data { int nr; __u32 arch; ... }
const OFFSET_ARCH: u32 = 4;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
/// args[0] of struct seccomp_data, its low 32 bits (little-endian).
#[cfg(target_endian = "little")]
const OFFSET_ARG0_LOW: u32 = 16;
/// args[1], its low 32 bits: an ioctl's request (the kernel reads it as an
/// unsigned int, so the high bits do not matter).
#[cfg(target_endian = "little")]
const OFFSET_ARG1_LOW: u32 = 24;
/// ioctl(SIOCGSKNS): a descriptor of a socket's network namespace. A
/// socket berth's caller handed down (the journal's stream as stdout, say)
/// lives in the host's network namespace; with it, root in a machine of its
/// own network could setns(2) back into the host's. Refused everywhere.
const SIOCGSKNS: u32 = 0x894C;
const NATIVE_IOCTL: u32 = libc::SYS_ioctl as u32;
#[cfg(target_arch = "x86_64")]
const I386_IOCTL: u32 = 54;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: usize, jf: usize) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: jt.try_into().expect("BPF jump too long"),
        jf: jf.try_into().expect("BPF jump too long"),
        k,
    }
}

/// Where a jump of the filter goes, resolved when a block is laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Next,
    Allow,
    Deny,
    NoSys,
    Flags,
    Ioctl,
}

/// One instruction with symbolic jump targets.
struct Ins {
    code: u32,
    k: u32,
    jt: Label,
    jf: Label,
}

/// Numbers of the calls that create namespaces, on one ABI.
#[derive(Clone, Copy)]
pub struct NsCalls {
    pub clone: u32,
    pub unshare: u32,
    pub clone3: u32,
}

const NATIVE_NS_CALLS: NsCalls = NsCalls {
    clone: libc::SYS_clone as u32,
    unshare: libc::SYS_unshare as u32,
    clone3: libc::SYS_clone3 as u32,
};
/// i386 numbers, from the kernel's syscall_32.tbl.
#[cfg(target_arch = "x86_64")]
const I386_NS_CALLS: NsCalls = NsCalls {
    clone: 120,
    unshare: 310,
    clone3: 435,
};

/// One block: "if arch == ARCH { deny NRS with EPERM, allow the rest }".
///
/// With `ns` (a machine without a user namespace of its own), also: clone3
/// answers ENOSYS, so that libc falls back to clone(2), whose flags the
/// filter can see (clone3 passes them in memory, which seccomp cannot read;
/// glibc and systemd fall back on ENOSYS); and clone/unshare with
/// CLONE_NEWNS but without CLONE_NEWUSER answer EPERM. See
/// `rootfs::lock_mounts` for why: a mount namespace created by root of the
/// host's user namespace would be owned by it, and there the kernel lets
/// root mount a fresh, unmasked proc or sysfs. Together with CLONE_NEWUSER
/// the new mount namespace belongs to the new user namespace and stays
/// confined. systemd in the machine takes EPERM from unshare(CLONE_NEWNS) as
/// "containerized, no sandboxing" and starts the service without its mount
/// sandbox (its setup_namespace() maps EPERM to ENOANO for that).
fn arch_block(arch: u32, nrs: &[u32], x32_guard: bool, ioctl: u32, ns: Option<NsCalls>) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ld = |k| Ins {
        code: BPF_LD | BPF_W | BPF_ABS,
        k,
        jt: Label::Next,
        jf: Label::Next,
    };
    let jeq = |k, to| Ins {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        k,
        jt: to,
        jf: Label::Next,
    };
    let ret = |k| Ins {
        code: BPF_RET | BPF_K,
        k,
        jt: Label::Next,
        jf: Label::Next,
    };
    let mut body = vec![ld(OFFSET_NR)];
    if x32_guard {
        body.push(Ins {
            code: BPF_JMP | BPF_JGE | BPF_K,
            k: X32_BIT_OR_ZERO,
            jt: Label::Deny,
            jf: Label::Next,
        });
    }
    // The admin's denials first, so `~unshare` still denies all of it.
    body.extend(nrs.iter().map(|&nr| jeq(nr, Label::Deny)));
    body.push(jeq(ioctl, Label::Ioctl));
    if let Some(calls) = ns {
        body.push(jeq(calls.clone3, Label::NoSys));
        body.push(jeq(calls.unshare, Label::Flags));
        body.push(jeq(calls.clone, Label::Flags));
    }
    // Every jump of classic BPF goes forward: the checks fall through to
    // an allow, then come the flags block and the shared returns.
    body.push(ret(RET_ALLOW));
    let mut labels: Vec<(Label, usize)> = Vec::new();
    labels.push((Label::Ioctl, body.len()));
    body.push(ld(OFFSET_ARG1_LOW));
    body.push(Ins {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        k: SIOCGSKNS,
        jt: Label::Deny,
        jf: Label::Allow,
    });
    if ns.is_some() {
        // flags (the first argument of both calls, low 32 bits):
        // CLONE_NEWUSER -> allow; else CLONE_NEWNS -> deny; else allow.
        labels.push((Label::Flags, body.len()));
        body.push(ld(OFFSET_ARG0_LOW));
        body.push(Ins {
            code: BPF_JMP | BPF_JSET | BPF_K,
            k: libc::CLONE_NEWUSER as u32,
            jt: Label::Allow,
            jf: Label::Next,
        });
        body.push(Ins {
            code: BPF_JMP | BPF_JSET | BPF_K,
            k: libc::CLONE_NEWNS as u32,
            jt: Label::Deny,
            jf: Label::Allow,
        });
    }
    labels.push((Label::Allow, body.len()));
    body.push(ret(RET_ALLOW));
    labels.push((Label::Deny, body.len()));
    body.push(ret(RET_EPERM));
    if ns.is_some() {
        labels.push((Label::NoSys, body.len()));
        body.push(ret(RET_ENOSYS));
    }
    let target = |from: usize, to: Label| -> usize {
        match to {
            Label::Next => 0,
            l => {
                let at = labels.iter().find(|(x, _)| *x == l).expect("label laid out").1;
                at.checked_sub(from + 1).expect("seccomp jumps go forward")
            }
        }
    };
    let mut block = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, body.len()),
    ];
    block.extend(
        body.iter()
            .enumerate()
            .map(|(i, ins)| jump(ins.code, ins.k, target(i, ins.jt), target(i, ins.jf))),
    );
    block
}

#[cfg(target_arch = "x86_64")]
const X32_BIT_OR_ZERO: u32 = X32_SYSCALL_BIT;
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT_OR_ZERO: u32 = 0;

/// Calls `SystemCallFilter=` may name: the denied ones (to allow them again)
/// and those an admin may want to refuse (native numbers).
macro_rules! known {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name as i64)),*] };
}
pub const NAMEABLE: &[(&str, i64)] = known![
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_personality,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_chroot,
    SYS_unshare,
    SYS_setns,
    SYS_reboot,
    SYS_sethostname,
    SYS_setdomainname,
    SYS_clock_settime,
    SYS_settimeofday,
    SYS_adjtimex,
    SYS_clock_adjtime,
    SYS_acct,
    SYS_syslog,
    SYS_userfaultfd,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_mknod,
    SYS_mknodat,
    SYS_chown,
    SYS_fchown,
    SYS_fchownat,
    SYS_lchown,
    SYS_setuid,
    SYS_setgid,
    SYS_setreuid,
    SYS_setregid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_setgroups,
    SYS_capset,
    SYS_prctl,
    SYS_seccomp,
    SYS_ioperm,
    SYS_iopl,
    SYS_name_to_handle_at,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_pidfd_open,
    SYS_pidfd_getfd,
    SYS_kcmp,
    SYS_mbind,
    SYS_migrate_pages,
    SYS_move_pages,
    SYS_set_mempolicy,
    SYS_get_mempolicy,
    SYS_fsopen,
    SYS_fsmount,
    SYS_fsconfig,
    SYS_fspick,
    SYS_move_mount,
    SYS_open_tree,
    SYS_mount_setattr,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_add_key,
    SYS_request_key,
    SYS_keyctl,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_open_by_handle_at,
    SYS_quotactl,
    SYS_swapon,
    SYS_swapoff,
    SYS_fanotify_init,
    SYS_fanotify_mark,
    SYS_lookup_dcookie,
];

/// The native number of a call `SystemCallFilter=` may name.
pub fn number_of(name: &str) -> Option<i64> {
    NAMEABLE
        .iter()
        .find(|(n, _)| n.strip_prefix("SYS_") == Some(name))
        .map(|(_, nr)| *nr)
}

/// `SystemCallFilter=` words: `name` allows a call berth denies by default,
/// `~name` denies one more. Returns (allowed again, denied in addition).
pub fn adjustments(words: &[String]) -> (Vec<i64>, Vec<i64>) {
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for w in words {
        match w.strip_prefix('~') {
            Some(name) => deny.extend(number_of(name)),
            None => allow.extend(number_of(w)),
        }
    }
    (allow, deny)
}

/// The default filter of a machine without a user namespace of its own.
pub fn program() -> Vec<libc::sock_filter> {
    program_with(&[], &[], true)
}

/// The whole filter, with calls allowed again (`allow`, native numbers; the
/// i386 twin too) and calls denied in addition (`deny`, native ABI only).
/// Calls of an ABI not listed here are allowed: the filter cannot judge
/// numbers it does not know. `confine_ns`: see `arch_block`.
pub fn program_with(allow: &[i64], deny: &[i64], confine_ns: bool) -> Vec<libc::sock_filter> {
    let kept = |d: &&Denied| !d.native.is_some_and(|n| allow.contains(&n));
    let mut native: Vec<u32> = DENIED
        .iter()
        .filter(kept)
        .filter_map(|d| d.native)
        .map(|n| n as u32)
        .collect();
    native.extend(deny.iter().map(|n| *n as u32));
    let mut prog = arch_block(
        AUDIT_ARCH_NATIVE,
        &native,
        cfg!(target_arch = "x86_64"),
        NATIVE_IOCTL,
        confine_ns.then_some(NATIVE_NS_CALLS),
    );
    #[cfg(target_arch = "x86_64")]
    {
        let i386: Vec<u32> = DENIED
            .iter()
            .filter(kept)
            .filter_map(|d| d.i386)
            .map(|n| n as u32)
            .collect();
        prog.extend(arch_block(
            AUDIT_ARCH_I386,
            &i386,
            false,
            I386_IOCTL,
            confine_ns.then_some(I386_NS_CALLS),
        ));
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, RET_ALLOW));
    prog
}

pub fn install(allow: &[i64], deny: &[i64], confine_ns: bool) -> std::io::Result<()> {
    sys::install_seccomp_filter(&program_with(allow, deny, confine_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BPF interpreter for the subset `program` emits, so the filter's
    /// decisions are checked without installing it.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        run_with(prog, arch, nr, 0)
    }

    fn run_with(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        run_args(prog, arch, nr, arg0, 0)
    }

    fn run_args(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32, arg1: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            let code = ins.code as u32;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = match ins.k {
                        OFFSET_ARCH => arch,
                        OFFSET_NR => nr,
                        OFFSET_ARG0_LOW => arg0,
                        OFFSET_ARG1_LOW => arg1,
                        k => panic!("load of offset {k}"),
                    };
                    pc += 1;
                }
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                    pc += 1 + if acc & ins.k != 0 { ins.jt } else { ins.jf } as usize;
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += 1 + if acc == ins.k { ins.jt } else { ins.jf } as usize;
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += 1 + if acc >= ins.k { ins.jt } else { ins.jf } as usize;
                }
                c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
                other => panic!("unexpected BPF code {other:#x}"),
            }
        }
    }

    #[test]
    fn the_network_namespace_of_a_socket_is_refused_other_ioctls_pass() {
        for prog in [program(), program_with(&[], &[], false)] {
            let ioctl = libc::SYS_ioctl as u32;
            assert_eq!(run_args(&prog, AUDIT_ARCH_NATIVE, ioctl, 3, SIOCGSKNS), RET_EPERM);
            assert_eq!(
                run_args(&prog, AUDIT_ARCH_NATIVE, ioctl, 3, libc::TIOCGWINSZ as u32),
                RET_ALLOW
            );
            #[cfg(target_arch = "x86_64")]
            {
                assert_eq!(run_args(&prog, AUDIT_ARCH_I386, 54, 3, SIOCGSKNS), RET_EPERM);
                assert_eq!(run_args(&prog, AUDIT_ARCH_I386, 54, 3, 0x5401), RET_ALLOW);
            }
        }
    }

    #[test]
    fn denies_listed_allows_rest() {
        let prog = program();
        assert!(prog.len() < 256);
        for d in DENIED {
            if let Some(n) = d.native {
                assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, n as u32), RET_EPERM, "{}", d.name);
            }
        }
        for ok in [libc::SYS_read, libc::SYS_execve, libc::SYS_mount, libc::SYS_reboot] {
            assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, ok as u32), RET_ALLOW);
        }
        // An architecture the filter does not know is let through.
        assert_eq!(run(&prog, 0x1234, libc::SYS_kexec_load as u32), RET_ALLOW);
    }

    #[test]
    fn admin_adjustments() {
        let (allow, deny) = adjustments(&["keyctl".into(), "~ptrace".into(), "~nonsense".into()]);
        assert_eq!(
            (allow.clone(), deny.clone()),
            (vec![libc::SYS_keyctl], vec![libc::SYS_ptrace])
        );
        let prog = program_with(&allow, &deny, true);
        assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, libc::SYS_keyctl as u32), RET_ALLOW);
        assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, libc::SYS_ptrace as u32), RET_EPERM);
        assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, libc::SYS_bpf as u32), RET_EPERM);
        assert!(NAMEABLE.iter().all(|(n, _)| n.starts_with("SYS_")));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn compat_abis() {
        let prog = program();
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 283), RET_EPERM); // kexec_load
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 3), RET_ALLOW); // read
        let x32_read = X32_SYSCALL_BIT;
        assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, x32_read), RET_EPERM);
        // The namespace rule holds on the i386 ABI too.
        let newns = libc::CLONE_NEWNS as u32;
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 310, newns), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 120, newns), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 435, 0), RET_ENOSYS);
    }

    #[test]
    fn mount_namespaces_only_inside_a_new_user_namespace() {
        let prog = program();
        let (newns, newuser) = (libc::CLONE_NEWNS as u32, libc::CLONE_NEWUSER as u32);
        let unshare = libc::SYS_unshare as u32;
        let clone = libc::SYS_clone as u32;
        assert_eq!(run_with(&prog, AUDIT_ARCH_NATIVE, unshare, newns), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_NATIVE, clone, newns | 17), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_NATIVE, unshare, newns | newuser), RET_ALLOW);
        assert_eq!(
            run_with(&prog, AUDIT_ARCH_NATIVE, unshare, libc::CLONE_NEWNET as u32),
            RET_ALLOW
        );
        assert_eq!(run_with(&prog, AUDIT_ARCH_NATIVE, clone, 17), RET_ALLOW); // fork
        assert_eq!(
            run_with(&prog, AUDIT_ARCH_NATIVE, libc::SYS_clone3 as u32, 0),
            RET_ENOSYS
        );
        // The rest of the list still holds after the new checks.
        assert_eq!(
            run_with(&prog, AUDIT_ARCH_NATIVE, libc::SYS_kexec_load as u32, newns),
            RET_EPERM
        );
        // Inside a user namespace of its own, a machine may do all of it.
        let free = program_with(&[], &[], false);
        assert_eq!(run_with(&free, AUDIT_ARCH_NATIVE, unshare, newns), RET_ALLOW);
        assert_eq!(
            run_with(&free, AUDIT_ARCH_NATIVE, libc::SYS_clone3 as u32, 0),
            RET_ALLOW
        );
    }
}
