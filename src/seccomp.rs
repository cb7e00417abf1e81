//! The system-call filter of a machine: an allow list, installed in the init
//! just before execve.
//!
//! What a machine may call is what systemd-nspawn allows: systemd's groups
//! for ordinary services (`@default`, `@basic-io`, `@file-system`,
//! `@mount`, ...), a list of single calls, and a few groups and calls only
//! while the machine keeps the capability they need (`@clock` with
//! CAP_SYS_TIME, `ptrace` with CAP_SYS_PTRACE, ...). Left out on purpose:
//! kexec, module loading without CAP_SYS_MODULE, keyrings (not namespaced),
//! bpf, perf_event_open, open_by_handle_at, swap, quotas, fanotify and the
//! obsolete calls. `SystemCallFilter=` adds names or `@group`s, and takes
//! them away with `~`; a removal wins over everything.
//!
//! Answers, on every ABI the kernel runs for the machine's processes
//! (x86-64 and i386 through `int 0x80`; arm64 and 32-bit arm): a call the
//! number tables know but the list does not allow gets EPERM; a number the
//! tables do not know gets ENOSYS, which is what a program sees on an older
//! kernel, so it falls back instead of failing. x32 calls are refused as a
//! whole (EPERM). Foreign architectures cannot occur and are let through.
//!
//! Numbers come from the `syscalls` crate (tables generated from the
//! kernel's, one enum per ABI), so the i386 and arm tables need not be kept
//! by hand; only ARM's private calls (`set_tls`, `cacheflush`) are added here.
//!
//! Why not the seccompiler crate: its filters kill any process of a foreign
//! ABI (an i386 binary inside an amd64 machine would die), it does not guard
//! the x32 number space, it has no notion of "known but refused" against
//! "unknown", and its `apply_filter` sets no_new_privs, which would break su,
//! sudo and login inside the machine. Why not libseccomp: a C library and
//! its -dev package for a filter that is a table plus a small BPF tree.
//!
//! The program: per ABI, the numbers fall into runs of one answer (allow,
//! EPERM, ENOSYS, or a check of the arguments); a binary search over the
//! runs' starts with `JGE` ends in a return. Allowed calls lie in long
//! runs, so the default filter is ~400 instructions for both ABIs, far
//! under the kernel's 4096, and a call is decided within ~8 comparisons.

mod groups;

pub use groups::GROUPS;

use std::collections::{BTreeMap, BTreeSet};

use caps::Capability::{self, *};

use crate::sys;

/// What a machine may call, as systemd-nspawn has it: (the capability the
/// machine must keep, or None; names and groups).
const MACHINE: &[(Option<Capability>, &str)] = &[
    (
        None,
        "@aio @basic-io @chown @default @file-system @io-event @ipc @mount @network-io \
         @process @resources @sandbox @setuid @signal @sync @timer",
    ),
    (
        None,
        "arm_fadvise64_64 brk capget capset copy_file_range fadvise64 fadvise64_64 flock \
         get_mempolicy getcpu getpriority getrandom ioctl ioprio_get kcmp madvise mincore \
         mprotect mremap name_to_handle_at oldolduname olduname personality readahead \
         readdir remap_file_pages sched_get_priority_max sched_get_priority_min \
         sched_getaffinity sched_getattr sched_getparam sched_getscheduler \
         sched_rr_get_interval sched_rr_get_interval_time64 sched_yield sendfile sendfile64 \
         setdomainname setfsgid setfsgid32 setfsuid setfsuid32 sethostname setpgid setsid \
         splice sysinfo tee umask uname userfaultfd vmsplice",
    ),
    (Some(CAP_SYS_TIME), "@clock"),
    (Some(CAP_SYS_MODULE), "@module"),
    (Some(CAP_SYS_RAWIO), "@raw-io"),
    (Some(CAP_IPC_LOCK), "@memlock"),
    (Some(CAP_SYS_PACCT), "acct"),
    (Some(CAP_SYS_PTRACE), "process_vm_readv process_vm_writev ptrace"),
    (Some(CAP_SYS_BOOT), "reboot"),
    (Some(CAP_SYSLOG), "syslog"),
    (Some(CAP_SYS_TTY_CONFIG), "vhangup"),
];

