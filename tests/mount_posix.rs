//! POSIX details an independent suite found (issue 14), through real mounts, each compared with
//! kernel overlayfs over identical layers where the behaviour is the kernel's: xattr reads
//! racing with replaces, file times after writes through a shared mapping, the atime mount
//! options, inode flags (`lsattr`/`chattr`) and their enforcement, and setuid/setgid dropped by
//! every data change. With FUSE passthrough (root's default) and without it.
//!
//! Operations that must run as a plain user re-execute this test binary as that user (the
//! `helper` test below, driven by environment variables).

mod common;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// The ways unionfs is mounted in these tests: FUSE passthrough (root's default), the daemon
/// serving file data with the kernel's writeback cache (every mount without passthrough), and
/// without it (write-through).
const MODES: [(&str, &[&str]); 3] = [
    ("passthrough", &[]),
    ("no-passthrough", &["--no-passthrough"]),
    ("write-through", &["--no-passthrough", "--no-writeback-cache"]),
];

/// Kernel overlayfs over `l`'s layers with extra mount options (`opts`, may be empty).
fn kernel_overlay(l: &Layers, opts: &str) -> KernelOverlay {
    let lower = l
        .lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut o = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        l.upper.display(),
        l.work.display()
    );
    if !opts.is_empty() {
        o = format!("{o},{opts}");
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&l.mnt)
        .output()
        .expect("spawn mount");
    assert!(
        out.status.success(),
        "mount -t overlay -o {o}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    KernelOverlay { mnt: l.mnt.clone() }
}

/// Layers reachable by other users, filled by `fill`.
fn layers(fill: impl Fn(&Layers)) -> Layers {
    let l = Layers::new(1);
    l.open_to_all();
    fill(&l);
    l
}

fn mode_of(p: &Path) -> u32 {
    lstat(p).mode() & 0o7777
}

// ---- the helper: operations run as another user --------------------------------------------

const OP_VAR: &str = "UNIONFS_POSIX_OP";
const PATH_VAR: &str = "UNIONFS_POSIX_PATH";
const ARG_VAR: &str = "UNIONFS_POSIX_ARG";

/// Runs `op` on `path` (with `arg`) as `user`, in this test binary re-executed as the helper.
fn act_as(user: (u32, u32), op: &str, path: &Path, arg: &Path) -> Output {
    let exe = std::env::current_exe().expect("test binary");
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .arg("--clear-groups")
        .arg("--")
        .arg(exe)
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(OP_VAR, op)
        .env(PATH_VAR, path)
        .env(ARG_VAR, arg)
        .stdin(Stdio::null())
        .output()
        .expect("run helper")
}

#[track_caller]
fn act_ok(user: (u32, u32), op: &str, path: &Path, arg: &Path) {
    let out = act_as(user, op, path, arg);
    assert!(
        out.status.success(),
        "{op} on {} as uid {}: {}{}",
        path.display(),
        user.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Not a test of its own: the body of [`act_as`] (does nothing unless asked to).
#[test]
fn helper() {
    let Some(op) = std::env::var_os(OP_VAR) else { return };
    let path = PathBuf::from(std::env::var_os(PATH_VAR).expect("path"));
    let arg = PathBuf::from(std::env::var_os(ARG_VAR).unwrap_or_default());
    run_op(op.to_str().expect("op"), &path, &arg);
}

/// One data change of the file `path` (see [`act_as`]).
fn run_op(op: &str, path: &Path, arg: &Path) {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
            .expect("open")
    };
    let falloc = |mode: rustix::fs::FallocateFlags| {
        rustix::fs::fallocate(open(0), mode, 0, 8192).expect("fallocate");
    };
    use rustix::fs::FallocateFlags as F;
    match op {
        "write" => {
            std::os::unix::fs::FileExt::write_at(&open(0), b"w", 0).expect("write");
        }
        "ftruncate" => open(0).set_len(100).expect("ftruncate"),
        "open-trunc" => drop(open(libc::O_TRUNC)),
        "fallocate" => falloc(F::empty()),
        "fallocate-keep-size" => falloc(F::KEEP_SIZE),
        "punch-hole" => falloc(F::PUNCH_HOLE | F::KEEP_SIZE),
        "zero-range" => falloc(F::ZERO_RANGE),
        "copy-range" => {
            let src = std::fs::File::open(arg).expect("open source");
            let (mut a, mut b) = (0u64, 0u64);
            rustix::fs::copy_file_range(&src, Some(&mut a), open(0), Some(&mut b), 10).expect("copy_file_range");
        }
        "mmap-write" => mmap_write_no_msync(&open(0), b"m"),
        _ => panic!("unknown op {op}"),
    }
}

/// Maps the first page of `f` shared, reads and writes `data` at its start and unmaps it,
/// without msync (what a process exiting after such a write does).
fn mmap_write_no_msync(f: &std::fs::File, data: &[u8]) {
    let len = 4096;
    // SAFETY: a fresh shared mapping of the first page of a file at least that long; we write
    // inside it only and unmap it before returning, and no other reference to it exists.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let first = std::ptr::read_volatile(p as *const u8);
        std::hint::black_box(first);
        std::ptr::copy_nonoverlapping(data.as_ptr(), p as *mut u8, data.len());
        assert_eq!(libc::munmap(p, len), 0);
    }
}

