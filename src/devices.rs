//! The device policy of a machine berth starts on its own (no systemd unit
//! around it): which device nodes root inside the machine may create
//! (mknod) and open.
//!
//! Without a user namespace, root in the machine is real root with
//! CAP_MKNOD: nothing but this policy stops it from making a node of the
//! host's disk (or /dev/mem, /dev/kmsg) and opening it. Allowed, and
//! nothing else:
//! - the nodes berth creates in the machine's /dev (`rootfs::DEVICE_NODES`:
//!   null, zero, full, random, urandom, tty, net/tun), read, write and
//!   mknod: the machine's systemd recreates them for services with
//!   PrivateDevices=;
//! - c 5:2, ptmx (the machine's /dev/ptmx leads to its own devpts
//!   instance), read, write and mknod;
//! - the pty slaves, majors 136-143 with any minor, read and write: the
//!   machine's /dev/pts, and its /dev/console, a pty slave of the host's
//!   bind-mounted there;
//! - c 0:0 and b 0:0, mknod only: the mode-0 "inaccessible" nodes in
//!   /run/host/inaccessible that berth makes and the machine's systemd
//!   masks paths with (no driver has these numbers, and the kernel checks
//!   no device policy when a node of 0:0 is opened).
//!
//! That is the set systemd gives a unit with `DevicePolicy=closed`
//! (null, zero, full, random, urandom, tty, ptmx and its inaccessible
//! nodes) plus what units/machine@.service and the scope properties add
//! (`DeviceAllow=/dev/net/tun rwm`, `DeviceAllow=char-pts rw`), so a
//! machine sees the same devices with systemd and without. The host's
//! console (c 5:1) is not among them: the machine's console is a pty.
//!
//! How: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, attached with
//! `BPF_F_ALLOW_MULTI` to the machine's scope, the cgroup above the payload
//! cgroup where the machine's cgroup namespace is rooted. The machine cannot
//! reach the scope, so it cannot detach the program; every cgroup below
//! inherits it; programs the machine's systemd attaches further down can
//! only restrict more (with ALLOW_MULTI, all must allow). Nothing to undo:
//! the program goes with the scope when berth removes it, and a scope left
//! by a killed berth is removed (program and all) before the next start
//! (`cgroup::prepare`), whose scope is a new directory.
//!
//! The program is a few dozen instructions assembled here: the crates that
//! assemble eBPF (aya, libbpf-rs, redbpf) bring an ELF loader, BTF and maps
//! for a program that compares three numbers; the bpf(2) calls are in
//! `sys`.
//!
//! Under a systemd unit (machine@NAME.service, or machined's scope) systemd
//! itself attaches such a program for `DevicePolicy=closed`; berth adds
//! none there: that cgroup and its programs are systemd's, which replaces
//! its own on a reload and would never see or remove one of berth's (an
//! admin who removes DevicePolicy= from the unit means it).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::sys::{self, BpfInsn};
use crate::util::os_error;

/// Access bits (`BPF_DEVCG_ACC_*`), in the high 16 bits of `access_type`.
pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = READ | WRITE | MKNOD;

/// Device types (`BPF_DEVCG_DEV_*`), in the low 16 bits of `access_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Block = 1,
    Char = 2,
}

/// One allowed group of devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    /// First and last major.
    pub majors: (u32, u32),
    /// None: any minor.
    pub minor: Option<u32>,
    /// What may be done (MKNOD | READ | WRITE).
    pub access: u32,
}

const fn one(kind: Kind, major: u32, minor: u32, access: u32) -> Rule {
    Rule {
        kind,
        majors: (major, major),
        minor: Some(minor),
        access,
    }
}

/// What a systemd unit or scope allows on top of `DevicePolicy=closed`
/// (systemd's own set: null, zero, full, random, urandom, tty, ptmx and the
/// inaccessible nodes): the scope properties use this list, and
/// units/machine@.service says the same (a test compares them).
pub const SYSTEMD_DEVICE_ALLOW: &[(&str, &str)] = &[("/dev/net/tun", "rwm"), ("char-pts", "rw")];

/// Allowed besides `rootfs::DEVICE_NODES` (see the module's doc).
const MORE: &[Rule] = &[
    one(Kind::Char, 5, 2, RWM),
    Rule {
        kind: Kind::Char,
        majors: (136, 143),
        minor: None,
        access: READ | WRITE,
    },
    one(Kind::Char, 0, 0, MKNOD),
    one(Kind::Block, 0, 0, MKNOD),
];

