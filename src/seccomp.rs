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

/// One block: "if arch == ARCH { deny NRS with EPERM, allow the rest }".
fn arch_block(arch: u32, nrs: &[u32], x32_guard: bool) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // Body: ld nr; [jge x32 -> deny]; jeq nr_i -> deny ...; ret allow; deny: ret eperm
    let checks = nrs.len() + usize::from(x32_guard);
    let mut body = vec![stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_NR)];
    // Distance from check i (0-based) to the deny instruction: the remaining
    // checks after it, plus the allow.
    let mut i = 0;
    if x32_guard {
        body.push(jump(BPF_JMP | BPF_JGE | BPF_K, X32_BIT_OR_ZERO, checks - i, 0));
        i += 1;
    }
    for &nr in nrs {
        body.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, checks - i, 0));
        i += 1;
    }
    body.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
    body.push(stmt(BPF_RET | BPF_K, RET_EPERM));
    let mut block = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, body.len()),
    ];
    block.extend(body);
    block
}

#[cfg(target_arch = "x86_64")]
const X32_BIT_OR_ZERO: u32 = X32_SYSCALL_BIT;
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT_OR_ZERO: u32 = 0;

/// The whole filter. Calls of an ABI not listed here are allowed: the filter
/// cannot judge numbers it does not know.
pub fn program() -> Vec<libc::sock_filter> {
    let native: Vec<u32> = DENIED.iter().filter_map(|d| d.native).map(|n| n as u32).collect();
    let mut prog = arch_block(AUDIT_ARCH_NATIVE, &native, cfg!(target_arch = "x86_64"));
    #[cfg(target_arch = "x86_64")]
    {
        let i386: Vec<u32> = DENIED.iter().filter_map(|d| d.i386).map(|n| n as u32).collect();
        prog.extend(arch_block(AUDIT_ARCH_I386, &i386, false));
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, RET_ALLOW));
    prog
}

pub fn install() -> std::io::Result<()> {
    sys::install_seccomp_filter(&program())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BPF interpreter for the subset `program` emits, so the filter's
    /// decisions are checked without installing it.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            let code = ins.code as u32;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = if ins.k == OFFSET_ARCH { arch } else { nr };
                    pc += 1;
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn compat_abis() {
        let prog = program();
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 283), RET_EPERM); // kexec_load
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 3), RET_ALLOW); // read
        let x32_read = X32_SYSCALL_BIT;
        assert_eq!(run(&prog, AUDIT_ARCH_NATIVE, x32_read), RET_EPERM);
    }
}