// ---- 5. setuid and setgid ------------------------------------------------------------------

const DATA_OPS: [&str; 9] = [
    "write",
    "ftruncate",
    "open-trunc",
    "fallocate",
    "fallocate-keep-size",
    "punch-hole",
    "zero-range",
    "copy-range",
    "mmap-write",
];
const SETID_MODES: [u32; 5] = [0o6666, 0o2766, 0o6777, 0o2666, 0o4766];

/// Name of the file for one case: mode, operation, whose group.
fn case_name(mode: u32, op: &str, own_group: bool) -> String {
    format!("f{mode:o}-{op}-{}", if own_group { "g" } else { "o" })
}

/// Every case as a file of 8 KiB in lower 0, owned by root and by root's group or the user's.
fn fill_setid_cases(l: &Layers, user_gid: u32) {
    l.put(0, "src", b"0123456789abcdef");
    for mode in SETID_MODES {
        for op in DATA_OPS {
            for own_group in [false, true] {
                let p = l.lower(0, &case_name(mode, op, own_group));
                std::fs::write(&p, vec![b'.'; 8192]).unwrap();
                let gid = if own_group { user_gid } else { 0 };
                std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Runs every case as `user` through `mnt` (files copied up by the change, and files created
/// through the mount) and returns the resulting modes, by file name.
fn setid_results(mnt: &Path, user: (u32, u32)) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for mode in SETID_MODES {
        for op in DATA_OPS {
            for own_group in [false, true] {
                let name = case_name(mode, op, own_group);
                // The same case on a file made through the mount (an upper file from the start).
                let made = mnt.join(format!("{name}-new"));
                std::fs::write(&made, vec![b'.'; 8192]).unwrap();
                std::os::unix::fs::chown(&made, Some(0), Some(if own_group { user.1 } else { 0 })).unwrap();
                std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode)).unwrap();
                for p in [mnt.join(&name), made] {
                    act_ok(user, op, &p, &mnt.join("src"));
                    let file = p.file_name().unwrap().to_string_lossy().into_owned();
                    out.push((file, mode_of(&p)));
                }
            }
        }
    }
    out
}

#[test]
fn setid_bits_are_dropped_by_every_data_change_as_the_kernel_does() {
    let user = ensure_user("unionfs-posix-a");
    let k = layers(|l| fill_setid_cases(l, user.1));
    let kernel = {
        let _ko = kernel_overlay(&k, "");
        setid_results(&k.mnt, user)
    };
    // The rule itself, as kernel overlayfs applies it (so the comparison cannot pass vacuously).
    let find = |name: &str| kernel.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
    assert_eq!(find("f6666-fallocate-o"), Some(0o666));
    assert_eq!(find("f2666-punch-hole-o"), Some(0o666));
    assert_eq!(find("f2666-write-g"), Some(0o2666));
    assert_eq!(find("f6666-mmap-write-o"), Some(0o6666));
    for (label, args) in MODES {
        let l = layers(|l| fill_setid_cases(l, user.1));
        let m = l.mount(args);
        let ours = setid_results(&m.mnt, user);
        let differ: Vec<String> = kernel
            .iter()
            .zip(&ours)
            .filter(|(a, b)| a != b)
            .map(|((n, km), (_, um))| format!("{n}: kernel {km:o}, unionfs {um:o}"))
            .collect();
        assert!(
            differ.is_empty(),
            "{label}: modes differ from kernel overlayfs:\n{}",
            differ.join("\n")
        );
        drop(m);
    }
}

#[test]
fn root_writes_keep_setid_bits() {
    // CAP_FSETID keeps both bits, on the kernel and here.
    for (label, args) in MODES {
        let l = layers(|l| l.put(0, "f", &[b'.'; 8192]));
        std::fs::set_permissions(l.lower(0, "f"), std::fs::Permissions::from_mode(0o6666)).unwrap();
        let m = l.mount(args);
        for op in ["write", "fallocate", "punch-hole", "ftruncate"] {
            run_op(op, &m.path("f"), Path::new(""));
            assert_eq!(mode_of(&m.path("f")), 0o6666, "{label}: {op} by root");
        }
    }
}

// ---- 2. times after writes through a shared mapping ----------------------------------------

/// mtime and ctime (ns) of `p`, asked for alone, as `stat -c '%y %z'` does (a statx that also
/// asks for the atime would refresh everything after a read).
fn mc_times(p: &Path) -> (i128, i128) {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        p,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MTIME | StatxFlags::CTIME,
    )
    .expect("statx");
    let ns = |t: rustix::fs::StatxTimestamp| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    (ns(st.stx_mtime), ns(st.stx_ctime))
}

/// Writes a file through `mnt`, then through a shared mapping (fd closed first, no msync),
/// with `stat`s before that the kernel may cache. Returns whether mtime and ctime had moved
/// while the page was still mapped, and after it was unmapped.
fn mapped_write_times(mnt: &Path) -> (bool, bool) {
    let p = mnt.join("mapped");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // An old mtime set through the mount, then a fresh ctime to compare against.
    set_times(&p, 1_000_000_000, 1_000_000_000);
    let before = mc_times(&p);
    std::thread::sleep(Duration::from_millis(50));
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let len = 4096;
    // SAFETY: as in `mmap_write_no_msync`; the fd is closed right after mapping (the mapping
    // keeps the file), the page is read and written inside the mapping only.
    let moved = unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        drop(f);
        std::hint::black_box(std::ptr::read_volatile(ptr as *const u8));
        std::ptr::copy_nonoverlapping(b"HELLO".as_ptr(), ptr as *mut u8, 5);
        let during = mc_times(&p);
        assert_eq!(libc::munmap(ptr, len), 0);
        during.0 > before.0 && during.1 > before.1
    };
    let after = mc_times(&p);
    assert_eq!(&std::fs::read(&p).unwrap()[..5], b"HELLO");
    (moved, after.0 > before.0 && after.1 > before.1)
}