/// An ABI the kernel runs for a process of this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    #[cfg(target_arch = "x86_64")]
    X86_64,
    /// i386 calls through `int 0x80` (or a 32-bit binary).
    #[cfg(target_arch = "x86_64")]
    I386,
    #[cfg(target_arch = "aarch64")]
    Aarch64,
    /// The 32-bit arm (EABI) compat ABI.
    #[cfg(target_arch = "aarch64")]
    Arm,
}

// linux/audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_ARM: u32 = 40 | 0x4000_0000;
/// x86-64 calls with this bit set are x32 calls: refused as a whole.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// ARM's private calls (arch/arm/include/uapi/asm/unistd.h,
/// __ARM_NR_BASE + n), which the crate's arm table leaves out, and the name
/// systemd and libseccomp use for arm's call 341.
#[cfg(target_arch = "aarch64")]
const ARM_EXTRA: &[(&str, u32)] = &[
    ("breakpoint", 0x0f_0001),
    ("cacheflush", 0x0f_0002),
    ("usr26", 0x0f_0003),
    ("usr32", 0x0f_0004),
    ("set_tls", 0x0f_0005),
    ("get_tls", 0x0f_0006),
    ("sync_file_range2", 341),
];

/// (name, number) of every call of one `syscalls` table.
macro_rules! table {
    ($arch:ident) => {{
        use syscalls::$arch::Sysno;
        Sysno::iter()
            // The crate's iter() (0.8.1) stops before the last call.
            .chain(std::iter::once(Sysno::last()))
            // `break` is spelt `r#break` in the enum.
            .map(|s| (s.name().trim_start_matches("r#"), s.id() as u32))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect::<Vec<_>>()
    }};
}

impl Abi {
    /// The ABIs of this build, native first.
    #[cfg(target_arch = "x86_64")]
    pub const ALL: &'static [Abi] = &[Abi::X86_64, Abi::I386];
    #[cfg(target_arch = "aarch64")]
    pub const ALL: &'static [Abi] = &[Abi::Aarch64, Abi::Arm];

    /// The value of `seccomp_data.arch` for calls of this ABI.
    pub fn audit_arch(self) -> u32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Abi::X86_64 => AUDIT_ARCH_X86_64,
            #[cfg(target_arch = "x86_64")]
            Abi::I386 => AUDIT_ARCH_I386,
            #[cfg(target_arch = "aarch64")]
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
            #[cfg(target_arch = "aarch64")]
            Abi::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// Every call this ABI knows, by name; a number may have two names.
    pub fn table(self) -> Vec<(&'static str, u32)> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Abi::X86_64 => table!(x86_64),
            #[cfg(target_arch = "x86_64")]
            Abi::I386 => table!(x86),
            #[cfg(target_arch = "aarch64")]
            Abi::Aarch64 => table!(aarch64),
            #[cfg(target_arch = "aarch64")]
            Abi::Arm => {
                let mut t = table!(arm);
                t.extend_from_slice(ARM_EXTRA);
                t
            }
        }
    }

    /// The number of `name` on this ABI.
    pub fn number(self, name: &str) -> Option<u32> {
        self.table().into_iter().find(|(n, _)| *n == name).map(|(_, nr)| nr)
    }
}

/// The members of group `name` ("@mount"), nested groups expanded; None
/// for a group berth does not know.
fn group_members(name: &str, out: &mut BTreeSet<String>) -> Option<()> {
    if name == "@known" {
        for abi in Abi::ALL {
            out.extend(abi.table().into_iter().map(|(n, _)| n.to_string()));
        }
        return Some(());
    }
    let (_, members) = GROUPS.iter().find(|(g, _)| *g == name)?;
    for m in members.split_whitespace() {
        if m.starts_with('@') {
            group_members(m, out)?;
        } else {
            out.insert(m.to_string());
        }
    }
    Some(())
}

/// Whether `SystemCallFilter=` may name `word` (without its `~`): a group
/// berth knows, or a call that one of this build's ABIs knows.
pub fn is_known(word: &str) -> bool {
    if word.starts_with('@') {
        group_members(word, &mut BTreeSet::new()).is_some()
    } else {
        Abi::ALL.iter().any(|abi| abi.number(word).is_some())
    }
}