/// The whole policy: every node berth creates, then `MORE`.
pub fn rules() -> Vec<Rule> {
    crate::rootfs::DEVICE_NODES
        .iter()
        .map(|&(_, major, minor)| one(Kind::Char, major as u32, minor as u32, RWM))
        .chain(MORE.iter().copied())
        .collect()
}

/// Why the policy could not be put in place, naming the cgroup, in one
/// line. (The OS error is part of the text, not a `source`: printed as the
/// error's chain it would appear twice.)
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cgroup {}: opening it for the device policy: {}", cgroup.display(), os_error(error))]
    Open { cgroup: PathBuf, error: std::io::Error },
    #[error("cgroup {}: the kernel refused berth's device program (BPF_PROG_TYPE_CGROUP_DEVICE): {}{}", cgroup.display(), os_error(error), why_refused(log))]
    Load {
        cgroup: PathBuf,
        error: std::io::Error,
        log: String,
    },
    #[error("cgroup {}: cannot attach berth's device program: {}", cgroup.display(), os_error(error))]
    Attach { cgroup: PathBuf, error: std::io::Error },
}

/// The verifier's reason (its last line before the statistics), or, with
/// no log at all, the likely one.
fn why_refused(log: &str) -> String {
    match log
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time"))
    {
        Some(reason) => format!(" (verifier: {reason})"),
        None => " (does this kernel have CONFIG_CGROUP_BPF?)".to_string(),
    }
}

/// The program's name, as bpftool shows it.
pub const PROGRAM_NAME: &str = "berth_devices";

/// Load the policy's program and attach it to `cgroup` (a cgroup2
/// directory), so that its processes and every cgroup below it may use
/// only the devices of `rules()`.
pub fn restrict(cgroup: &Path) -> Result<(), DeviceError> {
    attach(cgroup, &assemble(&rules()))
}

fn attach(cgroup: &Path, program: &[BpfInsn]) -> Result<(), DeviceError> {
    let dir = std::fs::File::open(cgroup).map_err(|error| DeviceError::Open {
        cgroup: cgroup.into(),
        error,
    })?;
    // berth's own licence: the program calls no kernel helper, so none
    // that is GPL-only.
    let license = std::ffi::CString::new(env!("CARGO_PKG_LICENSE")).expect("a licence without NUL");
    let loaded = match sys::bpf_prog_load(
        sys::BPF_PROG_TYPE_CGROUP_DEVICE,
        program,
        &license,
        PROGRAM_NAME,
        &mut [],
    ) {
        Ok(fd) => fd,
        Err(error) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            let _ = sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_CGROUP_DEVICE,
                program,
                &license,
                PROGRAM_NAME,
                &mut log,
            );
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err(DeviceError::Load {
                cgroup: cgroup.into(),
                error,
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            });
        }
    };
    sys::bpf_prog_attach(
        dir.as_fd(),
        loaded.as_fd(),
        sys::BPF_CGROUP_DEVICE,
        sys::BPF_F_ALLOW_MULTI,
    )
    .map_err(|error| DeviceError::Attach {
        cgroup: cgroup.into(),
        error,
    })
    // The attachment holds the program; our descriptor can go.
}

// eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_MOV_X: u8 = 0xbc; // dst = (u32) src
const ALU32_AND_K: u8 = 0x54; // dst = (u32) dst & imm
const ALU32_RSH_K: u8 = 0x74; // dst = (u32) dst >> imm
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JGT_K: u8 = 0x25; // if dst > imm (unsigned): pc += off
const JLT_K: u8 = 0xa5; // if dst < imm (unsigned): pc += off
const EXIT: u8 = 0x95; // return r0