#[test]
fn writes_through_a_shared_mapping_update_mtime_and_ctime() {
    let k = layers(|_| {});
    let kernel = {
        let _ko = kernel_overlay(&k, "");
        mapped_write_times(&k.mnt)
    };
    assert_eq!(kernel, (true, true), "kernel overlayfs: times move at the write fault");
    for (label, args) in MODES {
        let l = layers(|_| {});
        let m = l.mount(args);
        let (during, after) = mapped_write_times(&m.mnt);
        assert!(after, "{label}: mtime/ctime after the mapped write");
        if label != "write-through" {
            // With passthrough the backing file's times move at the fault, and we let no
            // attributes be cached; with the writeback cache the kernel keeps the times itself.
            assert!(during, "{label}: mtime/ctime while the page is mapped");
        }
        // Write-through, the kernel's FUSE layer learns of the write when it writes the page
        // back (at munmap): see the README.
    }
}

#[test]
fn mapped_write_by_another_process_that_exits() {
    // The issue's own sequence: a 4 KiB file, fsync, another process maps, reads and writes it
    // and exits without msync; stat (cached before) must show the new times.
    let user = ensure_user("unionfs-posix-a");
    for (label, args) in MODES {
        let l = layers(|_| {});
        let m = l.mount(args);
        let p = m.path("f");
        std::fs::write(&p, [b'a'; 4096]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        set_times(&p, 1_000_000_000, 1_000_000_000);
        let before = mc_times(&p);
        std::thread::sleep(Duration::from_millis(50));
        act_ok(user, "mmap-write", &p, Path::new(""));
        let after = mc_times(&p);
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "{label}: {before:?} -> {after:?}"
        );
    }
}

// ---- 4. inode flags ------------------------------------------------------------------------

/// Runs `prog args` and returns its status, stdout and stderr with `strip` removed.
fn run(prog: &str, args: &[&OsStr], strip: &Path) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text = format!(
        "{} {}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.replace(&format!("{}/", strip.display()), "")
}

