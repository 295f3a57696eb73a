//! docs/semantics.md, "Permissions and ACLs": inode flags (`lsattr`, `chattr`) read from the
//! visible object and set on its upper copy, enforced as on kernel overlayfs over identical
//! layers in each of our data paths; other ioctls fail with ENOTTY; a plain user's mount refuses
//! `+i` and `+a` and changes nothing (README, "Limits").

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::as_user::*;
use crate::common::*;
use crate::reference::*;

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

/// The flags `lsattr` prints for `p` (run as `user`, or as root without one), or its failure.
fn lsattr_flags(user: Option<(u32, u32)>, p: &Path) -> Result<String, String> {
    let (code, out) = match user {
        Some(user) => user_sh(user, "lsattr \"$1\"", &[p.as_os_str()]),
        None => {
            let out = Command::new("lsattr").arg(p).env("LC_ALL", "C").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            (out.status.code().unwrap_or(-1), text)
        }
    };
    match out.split_once(' ') {
        Some((flags, _)) if code == 0 => Ok(flags.to_string()),
        _ => Err(format!("lsattr {}: {code} {out}", p.display())),
    }
}

#[test]
fn rootless_chattr_immutable_is_refused_and_changes_nothing() {
    // README: "a rootless daemon cannot set +i or +a (they need CAP_LINUX_IMMUTABLE)"; the
    // kernel refuses the owner without that capability before the daemon is asked to set
    // anything. lsattr works.
    let user = rootless_user();
    let l = user_layers(user, |l| l.put(0, "lower", b"lower\n"));
    let m = UserMount::start(user, &l, &[]);
    let p = |n: &str| m.mnt.join(n);
    user_sh_ok(user, "printf 'new\\n' > \"$1\"", &[p("new").as_os_str()]);
    // (file through the mount, the file it shows, whether that is a lower file)
    for (name, raw, lower) in [("lower", l.lower(0, "lower"), true), ("new", l.up("new"), false)] {
        let flags = lsattr_flags(Some(user), &p(name)).unwrap();
        assert_eq!(
            Ok(&flags),
            lsattr_flags(None, &raw).as_ref(),
            "{name}: lsattr shows the file's flags"
        );
        for flag in ["+i", "+a"] {
            let (code, out) = user_sh(user, "chattr \"$1\" \"$2\"", &[flag.as_ref(), p(name).as_os_str()]);
            assert_eq!(code, 1, "{name}: chattr {flag} must fail: {out}");
            assert!(out.contains("Operation not permitted"), "{name}: chattr {flag}: {out}");
            assert_eq!(
                lsattr_flags(Some(user), &p(name)).as_ref(),
                Ok(&flags),
                "{name} after {flag}"
            );
        }
        if lower {
            assert!(!l.up(name).exists(), "a refused chattr copied {name} up");
        }
        // Still writable by its owner, and nothing immutable or append-only anywhere.
        user_sh_ok(user, "printf 'more\\n' >> \"$1\"", &[p(name).as_os_str()]);
        user_sh_ok(user, "printf 'over\\n' > \"$1\"", &[p(name).as_os_str()]);
        assert_eq!(user_sh_ok(user, "cat \"$1\"", &[p(name).as_os_str()]), "over\n");
        let up = lsattr_flags(None, &l.up(name)).unwrap();
        assert!(!up.contains('i') && !up.contains('a'), "{name}: upper flags {up}");
    }
    assert_eq!(std::fs::read(l.lower(0, "lower")).unwrap(), b"lower\n");
    m.finish();
}