/// The names `word` stands for; unknown words stand for nothing (the
/// config parser has refused them already).
fn expand(word: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if word.starts_with('@') {
        group_members(word, &mut out);
    } else {
        out.insert(word.to_string());
    }
    out
}

/// What one machine may call, by name, for every ABI alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeSet<String>,
    /// The machine has no user namespace of its own: see `Answer::NsFlags`.
    confine_ns: bool,
}

impl Policy {
    /// nspawn's list for a machine keeping `kept`, with the admin's
    /// `SystemCallFilter=` words (`name`, `@group`; `~` before either
    /// refuses it, whatever else allows it).
    pub fn new(kept: &[Capability], words: &[String], confine_ns: bool) -> Policy {
        let mut allowed = BTreeSet::new();
        for (cap, names) in MACHINE {
            if cap.is_none_or(|c| kept.contains(&c)) {
                allowed.extend(names.split_whitespace().flat_map(expand));
            }
        }
        let mut refused = BTreeSet::new();
        for w in words {
            match w.strip_prefix('~') {
                Some(w) => refused.extend(expand(w)),
                None => allowed.extend(expand(w)),
            }
        }
        allowed.retain(|n| !refused.contains(n));
        Policy { allowed, confine_ns }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.allowed.contains(name)
    }
}

/// The answer to one call number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Allow,
    /// Known, not allowed.
    Perm,
    /// Not known; also clone3 wherever it is not plainly allowed (below).
    NoSys,
    /// ioctl: refused for SIOCGSKNS, allowed otherwise.
    Ioctl,
    /// clone and unshare of a machine without a user namespace of its own:
    /// refused with CLONE_NEWNS but without CLONE_NEWUSER.
    NsFlags,
}

/// The answer to each number `abi` knows, by number.
///
/// ioctl(SIOCGSKNS) gives a descriptor of a socket's network namespace. A
/// socket berth's caller handed down (the journal's stream as stdout, say)
/// lives in the host's network namespace; with it, root in a machine of its
/// own network could setns(2) back into the host's. Refused everywhere.
///
/// With `confine_ns` (a machine without a user namespace of its own): clone3
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
/// sandbox (its setup_namespace() maps EPERM to ENOANO for that). clone3
/// refused by the admin answers ENOSYS too, so that libc still falls back.
fn answers(policy: &Policy, abi: Abi) -> BTreeMap<u32, Answer> {
    let mut out: BTreeMap<u32, Answer> = BTreeMap::new();
    for (name, nr) in abi.table() {
        let allowed = policy.allows(name);
        let answer = match name {
            "ioctl" if allowed => Answer::Ioctl,
            "clone" | "unshare" if allowed && policy.confine_ns => Answer::NsFlags,
            "clone3" if !allowed || policy.confine_ns => Answer::NoSys,
            _ if allowed => Answer::Allow,
            _ => Answer::Perm,
        };
        // Of two names of one number, the one allowed decides.
        let slot = out.entry(nr).or_insert(answer);
        if *slot == Answer::Perm {
            *slot = answer;
        }
    }
    out
}

/// Runs of numbers with one answer: (first number, answer), from 0 up to
/// u32::MAX, the gaps and the numbers past the table answering ENOSYS.
fn runs(answers: &BTreeMap<u32, Answer>) -> Vec<(u32, Answer)> {
    fn push(runs: &mut Vec<(u32, Answer)>, from: u32, a: Answer) {
        if runs.last().map(|(_, last)| *last) != Some(a) {
            runs.push((from, a));
        }
    }
    let mut runs = Vec::new();
    let mut next = 0u32;
    for (&nr, &a) in answers {
        if nr != next {
            push(&mut runs, next, Answer::NoSys);
        }
        push(&mut runs, nr, a);
        next = nr + 1;
    }
    push(&mut runs, next, Answer::NoSys);
    runs
}

// struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// args[0], its low 32 bits (little-endian).
#[cfg(target_endian = "little")]
const OFFSET_ARG0_LOW: u32 = 16;
/// args[1], its low 32 bits: an ioctl's request (the kernel reads it as an
/// unsigned int, so the high bits do not matter).
#[cfg(target_endian = "little")]
const OFFSET_ARG1_LOW: u32 = 24;
const SIOCGSKNS: u32 = 0x894C;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn ret(k: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

fn load(offset: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

/// An unconditional jump over `n` instructions (32-bit offset).
fn skip(n: usize) -> libc::sock_filter {
    stmt(
        libc::BPF_JMP | libc::BPF_JA,
        n.try_into().expect("seccomp program too long"),
    )
}

/// The instructions that end in the answer `a` (the number is decided).
fn leaf(a: Answer) -> Vec<libc::sock_filter> {
    use libc::{BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K};
    match a {
        Answer::Allow => vec![ret(RET_ALLOW)],
        Answer::Perm => vec![ret(RET_EPERM)],
        Answer::NoSys => vec![ret(RET_ENOSYS)],
        Answer::Ioctl => vec![
            load(OFFSET_ARG1_LOW),
            jump(BPF_JMP | BPF_JEQ | BPF_K, SIOCGSKNS, 0, 1),
            ret(RET_EPERM),
            ret(RET_ALLOW),
        ],
        // flags, the first argument of both calls: CLONE_NEWUSER -> allow;
        // else CLONE_NEWNS -> EPERM; else allow.
        Answer::NsFlags => vec![
            load(OFFSET_ARG0_LOW),
            jump(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_NEWUSER as u32, 2, 0),
            jump(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_NEWNS as u32, 0, 1),
            ret(RET_EPERM),
            ret(RET_ALLOW),
        ],
    }
}

/// A binary search over `runs` (the number is in the accumulator): each
/// node is "number >= start of the upper half?", the lower half follows it
/// and the upper half after that. A lower half longer than a conditional
/// jump reaches (255) is stepped over by an unconditional one.
fn search(runs: &[(u32, Answer)]) -> Vec<libc::sock_filter> {
    if let [(_, a)] = runs {
        return leaf(*a);
    }
    let mid = runs.len() / 2;
    let (lower, upper) = (search(&runs[..mid]), search(&runs[mid..]));
    let jge = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    let mut out = Vec::with_capacity(lower.len() + upper.len() + 2);
    match u8::try_from(lower.len()) {
        Ok(n) => out.push(jump(jge, runs[mid].0, n, 0)),
        Err(_) => {
            out.push(jump(jge, runs[mid].0, 0, 1));
            out.push(skip(lower.len()));
        }
    }
    out.extend(lower);
    out.extend(upper);
    out
}

/// The block of one ABI: the number's answer, decided.
fn abi_block(policy: &Policy, abi: Abi) -> Vec<libc::sock_filter> {
    let mut block = vec![load(OFFSET_NR)];
    #[cfg(target_arch = "x86_64")]
    if abi == Abi::X86_64 {
        block.push(jump(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_SYSCALL_BIT, 0, 1));
        block.push(ret(RET_EPERM));
    }
    block.extend(search(&runs(&answers(policy, abi))));
    block
}

/// The whole filter: a dispatch on the ABI, then one block per ABI.
pub fn program(policy: &Policy) -> Vec<libc::sock_filter> {
    let blocks: Vec<_> = Abi::ALL.iter().map(|&abi| abi_block(policy, abi)).collect();
    // ld arch; per ABI: "jeq ARCH, next, skip the ja"; "ja BLOCK"; then
    // allow a foreign arch; then the blocks.
    let mut prog = vec![load(OFFSET_ARCH)];
    let dispatch_len = 2 * blocks.len() + 1;
    let mut block_at = dispatch_len + 1; // index of the first block
    for (i, (abi, block)) in Abi::ALL.iter().zip(&blocks).enumerate() {
        prog.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            abi.audit_arch(),
            0,
            1,
        ));
        let ja_at = 1 + 2 * i + 1;
        prog.push(skip(block_at - (ja_at + 1)));
        block_at += block.len();
    }
    prog.push(ret(RET_ALLOW));
    for block in blocks {
        prog.extend(block);
    }
    prog
}

/// A policy's filter, compiled by the supervisor; the child only installs
/// it (nothing between clone and exec walks the tables or can panic here).
#[derive(Clone)]
pub struct Filter(Vec<libc::sock_filter>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions)", self.0.len())
    }
}

impl Filter {
    pub fn new(policy: &Policy) -> Filter {
        Filter(program(policy))
    }