/// `lsattr`/`chattr` on lower and upper files and a directory through `mnt`, and what the
/// flags then allow. Returns a transcript to compare.
fn flags_transcript(mnt: &Path) -> Vec<String> {
    let p = |n: &str| mnt.join(n);
    let os = |p: &PathBuf| p.as_os_str().to_owned();
    let mut t = Vec::new();
    let mut rec = |what: &str, r: String| t.push(format!("{what}: {r}"));
    std::fs::write(p("new"), b"new\n").unwrap();
    rec("lsattr", run("lsattr", &[&os(&p("lower")), &os(&p("new"))], mnt));
    rec("lsattr -d", run("lsattr", &["-d".as_ref(), &os(&p("dir"))], mnt));
    // Immutable on a lower file: copied up first, then nothing changes it.
    rec("chattr +i", run("chattr", &["+i".as_ref(), &os(&p("lower"))], mnt));
    rec("lsattr +i", run("lsattr", &[&os(&p("lower"))], mnt));
    rec(
        "write",
        format!("{:?}", err_code(OpenOptions::new().append(true).open(p("lower")))),
    );
    rec("unlink", format!("{:?}", err_code(std::fs::remove_file(p("lower")))));
    rec(
        "rename",
        format!("{:?}", err_code(std::fs::rename(p("lower"), p("moved")))),
    );
    rec(
        "link",
        format!("{:?}", err_code(std::fs::hard_link(p("lower"), p("linked")))),
    );
    rec(
        "chmod",
        format!(
            "{:?}",
            err_code(std::fs::set_permissions(
                p("lower"),
                std::fs::Permissions::from_mode(0o600)
            ))
        ),
    );
    rec("setxattr", format!("{:?}", rerr(xset(&p("lower"), "user.x", b"1"))));
    rec("chattr -i", run("chattr", &["-i".as_ref(), &os(&p("lower"))], mnt));
    rec(
        "write after -i",
        format!("{:?}", err_code(std::fs::write(p("lower"), b"changed\n"))),
    );
    // Append-only on an upper file: appends only.
    rec("chattr +a", run("chattr", &["+a".as_ref(), &os(&p("new"))], mnt));
    rec("append", format!("{:?}", err_code(append(&p("new"), b"more\n"))));
    rec("overwrite", format!("{:?}", err_code(std::fs::write(p("new"), b"x"))));
    rec(
        "truncate",
        format!(
            "{:?}",
            err_code(OpenOptions::new().write(true).open(p("new")).and_then(|f| f.set_len(0)))
        ),
    );
    rec(
        "content",
        String::from_utf8_lossy(&std::fs::read(p("new")).unwrap()).into_owned(),
    );
    rec("chattr -a", run("chattr", &["-a".as_ref(), &os(&p("new"))], mnt));
    // No-atime on a merged directory, read back.
    rec("chattr +A", run("chattr", &["+A".as_ref(), &os(&p("dir"))], mnt));
    rec("lsattr -d +A", run("lsattr", &["-d".as_ref(), &os(&p("dir"))], mnt));
    rec("chattr -A", run("chattr", &["-A".as_ref(), &os(&p("dir"))], mnt));
    t
}

fn append(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    OpenOptions::new().append(true).open(p)?.write_all(data)
}

fn fill_flags(l: &Layers) {
    l.put(0, "lower", b"lower\n");
    l.put(0, "dir/inside", b"inside\n");
}

#[test]
fn lsattr_and_chattr_work_and_flags_are_enforced_as_on_the_kernel() {
    let k = layers(fill_flags);
    let kernel = {
        let _ko = kernel_overlay(&k, "");
        flags_transcript(&k.mnt)
    };
    assert!(
        kernel.iter().any(|l| l.starts_with("lsattr +i: 0 ----i")),
        "{kernel:#?}"
    );
    for (label, args) in MODES {
        let l = layers(fill_flags);
        let m = l.mount(args);
        let ours = flags_transcript(&m.mnt);
        assert_eq!(ours, kernel, "{label}");
        // Set on the upper copy; the lower keeps its flags and content.
        assert_eq!(std::fs::read(l.lower(0, "lower")).unwrap(), b"lower\n");
        assert!(l.up("lower").exists());
    }
}