// Registers: r1 holds the context (struct bpf_cgroup_dev_ctx { u32
// access_type, major, minor }); the program keeps the type in r2, the
// access in r3, the major in r4, the minor in r5; r0 is scratch, then the
// verdict.
const CTX: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const R0: u8 = 0;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program for `rules`: each rule is a block that jumps to the next
/// one on the first mismatch and returns 1 (allow) at its end; after the
/// last, 0 (deny).
pub fn assemble(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, TYPE, CTX, 0, 0),
        insn(ALU32_MOV_X, ACCESS, TYPE, 0, 0),
        insn(ALU32_AND_K, TYPE, 0, 0, 0xffff),
        insn(ALU32_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, CTX, 4, 0),
        insn(LDX_MEM_W, MINOR, CTX, 8, 0),
    ];
    for rule in rules {
        // The tests, each jumping past the block when it fails.
        let mut tests = vec![(JNE_K, TYPE, rule.kind as i32)];
        let (first, last) = rule.majors;
        if first == last {
            tests.push((JNE_K, MAJOR, first as i32));
        } else {
            tests.push((JLT_K, MAJOR, first as i32));
            tests.push((JGT_K, MAJOR, last as i32));
        }
        if let Some(minor) = rule.minor {
            tests.push((JNE_K, MINOR, minor as i32));
        }
        // Then: any access bit outside the rule's skips it too.
        let len = tests.len() + 5;
        for (i, (code, reg, imm)) in tests.iter().enumerate() {
            p.push(insn(*code, *reg, 0, (len - i - 1) as i16, *imm));
        }
        p.push(insn(ALU32_MOV_X, R0, ACCESS, 0, 0));
        p.push(insn(ALU32_AND_K, R0, 0, 0, !(rule.access as i32)));
        p.push(insn(JNE_K, R0, 0, 2, 0));
        p.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `program` on one device access as the kernel would, for the
    /// instructions `assemble` emits (anything else fails the test).
    fn run(program: &[BpfInsn], kind: Kind, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64; // sign-extended, as the kernel does
            pc += 1;
            let jump = |taken: bool, pc: &mut usize| {
                if taken {
                    *pc = (*pc as i64 + i.off as i64) as usize;
                }
            };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, CTX as usize);
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                ALU64_MOV_K => r[dst] = imm,
                JNE_K => jump(r[dst] != imm, &mut pc),
                JGT_K => jump(r[dst] > imm, &mut pc),
                JLT_K => jump(r[dst] < imm, &mut pc),
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    /// The unit template allows what the scope properties allow, and both
    /// what berth's own program allows: tun, and the pty slaves.
    #[test]
    fn systemd_and_berth_allow_the_same() {
        let unit = include_str!("../units/machine@.service");
        assert!(unit.lines().any(|l| l == "DevicePolicy=closed"));
        let allow: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("DeviceAllow=")).collect();
        let ours: Vec<String> = SYSTEMD_DEVICE_ALLOW.iter().map(|(d, a)| format!("{d} {a}")).collect();
        assert_eq!(allow, ours);
        assert_eq!(
            SYSTEMD_DEVICE_ALLOW,
            [("/dev/net/tun", "rwm"), ("char-pts", "rw")],
            "change the rules of berth's program with this list"
        );
        let rules = rules();
        assert!(rules.contains(&one(Kind::Char, 10, 200, RWM)));
        assert!(rules.contains(&Rule {
            kind: Kind::Char,
            majors: (136, 143),
            minor: None,
            access: READ | WRITE
        }));
    }

    #[test]
    fn allows_what_berth_creates_and_nothing_else() {
        let p = assemble(&rules());
        assert!(p.len() < 100, "{} instructions", p.len());
        let allowed = |kind, major, minor, access| run(&p, kind, major, minor, access) == 1;
        for &(name, major, minor) in crate::rootfs::DEVICE_NODES {
            for access in [MKNOD, READ, WRITE, READ | WRITE] {
                assert!(allowed(Kind::Char, major as u32, minor as u32, access), "{name}");
            }
            assert!(
                !allowed(Kind::Block, major as u32, minor as u32, READ),
                "{name} as a block device"
            );
        }
        // ptmx, and every pty slave, but no pty slave made by mknod.
        assert!(allowed(Kind::Char, 5, 2, READ | WRITE));
        for major in 136..=143 {
            assert!(allowed(Kind::Char, major, 0, READ | WRITE));
            assert!(allowed(Kind::Char, major, 4095, READ));
            assert!(!allowed(Kind::Char, major, 0, MKNOD));
        }
        assert!(!allowed(Kind::Char, 135, 0, READ));
        assert!(!allowed(Kind::Char, 144, 0, READ));
        // The inaccessible nodes: made, never opened through the policy.
        assert!(allowed(Kind::Block, 0, 0, MKNOD));
        assert!(allowed(Kind::Char, 0, 0, MKNOD));
        assert!(!allowed(Kind::Block, 0, 0, READ));
        // The host's disks, memory, kernel log and console.
        for (kind, major, minor) in [
            (Kind::Block, 8, 0),
            (Kind::Block, 254, 0),
            (Kind::Block, 7, 0),
            (Kind::Char, 1, 1),
            (Kind::Char, 1, 2),
            (Kind::Char, 1, 11),
            (Kind::Char, 5, 1),
            (Kind::Char, 4, 0),
            (Kind::Char, 10, 232),
        ] {
            for access in [MKNOD, READ, WRITE] {
                assert!(
                    !allowed(kind, major, minor, access),
                    "{kind:?} {major}:{minor} {access}"
                );
            }
        }
        // A mix of allowed and refused access bits is refused.
        assert!(!allowed(Kind::Char, 136, 0, READ | MKNOD));
        assert!(!allowed(Kind::Block, 0, 0, MKNOD | READ));
    }

    /// A cgroup2 directory of the test's own, removed (after its
    /// processes are gone) however the test ends.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = crate::cgroup::remove_tree(&self.0);
        }
    }

    fn test_cgroup(tag: &str) -> TestCgroup {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the device policy test needs root (it loads a BPF program and makes a cgroup); run cargo test as root"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = crate::cgroup::find_cgroup2(&mountinfo).expect("a cgroup2 mount");
        let path = mount.join(format!("berth-test-{tag}-{}", std::process::id()));
        let _ = crate::cgroup::remove_tree(&path);
        std::fs::create_dir(&path).unwrap();
        TestCgroup(path)
    }

    fn attached(cgroup: &Path) -> u32 {
        let dir = std::fs::File::open(cgroup).unwrap();
        sys::bpf_prog_count(dir.as_fd(), sys::BPF_CGROUP_DEVICE).unwrap()
    }

    /// The real thing: the kernel accepts the program, and a process in
    /// the cgroup can use /dev/null but can neither make a node of the
    /// host's root disk nor open the kernel log through a node made
    /// outside (both of which root on this host can do).
    #[test]
    fn kernel_enforces_the_policy_in_the_cgroup_and_below() {
        let cg = test_cgroup("devices");
        restrict(&cg.0).unwrap();
        assert_eq!(attached(&cg.0), 1);
        // Inherited: the process runs in a child cgroup, as the machine's
        // init runs in payload below the scope.
        let payload = cg.0.join("payload");
        std::fs::create_dir(&payload).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let root_dev = nix::sys::stat::stat("/").unwrap().st_dev;
        let (major, minor) = (nix::sys::stat::major(root_dev), nix::sys::stat::minor(root_dev));
        // Made here, outside the cgroup, where nothing refuses it.
        let kmsg = dir.path().join("kmsg");
        nix::sys::stat::mknod(
            &kmsg,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 11),
        )
        .unwrap();
        let disk = dir.path().join("disk");
        let script = format!(
            r#"echo $$ > {procs} || exit 1
               head -c1 /dev/null && echo "null: ok"
               mknod {disk} b {major} {minor} 2>&1
               head -c1 {kmsg} 2>&1
               exit 0"#,
            procs = payload.join("cgroup.procs").display(),
            disk = disk.display(),
            kmsg = kmsg.display(),
        );
        let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
            [
                "null: ok".to_string(),
                format!("mknod: {}: Operation not permitted", disk.display()),
                format!(
                    "head: cannot open '{}' for reading: Operation not permitted",
                    kmsg.display()
                ),
            ]
        );
        assert!(!disk.exists());
    }

    /// The program goes with its cgroup: a scope of the same name made
    /// again (the next start after a killed berth) starts with none.
    #[test]
    fn program_goes_with_the_cgroup() {
        let cg = test_cgroup("devices-gone");
        restrict(&cg.0).unwrap();
        restrict(&cg.0).unwrap();
        assert_eq!(attached(&cg.0), 2);
        std::fs::remove_dir(&cg.0).unwrap();
        std::fs::create_dir(&cg.0).unwrap();
        assert_eq!(attached(&cg.0), 0);
    }

    /// A program the verifier refuses (a berth bug) is reported with the
    /// verifier's last word, and nothing is attached.
    #[test]
    fn a_refused_program_says_why_in_one_line() {
        let cg = test_cgroup("devices-refused");
        let e = attach(&cg.0, &[insn(EXIT, 0, 0, 0, 0)]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "cgroup {}: the kernel refused berth's device program (BPF_PROG_TYPE_CGROUP_DEVICE): \
                 Permission denied (verifier: R0 !read_ok)",
                cg.0.display()
            )
        );
        assert_eq!(attached(&cg.0), 0);
    }

    #[test]
    fn a_missing_cgroup_is_named_in_one_line() {
        let e = restrict(Path::new("/sys/fs/cgroup/unified/no-such-berth-cgroup")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup /sys/fs/cgroup/unified/no-such-berth-cgroup: opening it for the device policy: No such file or directory"
        );
    }
}
