//! Host tests of `berth import-tar` and `berth export-tar`, as root, with
//! the cached guest tree (BERTH_TEST_TREE; see tests/common). Every test
//! uses a machines directory of its own (the hidden --machines-dir) under the
//! cache's scratch directory, on the same file system as the tree, and
//! machine names starting with "t-img-" (their name locks are the real
//! ones in /run/berth).
//!
//!   sudo BERTH_TEST_TREE=$(sudo tests/prepare-tree) cargo test --test image -- --test-threads=1

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::*;

/// A directory for one test: its machines directory, tarballs, sources.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tree = tree();
        let base = tree.parent().unwrap().parent().unwrap().join("scratch");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        std::fs::create_dir(dir.path().join("machines")).unwrap();
        Env { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn machines(&self) -> PathBuf {
        self.path("machines")
    }
    fn cmd(&self, args: &[&OsStr]) -> Command {
        let mut c = berth();
        c.args(args).arg("--machines-dir").arg(self.machines());
        c
    }
    /// `berth ARGS` with stdin from `input` (or nothing), within 3 minutes.
    fn run(&self, args: &[&OsStr], input: Option<&Path>) -> Output {
        let mut c = self.cmd(args);
        c.stdin(match input {
            Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
            None => Stdio::null(),
        });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth {args:?} hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
    fn import(&self, file: &Path, name: &str, extra: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = vec![OsStr::new("import-tar"), file.as_os_str(), OsStr::new(name)];
        args.extend(extra.iter().map(OsStr::new));
        self.run(&args, None)
    }
    /// `import-tar - NAME EXTRA...` with `file` on standard input.
    fn import_stdin(&self, file: &Path, name: &str, extra: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = vec![OsStr::new("import-tar"), OsStr::new("-"), OsStr::new(name)];
        args.extend(extra.iter().map(OsStr::new));
        self.run(&args, Some(file))
    }
    fn import_ok(&self, file: &Path, name: &str, extra: &[&str]) {
        let out = self.import(file, name, extra);
        assert!(
            out.status.success(),
            "import-tar {} {name} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn export(&self, name: &str, file: &Path, extra: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = vec![OsStr::new("export-tar"), OsStr::new(name), file.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        self.run(&args, None)
    }
    /// What is in the machines directory (hidden entries too).
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.machines())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(String::from).collect()
}

/// The run failed with exactly this one line, exit 1.
fn assert_refused(out: &Output, line: &str) {
    assert_eq!(lines(out), vec![line.to_string()], "stderr");
    assert_eq!(out.status.code(), Some(1));
}

fn sh(script: &str) {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(format!("set -o pipefail\n{script}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compressors the tests need, or a failure saying what to install.
fn need_tools() {
    let zstd = Command::new("tar").arg("--zstd").arg("--help").output();
    let have = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        have("xz") && have("zstd") && have("gzip") && zstd.is_ok_and(|o| o.status.success()),
        "the image tests need GNU tar with --zstd, gzip, xz and zstd: apt-get install zstd xz-utils"
    );
}

// ---------------------------------------------------------------------------
// What a tree is, compared: every entry's type and mode, owner, mtime,
// device, symlink target, xattrs, sha256 of its data; and which entries
// are hard links of each other.

#[derive(Debug, PartialEq, Eq)]
struct Item {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    rdev: u64,
    link: Option<PathBuf>,
    sha256: Option<String>,
    /// For sparse files: fewer blocks than bytes (checked separately).
    xattrs: BTreeMap<String, Vec<u8>>,
}

struct Snapshot {
    items: BTreeMap<PathBuf, Item>,
    /// Names sharing an inode (inside the tree), each group sorted.
    hard_links: Vec<Vec<PathBuf>>,
}

fn xattrs_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let proc = berth::inroot::fd_path(fd.as_fd());
    let mut out = BTreeMap::new();
    for n in berth::sys::list_xattr(&proc).unwrap() {
        let n = String::from_utf8(n).unwrap();
        // import-tar sets only user.*, ACLs and file capabilities (the
        // source's trusted.* one is checked to be left out, below).
        if n.starts_with("trusted.") || (n.starts_with("security.") && n != "security.capability") {
            continue;
        }
        let v = berth::sys::get_xattr(&proc, &n).unwrap().unwrap();
        out.insert(n, v);
    }
    out
}

/// The sha256 of every regular file under `root`, by GNU sha256sum in
/// one run (the test binary's own sha2 is a debug build: slow).
fn sha256_all(root: &Path) -> BTreeMap<PathBuf, String> {
    let out = Command::new("bash")
        .arg("-ec")
        .arg("set -o pipefail; cd \"$1\"; find . -type f -print0 | xargs -0 -r sha256sum -z --")
        .arg("sha256_all")
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sha256sum: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (hash, name) = (&l[..64], &l[66..]);
            let name = Path::new(OsStr::from_bytes(name));
            (
                name.strip_prefix("./").unwrap_or(name).to_path_buf(),
                String::from_utf8(hash.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn snapshot(root: &Path) -> Snapshot {
    let hashes = sha256_all(root);
    let mut items = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let item = Item {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            rdev: m.rdev(),
            link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
            sha256: ft.is_file().then(|| hashes[&rel].clone()),
            xattrs: xattrs_of(&p),
        };
        if !ft.is_dir() {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        items.insert(rel.clone(), item);
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    let mut hard_links: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    hard_links.sort();
    Snapshot { items, hard_links }
}

fn assert_same_tree(want: &Snapshot, got_root: &Path, what: &str) {
    let got = snapshot(got_root);
    let mut diffs = Vec::new();
    for (p, w) in &want.items {
        // console and ptmx (debootstrap's) are left out of imported trees.
        if w.mode & 0o170000 == 0o020000
            && [(5, 1), (5, 2), (10, 200)].contains(&(nix::sys::stat::major(w.rdev), nix::sys::stat::minor(w.rdev)))
        {
            if got.items.contains_key(p) {
                diffs.push(format!("{} should have been left out", p.display()));
            }
            continue;
        }
        match got.items.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(g) if g != w => diffs.push(format!("{}:\n  want {w:?}\n  got  {g:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in got.items.keys().filter(|p| !want.items.contains_key(*p)) {
        diffs.push(format!("extra {}", p.display()));
    }
    if want.hard_links != got.hard_links {
        diffs.push(format!(
            "hard links differ: want {:?}, got {:?}",
            want.hard_links, got.hard_links
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences from the source tree (of {} entries), first ones:\n{}",
        diffs.len(),
        want.items.len(),
        diffs.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A POSIX ACL in the kernel's xattr form: (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}
const NOID: u32 = u32::MAX;

/// A scratch source tree: the guest tree as hard links (`cp -al`), with
/// what a machine writes in place (its journal, state, /etc) replaced by
/// copies, and new entries for what the guest tree lacks: an ACL and xattrs
/// with binary values, set-id files of unlisted owners, a sticky directory
/// with a default ACL, a FIFO, new hard links, long and non-UTF-8 names,
/// a sparse file. Nothing of the cached tree is changed.
fn source(env: &Env) -> PathBuf {
    let src = env.path("src");
    let t = tree();
    sh(&format!(
        "cp -al '{}' '{}'
         cd '{}'
         for d in var/log var/lib/systemd etc; do
           [ -d \"$d\" ] || continue
           find \"$d\" -type f | while read -r f; do cp -a \"$f\" \"$f.copy\" && mv \"$f.copy\" \"$f\"; done
         done",
        t.display(),
        src.display(),
        src.display()
    ));
    let p = |rel: &str| src.join(rel);
    std::fs::create_dir_all(p("srv/long")).unwrap();
    // An ACL (user 12345, not in any passwd) and xattrs with '\n' and NUL.
    std::fs::write(p("root/acl-file"), "acl\n").unwrap();
    berth::sys::set_xattr(
        &p("root/acl-file"),
        "system.posix_acl_access",
        &acl(&[
            (1, 6, NOID),
            (2, 4, 12345),
            (4, 4, NOID),
            (0x10, 4, NOID),
            (0x20, 4, NOID),
        ]),
    )
    .unwrap();
    berth::sys::set_xattr(&p("root/acl-file"), "user.test", b"a\nb\0c\n").unwrap();
    berth::sys::set_xattr(&p("root/acl-file"), "trusted.berth-test", &[10; 70]).unwrap();
    // Set-id files of unlisted owners.
    for (name, mode, uid, gid) in [("suid-tool", 0o4755, 4242, 4343), ("sgid-tool", 0o2711, 0, 4343)] {
        let f = p(&format!("srv/{name}"));
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        nix::unistd::chown(&f, Some(uid.into()), Some(gid.into())).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // A sticky directory with a default ACL (named group) and an xattr.
    std::fs::create_dir(p("srv/sticky")).unwrap();
    std::fs::set_permissions(p("srv/sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    berth::sys::set_xattr(
        &p("srv/sticky"),
        "system.posix_acl_default",
        &acl(&[
            (1, 7, NOID),
            (4, 5, NOID),
            (8, 5, 54321),
            (0x10, 5, NOID),
            (0x20, 5, NOID),
        ]),
    )
    .unwrap();
    berth::sys::set_xattr(&p("srv/sticky"), "user.dir", b"yes").unwrap();
    nix::unistd::mkfifo(&p("srv/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    std::fs::write(p("srv/hard1"), "one inode, two names\n").unwrap();
    std::fs::hard_link(p("srv/hard1"), p("srv/hard2")).unwrap();
    // Names over 100 bytes (PAX path, linkpath), and not UTF-8.
    let long = "a-rather-long-directory-name-to-pass-one-hundred-bytes/".repeat(3);
    std::fs::create_dir_all(p(&format!("srv/long/{long}"))).unwrap();
    std::fs::write(p(&format!("srv/long/{long}file")), "deep\n").unwrap();
    std::os::unix::fs::symlink(format!("{long}file"), p("srv/long/link")).unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"srv/caf\xe9")), "latin-1 name\n").unwrap();
    // Sparse: 64 MiB with two small islands of data.
    let f = std::fs::File::create(p("srv/sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"island one", 5 << 20).unwrap();
    f.write_all_at(b"island two", (64 << 20) - 10).unwrap();
    src
}

/// GNU tar of `src`, with xattrs and ACLs and numeric owners, compressed by
/// `compressor` (a shell command, or empty for none).
fn gnu_tarball(src: &Path, file: &Path, tar_flags: &str, compressor: &str) {
    let pipe = if compressor.is_empty() {
        String::new()
    } else {
        format!("| {compressor}")
    };
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --acls --numeric-owner {tar_flags} -C '{}' -c . {pipe} > '{}'",
        src.display(),
        file.display()
    ));
}

fn sparse_is_sparse(tree: &Path) {
    let m = std::fs::metadata(tree.join("srv/sparse")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "srv/sparse has {} blocks: its holes were written",
        m.blocks()
    );
}

#[test]
fn gnu_tarballs_of_each_compression_import_exactly() {
    need_tools();
    let env = Env::new();
    let src = source(&env);
    let want = snapshot(&src);
    let cases = [
        // (name, tar flags, compressor)
        ("t-img-gz", "--sparse", "gzip -1"),
        ("t-img-xz", "--sparse --sparse-version=1.0", "xz -T0 -0"),
        ("t-img-zst", "", "zstd -q -T0"),
        ("t-img-plain", "--sparse --sparse-version=0.1", ""),
    ];
    for (name, flags, compressor) in cases {
        let file = env.path(&format!("{name}.tarball"));
        gnu_tarball(&src, &file, flags, compressor);
        env.import_ok(&file, name, &[]);
        let tree = env.machines().join(name);
        assert_same_tree(&want, &tree, &format!("{name} ({flags} | {compressor})"));
        // The tarball's trusted.* xattr is not set on the host's files.
        assert_eq!(
            berth::sys::get_xattr(&tree.join("root/acl-file"), "trusted.berth-test").unwrap(),
            None,
            "{name}"
        );
        if flags.contains("--sparse") {
            sparse_is_sparse(&tree);
        }
        std::fs::remove_dir_all(&tree).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(env.listing().is_empty(), "{:?}", env.listing());
    }

    // The old GNU format's sparse entries (no xattrs there).
    let gnu = env.path("gnu");
    std::fs::create_dir_all(gnu.join("etc")).unwrap();
    std::fs::create_dir_all(gnu.join("srv")).unwrap();
    std::fs::write(gnu.join("etc/os-release"), "ID=test\n").unwrap();
    std::fs::rename(src.join("srv/sparse"), gnu.join("srv/sparse")).unwrap();
    // Its mtimes are whole seconds.
    for rel in ["srv/sparse", "etc/os-release", "srv", "etc", "."] {
        let p = gnu.join(rel);
        let secs = std::fs::metadata(&p).unwrap().mtime();
        let t = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let want = snapshot(&gnu);
    let file = env.path("gnu.tar");
    gnu_tarball(&gnu, &file, "--format=gnu --sparse --no-xattrs --no-acls", "");
    env.import_ok(&file, "t-img-gnu", &[]);
    assert_same_tree(&want, &env.machines().join("t-img-gnu"), "GNU format, sparse");
    sparse_is_sparse(&env.machines().join("t-img-gnu"));
}

#[test]
fn export_then_import_round_trips_and_gnu_tar_reads_the_export() {
    need_tools();
    let env = Env::new();
    let src = source(&env);
    let want = snapshot(&src);
    let file = env.path("src.tar.zst");
    gnu_tarball(&src, &file, "", "zstd -q -T0");
    env.import_ok(&file, "t-img-exp", &[]);

    for ext in ["tar", "tar.zst"] {
        let out_file = env.path(&format!("export.{ext}"));
        let out = env.export("t-img-exp", &out_file, &[]);
        assert!(
            out.status.success(),
            "export to .{ext}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = std::fs::metadata(&out_file).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600, "the export is root's alone");
        assert!(!env.path(&format!("export.{ext}.tmp")).exists());
        let name = format!("t-img-re-{}", ext.replace('.', "-"));
        env.import_ok(&out_file, &name, &[]);
        assert_same_tree(
            &want,
            &env.machines().join(&name),
            &format!("export .{ext}, imported again"),
        );
        std::fs::remove_dir_all(env.machines().join(&name)).unwrap();
        if ext == "tar" {
            // GNU tar extracts berth's tarball to the same tree.
            let x = env.path("gnu-x");
            std::fs::create_dir(&x).unwrap();
            sh(&format!(
                "tar --xattrs --xattrs-include='*' --acls --numeric-owner -C '{}' -xf '{}'",
                x.display(),
                out_file.display()
            ));
            assert_same_tree(&want, &x, "berth's export extracted by GNU tar");
        }
        std::fs::remove_file(&out_file).unwrap();
    }

    // Every compression, on a small tree (compressing the whole tree with
    // a debug build's xz and gzip takes minutes).
    let small = write(&env, "small.tar", &small_tree(b"small\n"));
    env.import_ok(&small, "t-img-small", &[]);
    let small_tree_path = env.machines().join("t-img-small");
    std::fs::write(small_tree_path.join("etc/hard"), "two names\n").unwrap();
    std::fs::hard_link(small_tree_path.join("etc/hard"), small_tree_path.join("hard2")).unwrap();
    berth::sys::set_xattr(&small_tree_path.join("etc/hard"), "user.x", b"\n\0").unwrap();
    nix::unistd::mkfifo(
        &small_tree_path.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let want_small = snapshot(&small_tree_path);
    for ext in ["tar.gz", "tgz", "tar.xz", "txz", "tar.zst", "tzst"] {
        let out_file = env.path(&format!("small.{ext}"));
        let out = env.export("t-img-small", &out_file, &[]);
        assert!(
            out.status.success(),
            "export to .{ext}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("t-img-small-{}", ext.replace('.', "-"));
        env.import_ok(&out_file, &name, &[]);
        assert_same_tree(&want_small, &env.machines().join(&name), &format!("small tree, .{ext}"));
    }

    // To standard output: a plain tar.
    let piped = env.path("piped.tar");
    let out = env
        .cmd(&[OsStr::new("export-tar"), OsStr::new("t-img-exp"), OsStr::new("-")])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&piped).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // And back from standard input.
    let out = env.import_stdin(&piped, "t-img-stdin", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(
        &want,
        &env.machines().join("t-img-stdin"),
        "export to stdout, import from stdin",
    );

    // An existing file is not replaced without --force; a bad name is refused.
    let existing = env.path("existing.tar");
    std::fs::write(&existing, "keep me").unwrap();
    assert_refused(
        &env.export("t-img-exp", &existing, &[]),
        &format!(
            "berth: cannot export machine \"t-img-exp\" to {}: it exists (use --force to replace it)",
            existing.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
    let out = env.export("t-img-exp", &existing, &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zip = env.path("x.zip");
    assert_refused(
        &env.export("t-img-exp", &zip, &[]),
        &format!(
            "berth: cannot export machine \"t-img-exp\" to {}: cannot tell the compression from its name: use .tar, .tar.gz (.tgz), .tar.xz (.txz) or .tar.zst (.tzst), or - for a plain tar on standard output",
            zip.display()
        ),
    );
    let missing = env.machines().join("t-img-none");
    assert_refused(
        &env.export("t-img-none", &zip, &[]),
        &format!(
            "berth: cannot export machine \"t-img-none\" to {}: {} does not exist",
            zip.display(),
            missing.display()
        ),
    );

    // Not while a machine that may write the tree runs on it.
    let tree = env.machines().join("t-img-exp");
    let name = berth::name::MachineName::parse("t-img-writer").unwrap();
    let identity = berth::lock::identity_of(&tree).unwrap();
    let locks = berth::lock::acquire_machine(
        Path::new(berth::lock::LOCK_DIR),
        &name,
        &tree,
        identity,
        berth::lock::TreeAccess::Exclusive,
    )
    .unwrap();
    let busy = env.path("busy.tar");
    assert_refused(
        &env.export("t-img-exp", &busy, &[]),
        &format!(
            "berth: cannot export machine \"t-img-exp\" to {}: {} is in use by machine \"t-img-writer\", which may write it (lock {} is held): stop it first, or run it read-only",
            busy.display(),
            tree.display(),
            berth::lock::tree_lock_path(Path::new(berth::lock::LOCK_DIR), identity).display()
        ),
    );
    assert!(!busy.exists() && !env.path("busy.tar.tmp").exists());
    drop(locks);
    // A read-only machine on it does not stop an export.
    let shared = berth::lock::acquire_machine(
        Path::new(berth::lock::LOCK_DIR),
        &name,
        &tree,
        identity,
        berth::lock::TreeAccess::Shared,
    )
    .unwrap();
    let out = env.export("t-img-exp", &busy, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(shared);
}

// ---------------------------------------------------------------------------
// Small tarballs, built by hand.

enum E<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a [u8]),
    Sym(&'a [u8], &'a [u8]),
    Hard(&'a [u8], &'a [u8]),
    Dev(&'a [u8], tar::EntryType, u32, u32),
}

/// A tarball of these entries, the names and link names put into the
/// header fields as they are (the tar crate's setters refuse "..").
fn tarball(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        let (name, data): (&[u8], &[u8]) = match e {
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (n, d)
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::Sym(n, t) | E::Hard(n, t) => {
                h.set_entry_type(if matches!(e, E::Sym(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                (n, b"")
            }
            E::Dev(n, kind, major, minor) => {
                h.set_entry_type(*kind);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (n, b"")
            }
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

const OS_RELEASE: E<'static> = E::File(b"./etc/os-release", b"ID=test\nNAME=\"Test\"\n");

/// A small valid tree: os-release, a file, a link.
fn small_tree(marker: &[u8]) -> Vec<u8> {
    tarball(&[
        E::Dir(b"./"),
        E::Dir(b"./etc/"),
        OS_RELEASE,
        E::File(b"./etc/marker", marker),
        E::Sym(b"./etc/localtime", b"/usr/share/zoneinfo/UTC"),
        E::Dev(b"./dev/null", tar::EntryType::Char, 1, 3),
    ])
}

fn write(env: &Env, name: &str, data: &[u8]) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn checksum_right_passes_wrong_is_refused_and_leaves_nothing() {
    let env = Env::new();
    let data = zstd::encode_all(&small_tree(b"one\n")[..], 3).unwrap();
    let file = write(&env, "small.tar.zst", &data);
    let right = format!("sha256:{}", sha256_hex(&data));
    let wrong = format!("sha256:{}", "0".repeat(64));

    let out = env.import(&file, "t-img-sum", &["--checksum", &wrong]);
    assert_refused(
        &out,
        &format!(
            "berth: cannot import {} as machine \"t-img-sum\": checksum mismatch: its SHA-256 is {right}, --checksum says {wrong}",
            file.display()
        ),
    );
    assert!(env.listing().is_empty(), "{:?}", env.listing());

    // Upper case is fine; off a terminal, the one line says what was done.
    let out = env.import(
        &file,
        "t-img-sum",
        &["--checksum", &right.to_uppercase().replace("SHA256", "sha256")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = env.machines().join("t-img-sum");
    assert_eq!(
        lines(&out),
        vec![format!(
            "berth: imported machine \"t-img-sum\" into {} (6 entries, {} bytes read)",
            tree.display(),
            data.len()
        )]
    );
    assert_eq!(env.listing(), vec!["t-img-sum"]);
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"one\n");
    assert_eq!(
        std::fs::read_link(tree.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    let null = std::fs::symlink_metadata(tree.join("dev/null")).unwrap();
    assert_eq!(
        (null.mode() & 0o170000, null.rdev()),
        (0o020000, nix::sys::stat::makedev(1, 3))
    );
    assert_eq!(std::fs::metadata(&tree).unwrap().mode() & 0o7777, 0o755);

    // From standard input too (the checksum is of the bytes read).
    let out = env.import_stdin(&file, "t-img-sum2", &["--checksum", &right]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.import_stdin(&file, "t-img-sum3", &["--checksum", &wrong]);
    assert_refused(
        &out,
        &format!(
            "berth: cannot import standard input as machine \"t-img-sum3\": checksum mismatch: its SHA-256 is {right}, --checksum says {wrong}"
        ),
    );
    assert_eq!(env.listing(), vec!["t-img-sum", "t-img-sum2"]);

    // Bad input before anything is read.
    assert_refused(
        &env.import(&file, "t-img-sum4", &["--checksum", "md5:00"]),
        "berth: invalid --checksum \"md5:00\": expected sha256: and 64 hexadecimal digits",
    );
    assert_refused(
        &env.import(&file, "bad_name", &[]),
        "berth: invalid machine name \"bad_name\": only letters, digits, '-' and '.' are allowed, as in a hostname (systemd-machined's rule)",
    );
    let not_tar = write(&env, "not.tar", &[b'x'; 4096]);
    assert_refused(
        &env.import(&not_tar, "t-img-sum4", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-sum4\": it is not a tar archive (nor a gzip, xz or zstd compressed one)",
            not_tar.display()
        ),
    );
    // Cut short: in a file's data, and between entries.
    let tar = small_tree(b"one\n");
    for (cut, why) in [
        (512 * 5 + 2, "it is cut short: a truncated tarball?"),
        (512 * 6 + 100, "it is cut short: a truncated tarball?"),
        (
            512 * 7,
            "it ends without its end-of-archive block: a truncated tarball?",
        ),
    ] {
        let f = write(&env, "cut.tar", &tar[..cut]);
        assert_refused(
            &env.import(&f, "t-img-sum4", &[]),
            &format!("berth: cannot import {} as machine \"t-img-sum4\": {why}", f.display()),
        );
    }
    assert_eq!(env.listing(), vec!["t-img-sum", "t-img-sum2"]);
}

#[test]
fn hostile_tarballs_are_refused_with_the_entry_named_and_leave_nothing() {
    let env = Env::new();
    let allowed = "null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9, tty 5:0";
    let cases: Vec<(&str, Vec<E<'_>>, String)> = vec![
        (
            "dotdot",
            vec![OS_RELEASE, E::File(b"../escape", b"out\n")],
            "entry \"../escape\": a \"..\" component is refused".into(),
        ),
        (
            "dotdot-inside",
            vec![OS_RELEASE, E::Dir(b"./a/"), E::File(b"./a/../../escape", b"out\n")],
            "entry \"./a/../../escape\": a \"..\" component is refused".into(),
        ),
        (
            "absolute",
            vec![OS_RELEASE, E::File(b"/etc/cron.d/evil", b"* * * * * root id\n")],
            "entry \"/etc/cron.d/evil\": an absolute path is refused".into(),
        ),
        (
            "hard-link-absolute",
            vec![OS_RELEASE, E::Hard(b"./passwd", b"/etc/passwd")],
            "entry \"./passwd\": hard link to \"/etc/passwd\", which is outside the tree (absolute, or with \"..\"): refused".into(),
        ),
        (
            "hard-link-dotdot",
            vec![OS_RELEASE, E::Dir(b"./etc/"), E::Hard(b"./etc/x", b"./etc/../../escape")],
            "entry \"./etc/x\": hard link to \"./etc/../../escape\", which is outside the tree (absolute, or with \"..\"): refused".into(),
        ),
        (
            "hard-link-missing",
            vec![OS_RELEASE, E::Hard(b"./x", b"./etc/shadow")],
            "entry \"./x\": hard link to \"./etc/shadow\", which is not an earlier entry of the tarball".into(),
        ),
        (
            "symlink-up-then-through",
            vec![OS_RELEASE, E::Sym(b"evil", b"../../.."), E::File(b"evil/x", b"out\n")],
            "entry \"evil\": symbolic link to \"../../..\", which climbs out of the tree: refused".into(),
        ),
        (
            "through-absolute-symlink",
            vec![OS_RELEASE, E::Sym(b"evil", b"/"), E::File(b"evil/etc/x", b"out\n")],
            "entry \"evil/etc/x\": its path goes through the symbolic link \"evil\": refused".into(),
        ),
        (
            "through-inner-symlink",
            vec![
                OS_RELEASE,
                E::Dir(b"./usr/"),
                E::Sym(b"./usr/lib", b"/etc"),
                E::File(b"./usr/lib/x", b"out\n"),
            ],
            "entry \"./usr/lib/x\": its path goes through the symbolic link \"usr/lib\": refused".into(),
        ),
        (
            "relative-symlink-climbing",
            vec![OS_RELEASE, E::Dir(b"./usr/lib/"), E::Sym(b"./usr/lib/x", b"../../../etc/passwd")],
            "entry \"./usr/lib/x\": symbolic link to \"../../../etc/passwd\", which climbs out of the tree: refused".into(),
        ),
        (
            "hard-link-moves-a-symlink-up",
            vec![
                OS_RELEASE,
                E::Dir(b"./a/b/"),
                E::Sym(b"./a/b/l", b"../../x"),
                E::Hard(b"./l2", b"./a/b/l"),
            ],
            "entry \"./l2\": hard link to the symbolic link \"./a/b/l\", whose target \"../../x\" climbs out of the tree from here: refused".into(),
        ),
        (
            "block-device",
            vec![OS_RELEASE, E::Dev(b"./dev/sda", tar::EntryType::Block, 8, 0)],
            "entry \"./dev/sda\": block device 8:0: refused".into(),
        ),
        (
            "char-device-mem",
            vec![OS_RELEASE, E::Dev(b"./dev/mem", tar::EntryType::Char, 1, 1)],
            format!("entry \"./dev/mem\": character device 1:1: refused (allowed: {allowed})"),
        ),
        (
            // A name that would clear the screen and move the cursor is
            // shown escaped.
            "terminal-escapes",
            vec![OS_RELEASE, E::File(b"\x1b[2J\x1b[H\rok/../x", b"")],
            "entry \"\\u{1b}[2J\\u{1b}[H\\rok/../x\": a \"..\" component is refused".into(),
        ),
        (
            "no-os-release",
            vec![E::Dir(b"./etc/"), E::File(b"./etc/hostname", b"x\n")],
            "it holds no OS tree: neither /etc/os-release nor /usr/lib/os-release is in it (as a file, or a link to one in the tree)".into(),
        ),
        (
            // An absolute link resolves inside the tree, where nothing is.
            "os-release-link-to-host",
            vec![E::Dir(b"./etc/"), E::Sym(b"./etc/os-release", b"/etc/debian_version")],
            "it holds no OS tree: neither /etc/os-release nor /usr/lib/os-release is in it (as a file, or a link to one in the tree)".into(),
        ),
        (
            "os-release-a-directory",
            vec![E::Dir(b"./etc/"), E::Dir(b"./etc/os-release/")],
            "its /etc/os-release is unusable: is a directory, not a regular file".into(),
        ),
    ];
    for (what, entries, why) in cases {
        let file = write(&env, &format!("{what}.tar"), &tarball(&entries));
        let out = env.import(&file, "t-img-hostile", &[]);
        assert_refused(
            &out,
            &format!(
                "berth: cannot import {} as machine \"t-img-hostile\": {why}",
                file.display()
            ),
        );
        assert!(env.listing().is_empty(), "{what}: left {:?}", env.listing());
        assert!(!env.path("escape").exists() && !env.dir.path().parent().unwrap().join("escape").exists());
    }
    assert!(!Path::new("/etc/cron.d/evil").exists());
}

#[test]
fn an_existing_tree_needs_force_and_force_refuses_a_running_machine() {
    let env = Env::new();
    let one = write(&env, "one.tar", &small_tree(b"one\n"));
    let two = write(&env, "two.tar.gz", &{
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&small_tree(b"two\n")).unwrap();
        gz.finish().unwrap()
    });
    let tree = env.machines().join("t-img-force");
    env.import_ok(&one, "t-img-force", &[]);
    assert_refused(
        &env.import(&two, "t-img-force", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-force\": {} exists (use --force to replace it)",
            two.display(),
            tree.display()
        ),
    );
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"one\n");

    // A machine of that name runs: its name lock is held.
    let name = berth::name::MachineName::parse("t-img-force").unwrap();
    let lock_dir = Path::new(berth::lock::LOCK_DIR);
    let identity = berth::lock::identity_of(&tree).unwrap();
    let locks =
        berth::lock::acquire_machine(lock_dir, &name, &tree, identity, berth::lock::TreeAccess::Exclusive).unwrap();
    assert_refused(
        &env.import(&two, "t-img-force", &["--force"]),
        &format!(
            "berth: cannot import {} as machine \"t-img-force\": machine \"t-img-force\" is running, or being imported (lock /run/berth/t-img-force.lock is held)",
            two.display()
        ),
    );
    drop(locks);
    // A machine of another name runs on the tree (berth boot other -D TREE).
    let other = berth::name::MachineName::parse("t-img-other").unwrap();
    let locks =
        berth::lock::acquire_machine(lock_dir, &other, &tree, identity, berth::lock::TreeAccess::Shared).unwrap();
    assert_refused(
        &env.import(&two, "t-img-force", &["--force"]),
        &format!(
            "berth: cannot import {} as machine \"t-img-force\": {} is in use by a machine (lock {} is held): stop it first",
            two.display(),
            tree.display(),
            berth::lock::tree_lock_path(lock_dir, identity).display()
        ),
    );
    drop(locks);
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"one\n");
    assert_eq!(env.listing(), vec!["t-img-force"]);

    // Replaced, and the old tree gone.
    let out = env.import(&two, "t-img-force", &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        lines(&out)[0].ends_with("bytes read, the old tree replaced)"),
        "{:?}",
        lines(&out)
    );
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"two\n");
    assert_eq!(env.listing(), vec!["t-img-force"]);
    // A failed --force import leaves the old tree as it was.
    let bad = write(&env, "bad.tar", &tarball(&[OS_RELEASE, E::File(b"../x", b"")]));
    assert_eq!(env.import(&bad, "t-img-force", &["--force"]).status.code(), Some(1));
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"two\n");
    assert_eq!(env.listing(), vec!["t-img-force"]);
}

/// A plain tar of the guest tree, made once per test that needs a big one.
fn big_tar(env: &Env) -> PathBuf {
    let file = env.path("big.tar");
    gnu_tarball(&tree(), &file, "", "");
    file
}

/// Start `berth import-tar - NAME` fed by the test; returns it with the
/// pipe's write end.
fn start_import(env: &Env, name: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = env
        .cmd(&[OsStr::new("import-tar"), OsStr::new("-"), OsStr::new(name)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Wait until the import's hidden directory holds something.
fn wait_for_temp(env: &Env, name: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let temp = env
            .listing()
            .into_iter()
            .find(|n| n.starts_with(&format!(".import-{name}-")));
        if let Some(t) = temp {
            let p = env.machines().join(t);
            if std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_some()) {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no temporary directory appeared: {:?}",
            env.listing()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_or_sigterm_during_a_slow_import_leaves_nothing() {
    let env = Env::new();
    let big = std::fs::read(big_tar(&env)).unwrap();
    for (sig, name, stall) in [(libc::SIGINT, "SIGINT", true), (libc::SIGTERM, "SIGTERM", false)] {
        let (mut child, mut stdin) = start_import(&env, "t-img-int");
        // The first 16 MiB at once; then a trickle, or nothing at all (a
        // stalled pipe must not hold off the signal).
        stdin.write_all(&big[..16 << 20]).unwrap();
        let temp = wait_for_temp(&env, "t-img-int");
        let feeder = (!stall).then(|| {
            let rest = big[16 << 20..].to_vec();
            std::thread::spawn(move || {
                for chunk in rest.chunks(64 << 10) {
                    if stdin.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        berth::sys::send_signal(child.id() as i32, sig).unwrap();
        let status = wait_child(
            &mut child,
            Duration::from_secs(20),
            "berth did not stop after the signal",
        );
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        // The notes of what is left out (debootstrap's console and ptmx
        // nodes), then the one error.
        assert_eq!(
            err.lines()
                .filter(|l| !l.starts_with("berth: not importing "))
                .collect::<Vec<_>>(),
            vec![format!(
                "berth: cannot import standard input as machine \"t-img-int\": interrupted by {name}"
            )]
        );
        assert_eq!(status.code(), Some(1));
        assert!(!temp.exists());
        assert!(env.listing().is_empty(), "{:?}", env.listing());
        if let Some(f) = feeder {
            f.join().unwrap();
        }
    }
}

#[test]
fn what_a_sigkilled_import_left_is_removed_by_the_next_import_of_that_name() {
    let env = Env::new();
    let big = std::fs::read(big_tar(&env)).unwrap();
    let (mut child, mut stdin) = start_import(&env, "t-img-kill");
    stdin.write_all(&big[..8 << 20]).unwrap();
    let temp = wait_for_temp(&env, "t-img-kill");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert!(temp.exists(), "SIGKILL leaves the temporary directory");
    // Another name's leftover is not this import's to remove.
    let other = env.machines().join(".import-t-img-kill-2-0123456789abcdef");
    std::fs::create_dir(&other).unwrap();

    let small = write(&env, "small.tar", &small_tree(b"after\n"));
    let out = env.import(&small, "t-img-kill", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        lines(&out)[0],
        format!(
            "berth: removed {}, left by an interrupted import of \"t-img-kill\"",
            temp.display()
        )
    );
    assert!(!temp.exists());
    assert_eq!(
        env.listing(),
        vec![".import-t-img-kill-2-0123456789abcdef", "t-img-kill"]
    );
}

#[test]
fn acl_text_alone_is_converted_with_names_from_the_trees_own_files() {
    let env = Env::new();
    // GNU tar's SCHILY.acl text without the xattr form: names are looked up
    // in the tarball's /etc/passwd and /etc/group, never the host's.
    let build = |acl: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], pax: Option<&str>| {
            if let Some(text) = pax {
                b.append_pax_extensions([("SCHILY.acl.access", text.as_bytes())])
                    .unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o640);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("etc/os-release", b"ID=test\n", None);
        add(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nkeeper:x:7001:7001::/:/bin/false\n",
            None,
        );
        add("etc/group", b"root:x:0:\nreaders:x:7002:\n", None);
        add("srv/data", b"data\n", Some(acl));
        b.into_inner().unwrap()
    };
    let good = write(
        &env,
        "acl.tar",
        &build("user::rw-\nuser:keeper:rw-\ngroup::r--\ngroup:readers:r--\ngroup:9:r--\nmask::rw-\nother::---\n"),
    );
    env.import_ok(&good, "t-img-acl", &[]);
    let got = xattrs_of(&env.machines().join("t-img-acl/srv/data"));
    let want = acl(&[
        (1, 6, NOID),
        (2, 6, 7001),
        (4, 4, NOID),
        (8, 4, 9),
        (8, 4, 7002),
        (0x10, 6, NOID),
        (0x20, 0, NOID),
    ]);
    assert_eq!(got.get("system.posix_acl_access"), Some(&want));

    let bad = write(
        &env,
        "bad-acl.tar",
        &build("user::rw-\nuser:nobody-here:r--\ngroup::r--\nmask::r--\nother::---\n"),
    );
    assert_refused(
        &env.import(&bad, "t-img-acl2", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-acl2\": entry \"srv/data\": its ACL names the user \"nobody-here\", which the tree's /etc/passwd does not list",
            bad.display()
        ),
    );
    assert_eq!(env.listing(), vec!["t-img-acl"]);
}

// ---------------------------------------------------------------------------
// The review's findings: bounded memory, the root's metadata, the machines
// directory, mounts in trees, the checksum of a file, device nodes.

/// A tar entry with PAX records, by the tar crate (appended to `b`).
fn add_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    (mode, uid, gid, mtime): (u32, u64, u64, u64),
    pax: &[(&str, &[u8])],
    data: &[u8],
) {
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().copied()).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    h.set_path(path).unwrap();
    h.set_cksum();
    b.append(&h, data).unwrap();
}

const REG: tar::EntryType = tar::EntryType::Regular;
const DIR: tar::EntryType = tar::EntryType::Directory;
const ROOT_0644: (u32, u64, u64, u64) = (0o644, 0, 0, 1_700_000_000);

#[test]
fn named_acls_waiting_for_the_trees_passwd_are_bounded_and_the_last_wins() {
    let env = Env::new();
    let big = |name: &str| format!("user::rw-\nuser:{name}:r--\ngroup::r--\nmask::r--\nother::---\n");
    let huge_name = "n".repeat(1_000_000);
    let start = |b: &mut tar::Builder<Vec<u8>>| {
        add_entry(b, "etc/os-release", REG, ROOT_0644, &[], b"ID=test\n");
        add_entry(
            b,
            "etc/passwd",
            REG,
            ROOT_0644,
            &[],
            b"root:x:0:0::/root:/bin/sh\nkeeper:x:7001:7001::/:/bin/false\n",
        );
    };
    // Five files, each with 1 MB of names to resolve: past the 4 MiB cap.
    let mut b = tar::Builder::new(Vec::new());
    start(&mut b);
    for i in 0..5 {
        add_entry(
            &mut b,
            &format!("srv/f{i}"),
            REG,
            ROOT_0644,
            &[("SCHILY.acl.access", big(&huge_name).as_bytes())],
            b"x",
        );
    }
    let file = write(&env, "acls.tar", &b.into_inner().unwrap());
    assert_refused(
        &env.import(&file, "t-img-acls", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-acls\": entry \"srv/f4\": ACLs naming users or groups (resolved at the end, in the tree's /etc/passwd and /etc/group) add up to more than 4194304 bytes, more than berth keeps",
            file.display()
        ),
    );
    assert!(env.listing().is_empty(), "{:?}", env.listing());

    // One file named ten times: one ACL kept, the last entry's (the
    // earlier ones' names are in no passwd).
    let mut b = tar::Builder::new(Vec::new());
    start(&mut b);
    for i in 0..10 {
        let acl = if i == 9 { big("keeper") } else { big(&huge_name) };
        add_entry(
            &mut b,
            "srv/data",
            REG,
            ROOT_0644,
            &[("SCHILY.acl.access", acl.as_bytes())],
            b"x",
        );
    }
    let file = write(&env, "acls-again.tar", &b.into_inner().unwrap());
    env.import_ok(&file, "t-img-acls", &[]);
    let got = xattrs_of(&env.machines().join("t-img-acls/srv/data"));
    let want = acl(&[
        (1, 6, NOID),
        (2, 4, 7001),
        (4, 4, NOID),
        (0x10, 4, NOID),
        (0x20, 0, NOID),
    ]);
    assert_eq!(got.get("system.posix_acl_access"), Some(&want));
    assert_eq!(env.listing(), vec!["t-img-acls"]);
}

#[test]
fn the_roots_own_entry_is_applied_last_and_directories_named_twice_keep_the_last_mtime() {
    let env = Env::new();
    let mut b = tar::Builder::new(Vec::new());
    add_entry(&mut b, "./", DIR, (0o750, 1234, 1235, 1_600_000_000), &[], b"");
    add_entry(&mut b, "etc/", DIR, (0o755, 0, 0, 1_500_000_000), &[], b"");
    add_entry(&mut b, "etc/os-release", REG, ROOT_0644, &[], b"ID=test\n");
    add_entry(&mut b, "etc/", DIR, (0o711, 0, 0, 1_550_000_000), &[], b"");
    let file = write(&env, "root.tar", &b.into_inner().unwrap());
    env.import_ok(&file, "t-img-root", &[]);
    let tree = env.machines().join("t-img-root");
    let m = std::fs::metadata(&tree).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o750, 1234, 1235, 1_600_000_000)
    );
    let m = std::fs::metadata(tree.join("etc")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 1_550_000_000));

    // While the import runs, the tree is root's and 0700, whatever "./" says.
    let mut b = tar::Builder::new(Vec::new());
    add_entry(&mut b, "./", DIR, (0o777, 1000, 1000, 1_600_000_000), &[], b"");
    add_entry(&mut b, "etc/", DIR, (0o755, 0, 0, 1_500_000_000), &[], b"");
    let head = b.into_inner().unwrap();
    let head = &head[..head.len() - 1024];
    let (mut child, mut stdin) = start_import(&env, "t-img-root2");
    stdin.write_all(head).unwrap();
    let temp = wait_for_temp(&env, "t-img-root2");
    let m = std::fs::metadata(&temp).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, 0));
    drop(stdin);
    let status = wait_child(&mut child, Duration::from_secs(20), "berth did not stop");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec!["berth: cannot import standard input as machine \"t-img-root2\": it ends without its end-of-archive block: a truncated tarball?"]
    );
    assert_eq!(status.code(), Some(1));
    assert_eq!(env.listing(), vec!["t-img-root"]);
}

#[test]
fn console_ptmx_and_tun_nodes_are_left_out_with_a_note() {
    let env = Env::new();
    let file = write(
        &env,
        "devs.tar",
        &tarball(&[
            OS_RELEASE,
            E::Dev(b"./dev/console", tar::EntryType::Char, 5, 1),
            E::Dev(b"./dev/ptmx", tar::EntryType::Char, 5, 2),
            E::Dev(b"./dev/net/tun", tar::EntryType::Char, 10, 200),
            E::Dev(b"./dev/null", tar::EntryType::Char, 1, 3),
        ]),
    );
    let out = env.import(&file, "t-img-devs", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        lines(&out)[..3],
        [
            "berth: not importing the character device \"./dev/console\" (console 5:1, and any other): berth gives machines their own /dev",
            "berth: not importing the character device \"./dev/ptmx\" (ptmx 5:2, and any other): berth gives machines their own /dev",
            "berth: not importing the character device \"./dev/net/tun\" (net/tun 10:200, and any other): berth gives machines their own /dev",
        ]
    );
    let dev = env.machines().join("t-img-devs/dev");
    let mut names: Vec<String> = std::fs::read_dir(&dev)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["net", "null"]);
}

#[test]
fn the_machines_directory_must_be_roots_and_not_writable_by_others() {
    let env = Env::new();
    let file = write(&env, "small.tar", &small_tree(b"one\n"));
    let machines = env.machines();
    std::fs::set_permissions(&machines, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_refused(
        &env.import(&file, "t-img-dir", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-dir\": {} may be written by its group or others (mode 0775): refusing to use it (chmod go-w it)",
            file.display(),
            machines.display()
        ),
    );
    std::fs::set_permissions(&machines, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&machines, Some(1000.into()), None).unwrap();
    let why = format!(
        "{} belongs to uid 1000, not root: refusing to use it (its owner could change the trees in it)",
        machines.display()
    );
    assert_refused(
        &env.import(&file, "t-img-dir", &[]),
        &format!(
            "berth: cannot import {} as machine \"t-img-dir\": {why}",
            file.display()
        ),
    );
    let out_file = env.path("out.tar");
    assert_refused(
        &env.export("t-img-dir", &out_file, &[]),
        &format!(
            "berth: cannot export machine \"t-img-dir\" to {}: {why}",
            out_file.display()
        ),
    );
    nix::unistd::chown(&machines, Some(0.into()), None).unwrap();
    assert!(env.listing().is_empty(), "{:?}", env.listing());
    env.import_ok(&file, "t-img-dir", &[]);
}

/// A tmpfs mounted at a path for the test's time (detached when dropped,
/// before the test's directory is removed).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn at(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(path.join("precious"), "keep\n").unwrap();
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn trees_holding_a_mount_are_not_removed() {
    let env = Env::new();
    let one = write(&env, "one.tar", &small_tree(b"one\n"));
    let two = write(&env, "two.tar", &small_tree(b"two\n"));
    env.import_ok(&one, "t-img-mnt", &[]);
    let tree = env.machines().join("t-img-mnt");
    let real = std::fs::canonicalize(&tree).unwrap();
    let mount = Tmpfs::at(&tree.join("srv/m"));
    assert_refused(
        &env.import(&two, "t-img-mnt", &["--force"]),
        &format!(
            "berth: cannot import {} as machine \"t-img-mnt\": {} holds a mount at {}: refusing to replace it (unmount it first)",
            two.display(),
            tree.display(),
            real.join("srv/m").display()
        ),
    );
    assert_eq!(std::fs::read(tree.join("etc/marker")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(tree.join("srv/m/precious")).unwrap(), b"keep\n");
    assert_eq!(env.listing(), vec!["t-img-mnt"]);
    drop(mount);

    // A leftover holding a mount: left, said, and the import goes on.
    let left = env.machines().join(".import-t-img-mnt2-0123456789abcdef");
    let mount = Tmpfs::at(&left.join("sub"));
    let out = env.import(&two, "t-img-mnt2", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        lines(&out)[0],
        format!(
            "berth: {} holds a mount at {}: not removing it (unmount it first)",
            left.display(),
            std::fs::canonicalize(&left).unwrap().join("sub").display()
        )
    );
    assert_eq!(std::fs::read(left.join("sub/precious")).unwrap(), b"keep\n");
    drop(mount);
    // Unmounted, the next import removes it.
    env.import_ok(&two, "t-img-mnt2", &["--force"]);
    assert_eq!(env.listing(), vec!["t-img-mnt", "t-img-mnt2"]);
}

#[test]
fn a_checksum_of_a_file_is_checked_before_anything_is_extracted() {
    let env = Env::new();
    // Hostile and not the tarball asked for: refused for its checksum,
    // before its first entry is looked at.
    let data = tarball(&[OS_RELEASE, E::File(b"../escape", b"out\n")]);
    let file = write(&env, "hostile.tar", &data);
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert_refused(
        &env.import(&file, "t-img-pre", &["--checksum", &wrong]),
        &format!(
            "berth: cannot import {} as machine \"t-img-pre\": checksum mismatch: its SHA-256 is sha256:{}, --checksum says {wrong}",
            file.display(),
            sha256_hex(&data)
        ),
    );
    assert!(env.listing().is_empty(), "{:?}", env.listing());
    // From a pipe it can only be hashed as it streams: the entry is
    // refused first (and nothing is renamed into place either way).
    let out = env.import_stdin(&file, "t-img-pre", &["--checksum", &wrong]);
    assert_refused(
        &out,
        "berth: cannot import standard input as machine \"t-img-pre\": entry \"../escape\": a \"..\" component is refused",
    );
    assert!(env.listing().is_empty(), "{:?}", env.listing());
}