#[test]
fn other_ioctls_are_refused_with_enotty() {
    for (label, args) in MODES {
        let l = layers(|l| l.put(0, "f", b"data"));
        let m = l.mount(args);
        let f = std::fs::File::open(m.path("f")).unwrap();
        // A terminal ioctl (isatty), and FS_IOC_GETVERSION: both reach the daemon.
        assert!(!std::io::IsTerminal::is_terminal(&f), "{label}");
        let mut v: libc::c_long = 0;
        // SAFETY: FS_IOC_GETVERSION writes one long into `v`, which outlives the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut v as *mut libc::c_long) };
        assert_eq!(r, -1, "{label}");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY),
            "{label}"
        );
        // FIEMAP is answered by the kernel for any FUSE file: filefrag finds no extents.
        let out = run("filefrag", &[m.path("f").as_os_str()], &m.mnt);
        assert!(out.starts_with("0 f: 0 extents found"), "{label}: {out}");
    }
}

// ---- 1. getxattr racing with XATTR_REPLACE --------------------------------------------------

/// getxattr as `getfattr` does it: the size first, then the value into a buffer that large.
fn getxattr_twice(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let get = |buf: &mut [u8]| {
        // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes
        // at most `buf.len()` bytes into `buf` (nothing when it is empty).
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    };
    let size = get(&mut [])?;
    let mut buf = vec![0u8; size];
    let n = get(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// getxattr in one call, with room for any value.
fn getxattr_once(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    xget_err(p, name)
}

type XattrReader = fn(&Path, &str) -> Result<Vec<u8>, i32>;

/// The two values each file's `user.race` alternates between, and how readers read it: files
/// with values of one length are read as `getfattr` does (size, then value); files whose values
/// differ in length are read in one call with room for either.
fn race_values(i: usize) -> (Vec<u8>, Vec<u8>, XattrReader) {
    if i % 2 == 0 {
        (
            b"value-A-0123456789".to_vec(),
            b"value-B-9876543210".to_vec(),
            getxattr_twice,
        )
    } else {
        (vec![b'a'; 9], vec![b'b'; 3000], getxattr_once)
    }
}

/// Replaces `user.race` of each file in `files` back and forth (XATTR_REPLACE) while readers
/// read it; returns every failure or unexpected value the readers saw.
fn race_replace(files: &[PathBuf], rounds: usize) -> Vec<String> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bad = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (i, f) in files.iter().enumerate() {
                        let (a, b, read) = race_values(i);
                        match read(f, "user.race") {
                            Ok(v) if v == a || v == b => {}
                            r => bad.lock().unwrap().push(format!("{}: {r:?}", f.display())),
                        }
                    }
                }
            });
        }
        for round in 0..rounds {
            for (i, f) in files.iter().enumerate() {
                let (a, b, _) = race_values(i);
                let v = if round % 2 == 0 { b } else { a };
                rustix::fs::lsetxattr(f, "user.race", &v, rustix::fs::XattrFlags::REPLACE).expect("replace");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    bad.into_inner().unwrap()
}

#[test]
fn getxattr_racing_with_replace_sees_old_or_new_value() {
    for (label, args) in MODES {
        // Lower files: the first replace copies each one up while the readers read it.
        let l = layers(|l| {
            for i in 0..40 {
                l.put(0, &format!("f{i}"), b"data");
                xset(&l.lower(0, &format!("f{i}")), "user.race", &race_values(i).0).unwrap();
            }
        });
        let m = l.mount(args);
        let files: Vec<PathBuf> = (0..40).map(|i| m.path(&format!("f{i}"))).collect();
        // One file also held open (its xattrs are then read through the open handle).
        let _held = std::fs::File::open(&files[0]).unwrap();
        let bad = race_replace(&files, 200);
        assert!(
            bad.is_empty(),
            "{label}: {} bad reads, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
}

// ---- 3. access times -----------------------------------------------------------------------

/// atime (ns) of `p` (not following a symlink).
fn atime_of(p: &Path) -> i128 {
    let md = lstat(p);
    md.atime() as i128 * 1_000_000_000 + md.atime_nsec() as i128
}

/// Runs `access` on `p` and says whether the atime moved (after a pause, so that it could).
fn moved(p: &Path, access: impl FnOnce()) -> &'static str {
    std::thread::sleep(Duration::from_millis(30));
    let before = atime_of(p);
    access();
    if atime_of(p) != before { "updated" } else { "kept" }
}

fn read_all(p: &Path) {
    std::fs::read(p).unwrap();
}

fn list(p: &Path) {
    names(p);
}

/// What reads, listings and runs do to access times through `mnt`, with lower layer `lower`.
fn atime_transcript(mnt: &Path, lower: &Path) -> Vec<String> {
    let p = |n: &str| mnt.join(n);
    let old = 1_000_000_000;
    std::fs::write(p("file"), b"data\n").unwrap();
    std::fs::create_dir(p("dir")).unwrap();
    std::fs::write(p("dir/inside"), b"x").unwrap();
    std::fs::copy("/bin/true", p("prog")).unwrap();
    let mut t = Vec::new();
    // An atime older than the ctime: the next access updates it unless `noatime`.
    set_times(&p("file"), old, old);
    t.push(format!(
        "file, 1st read: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    t.push(format!(
        "file, 2nd read: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    append(&p("file"), b"more\n").unwrap();
    t.push(format!(
        "file, read after a write: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    t.push(format!(
        "file, read again: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    set_times(&p("dir"), old, old);
    t.push(format!("dir, 1st listing: {}", moved(&p("dir"), || list(&p("dir")))));
    t.push(format!("dir, 2nd listing: {}", moved(&p("dir"), || list(&p("dir")))));
    set_times(&p("prog"), old, old);
    let run = || assert!(spawn_fresh_program(&p("prog"), &[]).wait().unwrap().success());
    t.push(format!("program run: {}", moved(&p("prog"), run)));
    // Lower objects: read, listed, followed through the mount; the layer keeps its times.
    let raw = ["lfile", "ldir", "llink"].map(|n| atime_of(&lower.join(n)));
    let view = atime_of(&p("lfile"));
    read_all(&p("lfile"));
    list(&p("ldir"));
    std::fs::read_link(p("llink")).unwrap();
    read_all(&p("llink"));
    t.push(format!(
        "lower file seen: {}",
        if atime_of(&p("lfile")) == view {
            "kept"
        } else {
            "updated"
        }
    ));
    let now = ["lfile", "ldir", "llink"].map(|n| atime_of(&lower.join(n)));
    t.push(format!("lower layer: {}", if now == raw { "kept" } else { "updated" }));
    t
}

fn fill_atime(l: &Layers) {
    l.put(0, "lfile", b"lower\n");
    l.put(0, "ldir/entry", b"e");
    std::os::unix::fs::symlink("lfile", l.lower(0, "llink")).unwrap();
    for n in ["lfile", "ldir", "llink"] {
        set_times(&l.lower(0, n), 1_000_000_000, 1_000_000_000);
    }
}

/// The atime options as the kernel shows them, for each set of options.
fn check_atime_options(opts: &str, expect: &[(&str, &str)]) {
    let k = layers(fill_atime);
    let kernel = {
        let _ko = kernel_overlay(&k, opts);
        atime_transcript(&k.mnt, &k.lowers[0])
    };
    for (what, how) in expect {
        let line = format!("{what}: {how}");
        assert!(
            kernel.contains(&line),
            "kernel overlayfs -o {opts}: no '{line}' in {kernel:#?}"
        );
    }
    for (label, args) in MODES {
        let l = layers(fill_atime);
        let mut args = args.to_vec();
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let m = l.mount(&args);
        let ours = atime_transcript(&m.mnt, &l.lowers[0]);
        assert_eq!(ours, kernel, "{label}, -o {opts:?}");
    }
}

#[test]
fn relatime_is_the_default_and_updates_the_first_access_after_a_change() {
    let expect = [
        ("file, 1st read", "updated"),
        ("file, 2nd read", "kept"),
        ("file, read after a write", "updated"),
        ("dir, 2nd listing", "kept"),
        ("lower layer", "kept"),
    ];
    check_atime_options("", &expect);
    check_atime_options("relatime", &expect);
}

#[test]
fn strictatime_updates_every_access() {
    check_atime_options(
        "strictatime",
        &[
            ("file, 2nd read", "updated"),
            ("dir, 2nd listing", "updated"),
            ("lower layer", "kept"),
        ],
    );
}

#[test]
fn noatime_updates_nothing_not_even_a_program_run() {
    check_atime_options(
        "noatime",
        &[
            ("file, 1st read", "kept"),
            ("dir, 1st listing", "kept"),
            ("program run", "kept"),
            ("lower layer", "kept"),
        ],
    );
}

#[test]
fn nodiratime_keeps_directory_times_only() {
    check_atime_options(
        "strictatime,nodiratime",
        &[
            ("file, 2nd read", "updated"),
            ("dir, 1st listing", "kept"),
            ("lower layer", "kept"),
        ],
    );
    check_atime_options(
        "nodiratime",
        &[("file, 1st read", "updated"), ("dir, 1st listing", "kept")],
    );
}