    pub fn install(&self) -> std::io::Result<()> {
        sys::install_seccomp_filter(&self.0)
    }
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
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += 1 + ins.k as usize,
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

    fn default_policy() -> Policy {
        Policy::new(crate::caps::KEPT, &[], true)
    }

    fn nr(abi: Abi, name: &str) -> u32 {
        abi.number(name).unwrap_or_else(|| panic!("{name} on {abi:?}"))
    }

    /// The answer of `prog` to `name` (flags 0) on `abi`.
    fn answer(prog: &[libc::sock_filter], abi: Abi, name: &str) -> u32 {
        run(prog, abi.audit_arch(), nr(abi, name))
    }

    #[test]
    fn every_known_call_gets_its_answer_on_every_abi() {
        let policy = default_policy();
        let prog = program(&policy);
        // The kernel takes 4096; a filter this size would be a mistake.
        assert!(prog.len() < 1024, "{} instructions", prog.len());
        for &abi in Abi::ALL {
            let answers = answers(&policy, abi);
            for (name, nr) in abi.table() {
                let got = run(&prog, abi.audit_arch(), nr);
                let want = match answers[&nr] {
                    Answer::Allow | Answer::Ioctl | Answer::NsFlags => RET_ALLOW,
                    Answer::Perm => RET_EPERM,
                    Answer::NoSys => RET_ENOSYS,
                };
                assert_eq!(got, want, "{name} ({nr}) on {abi:?}");
            }
        }
    }