/// Every change inside (and of) a directory `d`, and of a file `other/prot`, that are immutable,
/// then append-only, run in
/// `mnt` as `user` (or root): each line is the command, its exit status and the error text, so
/// that the errno each operation meets first can be compared with kernel overlayfs. Root sets
/// and clears the flags.
fn dir_flags_transcript(mnt: &Path, user: Option<(u32, u32)>) -> Vec<String> {
    const OPS: &str = r#"
cd "$1" || exit 1
t() { out=$("$@" 2>&1); rc=$?; out=$(printf %s "$out" | tr '\n' ' '); echo "$*: $rc ${out##*: }"; }
t rmdir d/sub
t rmdir d/empty
t rmdir d/none
t rmdir d/f
t unlink d/f
t unlink d/none
t unlink d/sub
t mv -T d/f d/g
t mv -T d/f other/f
t mv -T other/x d/x
t mv -T other/y d/f
t mv -T other/dir d/sub
t mv -T d/sub other/sub
t ln other/x d/l
t ln other/x d/f
t mkdir d/new
t mkdir d/sub
t touch d/newfile
t ln -s x d/s
t mkfifo d/fifo
t mv -T d other/d
t rmdir d/sub/inner
t chmod 700 d
t setfattr -n user.x -v 1 d
t touch -d @1000000000 d
t sh -c 'echo appended >> d/f'
t chmod 606 d/f
t cat d/f
t ls d
t sh -c 'echo more >> other/prot'
t sh -c 'echo over > other/prot'
t truncate -s 0 other/prot
t chmod 600 other/prot
t touch -d @1000000000 other/prot
t setfattr -n user.x -v 1 other/prot
t ln other/prot other/prot-link
t mv -T other/prot other/prot-moved
t unlink other/prot
t cat other/prot
"#;
    let run_ops = || match user {
        Some(u) => user_sh(u, OPS, &[mnt.as_os_str()]).1,
        None => {
            let out = Command::new("sh")
                .args(["-c", OPS, "sh"])
                .arg(mnt)
                .env("LC_ALL", "C")
                .output()
                .expect("sh");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let targets = ["d", "other/prot"];
    let mut t = Vec::new();
    let chattr = |t: &mut Vec<String>, flag: &str| {
        for p in targets {
            let out = run("chattr", &[flag.as_ref(), mnt.join(p).as_os_str()], mnt);
            t.push(format!("chattr {flag} {p}: {out}"));
        }
    };
    for flag in ["+i", "+a"] {
        chattr(&mut t, flag);
        t.extend(run_ops().lines().map(|l| format!("{flag} {l}")));
        chattr(&mut t, &flag.replace('+', "-"));
    }
    t
}

/// `d` (files, an empty and a non-empty subdirectory) and `other` in the lower, open to a
/// plain user's changes.
fn fill_dir_flags(l: &Layers) {
    l.put(0, "d/f", b"f\n");
    l.put(0, "d/sub/inner/i", b"i\n");
    l.put(0, "other/x", b"x\n");
    l.put(0, "other/y", b"y\n");
    l.put(0, "other/dir/z", b"z\n");
    l.put(0, "other/prot", b"p\n");
    std::fs::create_dir(l.lower(0, "d/empty")).expect("mkdir");
    let st = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&l.lowers[0])
        .status()
        .expect("chmod");
    assert!(st.success());
}

#[test]
fn changes_in_an_immutable_or_append_only_directory_meet_the_kernels_errno_first() {
    let user = user(USER_A);
    for who in [None, Some(user)] {
        let k = layers(fill_dir_flags);
        let kernel = {
            let _ko = kernel_overlay(&k, "");
            dir_flags_transcript(&k.mnt, who)
        };
        assert!(
            kernel.iter().any(|l| l == "+i rmdir d/sub: 1 Operation not permitted")
                && kernel
                    .iter()
                    .any(|l| l == "+i unlink other/prot: 1 Operation not permitted")
                && kernel.iter().any(|l| l == "+a sh -c echo more >> other/prot: 0 "),
            "{kernel:#?}"
        );
        // The kernel's FUSE compares a victim's type with the call before it asks us (it cannot
        // know a FUSE inode's flags): there, and only there, the type's errno comes first
        // (docs/semantics.md, "Permissions and ACLs").
        let kernel: Vec<String> = kernel
            .iter()
            .map(|l| {
                let fuse_first = |op: &str, errno: &str| {
                    ["+i", "+a"]
                        .iter()
                        .find(|f| *l == format!("{f} {op}: 1 Operation not permitted"))
                        .map(|f| format!("{f} {op}: 1 {errno}"))
                };
                fuse_first("rmdir d/f", "Not a directory")
                    .or_else(|| fuse_first("unlink d/sub", "Is a directory"))
                    .unwrap_or_else(|| l.clone())
            })
            .collect();
        for (label, args) in MODES {
            let l = layers(fill_dir_flags);
            let m = l.mount(args);
            let ours = dir_flags_transcript(&m.mnt, who);
            let diff: Vec<String> = kernel
                .iter()
                .zip(&ours)
                .filter(|(k, o)| k != o)
                .map(|(k, o)| format!("kernel: {k}\nours:   {o}"))
                .collect();
            assert!(
                diff.is_empty() && kernel.len() == ours.len(),
                "{label}, as {}:\n{}",
                who.map_or("root".to_string(), |u| format!("uid {}", u.0)),
                diff.join("\n")
            );
            drop(m);
            assert_eq!(std::fs::read(l.lower(0, "d/f")).expect("lower"), b"f\n", "the lower");
        }
    }
}

#[test]
fn a_directorys_protection_is_kept_as_kernel_overlayfs_keeps_it() {
    let l = layers(fill_dir_flags);
    {
        let m = l.mount(&[]);
        run("chattr", &["+i".as_ref(), m.path("d").as_os_str()], &m.mnt);
        // A file's content inside an immutable directory still changes (copied up into it).
        append(&m.path("d/f"), b"more\n").expect("append to a file in an immutable directory");
    }
    // Not on the upper directory itself (it must take copy-ups), but in its protattr xattr.
    let flags = run("lsattr", &["-d".as_ref(), l.up("d").as_os_str()], l.dir.path());
    assert!(!flags.contains("i"), "the upper directory itself is immutable: {flags}");
    assert_eq!(xget(&l.up("d"), "trusted.overlay.protattr").expect("protattr"), b"i");
    let _ko = kernel_overlay(&l, "");
    let flags = run("lsattr", &["-d".as_ref(), l.mnt.join("d").as_os_str()], &l.mnt);
    assert!(flags.contains("----i"), "kernel overlayfs reads it: {flags}");
    assert_eq!(
        err_code(std::fs::write(l.mnt.join("d/new"), b"x")),
        Some(libc::EPERM),
        "kernel overlayfs enforces it"
    );
    assert_eq!(std::fs::read(l.mnt.join("d/f")).expect("read"), b"f\nmore\n");
}