    #[test]
    fn allowed_refused_and_unknown() {
        let prog = program(&default_policy());
        for &abi in Abi::ALL {
            for ok in ["read", "execve", "mount", "reboot", "ptrace", "mprotect", "getrandom"] {
                assert_eq!(answer(&prog, abi, ok), RET_ALLOW, "{ok} on {abi:?}");
            }
            for no in [
                "kexec_load",
                "init_module",
                "finit_module",
                "delete_module",
                "add_key",
                "request_key",
                "keyctl",
                "bpf",
                "perf_event_open",
                "open_by_handle_at",
                "quotactl",
                "swapon",
                "swapoff",
                "fanotify_init",
                "fanotify_mark",
                "lookup_dcookie",
                "settimeofday",
                "clock_settime",
                "syslog",
                "pidfd_getfd",
            ] {
                assert_eq!(answer(&prog, abi, no), RET_EPERM, "{no} on {abi:?}");
            }
            // The table's last call (file_setattr in Linux 6.17) is known.
            let (last_name, last_nr) = abi
                .table()
                .into_iter()
                .filter(|(_, nr)| *nr < 0x1000)
                .max_by_key(|(_, nr)| *nr)
                .unwrap();
            assert_eq!(
                run(&prog, abi.audit_arch(), last_nr),
                RET_EPERM,
                "{last_name} on {abi:?}"
            );
            assert!(last_nr >= nr(abi, "mseal"), "{last_name} on {abi:?}");
            // Numbers no table knows: past the end, and a gap.
            let last = abi
                .table()
                .iter()
                .map(|(_, nr)| *nr)
                .filter(|nr| *nr < 0x1000)
                .max()
                .unwrap();
            assert_eq!(run(&prog, abi.audit_arch(), last + 1), RET_ENOSYS, "{abi:?}");
            assert_eq!(run(&prog, abi.audit_arch(), 4000), RET_ENOSYS, "{abi:?}");
        }
        // An architecture the kernel does not run here is let through.
        assert_eq!(run(&prog, 0x1234, libc::SYS_kexec_load as u32), RET_ALLOW);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_numbers_and_the_x32_bit() {
        let prog = program(&default_policy());
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 283), RET_EPERM); // kexec_load
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 3), RET_ALLOW); // read
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 102), RET_ALLOW); // socketcall
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 243), RET_ALLOW); // set_thread_area
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 17), RET_EPERM); // break
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 500), RET_ENOSYS);
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 86), RET_EPERM); // uselib
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 134), RET_EPERM); // uselib
                                                                   // x32: refused as a whole, read (0) and an unknown number alike.
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), RET_EPERM);
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 999), RET_EPERM);
        // The namespace rule holds on the i386 ABI too.
        let newns = libc::CLONE_NEWNS as u32;
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 310, newns), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 120, newns), RET_EPERM);
        assert_eq!(run_with(&prog, AUDIT_ARCH_I386, 435, 0), RET_ENOSYS);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn arm_compat_numbers() {
        let prog = program(&default_policy());
        assert_eq!(run(&prog, AUDIT_ARCH_ARM, 0x0f_0005), RET_ALLOW); // set_tls
        assert_eq!(run(&prog, AUDIT_ARCH_ARM, 0x0f_0001), RET_EPERM); // breakpoint
        assert_eq!(run(&prog, AUDIT_ARCH_ARM, 0x0f_0100), RET_ENOSYS);
        assert_eq!(run(&prog, AUDIT_ARCH_ARM, 341), RET_ALLOW); // sync_file_range2
    }

    #[test]
    fn the_network_namespace_of_a_socket_is_refused_other_ioctls_pass() {
        for confine in [true, false] {
            let prog = program(&Policy::new(crate::caps::KEPT, &[], confine));
            for &abi in Abi::ALL {
                let (arch, ioctl) = (abi.audit_arch(), nr(abi, "ioctl"));
                assert_eq!(run_args(&prog, arch, ioctl, 3, SIOCGSKNS), RET_EPERM);
                assert_eq!(run_args(&prog, arch, ioctl, 3, libc::TIOCGWINSZ as u32), RET_ALLOW);
            }
        }
        // ioctl refused by the admin is refused whatever the request.
        let prog = program(&Policy::new(crate::caps::KEPT, &["~ioctl".into()], true));
        for &abi in Abi::ALL {
            let (arch, ioctl) = (abi.audit_arch(), nr(abi, "ioctl"));
            assert_eq!(run_args(&prog, arch, ioctl, 3, libc::TIOCGWINSZ as u32), RET_EPERM);
        }
    }

    #[test]
    fn capabilities_the_machine_keeps_open_their_calls() {
        let prog = program(&default_policy());
        let mut kept = crate::caps::KEPT.to_vec();
        kept.extend([CAP_SYS_TIME, CAP_SYSLOG, CAP_SYS_MODULE]);
        kept.retain(|c| *c != CAP_SYS_PTRACE && *c != CAP_SYS_BOOT);
        let more = program(&Policy::new(&kept, &[], true));
        for &abi in Abi::ALL {
            for call in ["settimeofday", "clock_adjtime", "syslog", "init_module"] {
                assert_eq!(answer(&prog, abi, call), RET_EPERM, "{call} on {abi:?}");
                assert_eq!(answer(&more, abi, call), RET_ALLOW, "{call} on {abi:?}");
            }
            // process_vm_readv stays: systemd's @ipc holds it too.
            for call in ["ptrace", "reboot"] {
                assert_eq!(answer(&more, abi, call), RET_EPERM, "{call} on {abi:?}");
            }
            // kexec stays refused: nspawn opens only reboot for CAP_SYS_BOOT.
            assert_eq!(answer(&prog, abi, "kexec_load"), RET_EPERM);
        }
    }

    #[test]
    fn groups_expand_with_systemds_members() {
        let mut clock = BTreeSet::new();
        group_members("@clock", &mut clock).unwrap();
        assert_eq!(
            clock.into_iter().collect::<Vec<_>>(),
            [
                "adjtimex",
                "clock_adjtime",
                "clock_adjtime64",
                "clock_settime",
                "clock_settime64",
                "settimeofday"
            ]
        );
        // Nested groups: @privileged holds @chown and @reboot.
        let privileged = expand("@privileged");
        assert!(privileged.contains("fchownat") && privileged.contains("kexec_load"));
        assert!(expand("@system-service").contains("epoll_wait"));
        assert!(expand("@known").contains("read"));
        // Every group's members name calls of this build's ABIs (a typo
        // would be an unknown call everywhere), but for calls of other
        // architectures.
        #[cfg(target_arch = "x86_64")]
        {
            let foreign = "arm_fadvise64_64 cacheflush pciconfig_iobase pciconfig_read \
                           pciconfig_write recv riscv_flush_icache riscv_hwprobe rtas \
                           s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr send set_tls \
                           subpage_prot swapcontext switch_endian sync_file_range2 \
                           sys_debug_setcontext";
            for (group, members) in GROUPS {
                for m in members.split_whitespace() {
                    assert!(
                        is_known(m) || foreign.split(' ').any(|f| f == m),
                        "{group}: {m} is no call of this build"
                    );
                }
            }
        }
        for word in ["@mount", "@system-service", "@known", "@sandbox", "read", "@obsolete"] {
            assert!(is_known(word), "{word}");
        }
        for word in ["@nonsense", "nonsense", "@", ""] {
            assert!(!is_known(word), "{word}");
        }
    }

    #[test]
    fn admin_additions_and_removals_apply_on_every_abi() {
        let words: Vec<String> = ["keyctl", "@clock", "~ptrace", "~@mount", "~personality"]
            .map(String::from)
            .to_vec();
        let prog = program(&Policy::new(crate::caps::KEPT, &words, true));
        for &abi in Abi::ALL {
            for call in ["keyctl", "settimeofday", "adjtimex"] {
                assert_eq!(answer(&prog, abi, call), RET_ALLOW, "{call} on {abi:?}");
            }
            for call in ["ptrace", "mount", "umount2", "pivot_root", "personality"] {
                assert_eq!(answer(&prog, abi, call), RET_EPERM, "{call} on {abi:?}");
            }
            assert_eq!(answer(&prog, abi, "bpf"), RET_EPERM);
            assert_eq!(answer(&prog, abi, "read"), RET_ALLOW);
        }
        // A removal wins over an addition, whatever the order.
        let both = Policy::new(crate::caps::KEPT, &["~keyctl".into(), "keyctl".into()], true);
        assert!(!both.allows("keyctl"));
        // Refusing clone3 keeps ENOSYS, so that libc falls back to clone.
        let prog = program(&Policy::new(crate::caps::KEPT, &["~clone3".into()], false));
        for &abi in Abi::ALL {
            assert_eq!(answer(&prog, abi, "clone3"), RET_ENOSYS);
        }
    }

    #[test]
    fn mount_namespaces_only_inside_a_new_user_namespace() {
        let prog = program(&default_policy());
        let (newns, newuser) = (libc::CLONE_NEWNS as u32, libc::CLONE_NEWUSER as u32);
        for &abi in Abi::ALL {
            let arch = abi.audit_arch();
            let (unshare, clone) = (nr(abi, "unshare"), nr(abi, "clone"));
            assert_eq!(run_with(&prog, arch, unshare, newns), RET_EPERM);
            assert_eq!(run_with(&prog, arch, clone, newns | 17), RET_EPERM);
            assert_eq!(run_with(&prog, arch, unshare, newns | newuser), RET_ALLOW);
            assert_eq!(run_with(&prog, arch, unshare, libc::CLONE_NEWNET as u32), RET_ALLOW);
            assert_eq!(run_with(&prog, arch, clone, 17), RET_ALLOW); // fork
            assert_eq!(run_with(&prog, arch, nr(abi, "clone3"), 0), RET_ENOSYS);
            assert_eq!(run_with(&prog, arch, nr(abi, "kexec_load"), newns), RET_EPERM);
        }
        // Inside a user namespace of its own, a machine may do all of it.
        let free = program(&Policy::new(crate::caps::KEPT, &[], false));
        for &abi in Abi::ALL {
            let arch = abi.audit_arch();
            assert_eq!(run_with(&free, arch, nr(abi, "unshare"), newns), RET_ALLOW);
            assert_eq!(run_with(&free, arch, nr(abi, "clone3"), 0), RET_ALLOW);
        }
    }

    #[test]
    fn long_lower_halves_are_stepped_over() {
        // Alternating answers: every number its own run, so the search
        // tree's lower halves outgrow an 8-bit jump.
        let answers: BTreeMap<u32, Answer> = (0..600)
            .map(|n| (n, if n % 2 == 0 { Answer::Allow } else { Answer::Perm }))
            .collect();
        let mut prog = vec![load(OFFSET_NR)];
        prog.extend(search(&runs(&answers)));
        assert!(prog.len() > 1024);
        for n in 0..600 {
            let want = if n % 2 == 0 { RET_ALLOW } else { RET_EPERM };
            assert_eq!(run(&prog, 0, n), want, "{n}");
        }
        assert_eq!(run(&prog, 0, 600), RET_ENOSYS);
    }
}
