//! A plain user mounts through fusermount3: reads, copies up, creates, deletes (whiteouts),
//! makes and removes directories, unmounts with `fusermount3 -u`, mounts again and finds
//! everything as it left it; the lowers are untouched.
//!
//! Setup needs root (it is skipped otherwise) and is idempotent: the account `unionfs-rootless`
//! is created if missing and `/dev/fuse` is made 0666, as desktop distributions ship it.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Tree, is_mounted};

const USER: &str = "unionfs-rootless";

/// uid and gid of [`USER`], creating the account if it is missing.
fn rootless_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(USER).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        // Another run may create it at the same moment: ignore the status, then re-check.
        let _ = Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]).output();
    }
    (
        id("-u").expect("uid of the rootless test user"),
        id("-g").expect("gid of the rootless test user"),
    )
}

/// `setpriv` switching to the test user, ready for the program and its arguments.
fn as_user(uid: u32, gid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg("--");
    c.env("HOME", format!("/home/{USER}"))
        .env("USER", USER)
        .env("LOGNAME", USER);
    c
}

/// Runs a shell script as the test user in `cwd`; returns its output (not checked).
fn sh(uid: u32, gid: u32, cwd: &Path, script: &str) -> Output {
    as_user(uid, gid)
        .args(["/bin/sh", "-c", script])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run a shell as the test user")
}

/// Runs a script that must succeed; returns its stdout.
fn sh_ok(uid: u32, gid: u32, cwd: &Path, script: &str) -> String {
    let out = sh(uid, gid, cwd, script);
    assert!(
        out.status.success(),
        "as {USER}: `{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A daemon started as the test user. Dropping it detaches the mount as root and ends the
/// daemon it started (by its pid only).
struct UserMount {
    child: Option<Child>,
    mnt: PathBuf,
}

impl UserMount {
    fn start(uid: u32, gid: u32, bin: &Path, args: &[OsString], mnt: &Path) -> UserMount {
        let child = as_user(uid, gid)
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unionfs as the test user");
        let mut m = UserMount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                panic!("unionfs (as {USER}) exited before mounting: {st}");
            }
            assert!(Instant::now() < deadline, "mount did not appear at {}", mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Waits for the daemon to exit (after an unmount); its exit code, or None if it had to be killed.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        common::wait_or_kill(self.child.take()?, timeout)
    }
}

impl Drop for UserMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        self.wait(Duration::from_secs(10));
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn plain_user_mounts_writes_deletes_unmounts_and_remounts() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: setting up a plain user needs root");
        return;
    }
    let (uid, gid) = rootless_user();
    // Desktop distributions ship /dev/fuse world-usable; fusermount3 is setuid root.
    set_mode(Path::new("/dev/fuse"), 0o666);

    let dir = tempfile::Builder::new()
        .prefix("unionfs-rootless")
        .tempdir_in("/tmp")
        .expect("tempdir");
    set_mode(dir.path(), 0o755);
    let root = dir.path();
    let (l0, l1) = (root.join("lower0"), root.join("lower1"));
    let (upper, work, mnt) = (root.join("upper"), root.join("work"), root.join("mnt"));
    for d in [&l0, &l1, &upper, &work, &mnt] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let put = |p: PathBuf, data: &str| {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
        std::fs::write(p, data).expect("write lower");
    };
    put(l0.join("top"), "top-over-bottom");
    put(l1.join("top"), "bottom");
    put(l1.join("copyme"), "lower data");
    put(l1.join("gone"), "delete me");
    put(l1.join("sub/keep"), "kept");
    put(l1.join("sub/drop"), "dropped");
    put(l1.join("tree/x"), "x");
    put(l0.join("tree/y"), "y");
    put(l1.join("again/old"), "must stay hidden");
    let chown = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(root)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown -R the test dirs");
    let lowers_before = [Tree::read_raw(&l0), Tree::read_raw(&l1)];

    // The binary must be reachable by the user; if a parent directory is private, use a copy.
    let mut bin = common::bin();
    let reach = sh(uid, gid, root, &format!("test -x '{}'", bin.display()));
    if !reach.status.success() {
        let copy = root.join("unionfs-bin");
        std::fs::copy(&bin, &copy).expect("copy the binary");
        set_mode(&copy, 0o755);
        bin = copy;
    }
    let lower_arg = format!("{}:{}", l0.display(), l1.display());
    let args: Vec<OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        lower_arg.into(),
        "--upper".into(),
        upper.clone().into(),
        "--workdir".into(),
        work.clone().into(),
        mnt.clone().into(),
    ];

    // First session: the user changes things through the mount.
    let mut m = UserMount::start(uid, gid, &bin, &args, &mnt);
    assert_eq!(sh_ok(uid, gid, root, "cat mnt/top"), "top-over-bottom");
    assert_eq!(sh_ok(uid, gid, root, "cat mnt/copyme"), "lower data");
    sh_ok(uid, gid, root, "printf 'written by the user' > mnt/copyme");
    assert_eq!(sh_ok(uid, gid, root, "cat mnt/copyme"), "written by the user");
    sh_ok(uid, gid, root, "printf new > mnt/newfile && echo more >> mnt/newfile");
    assert_eq!(
        sh_ok(uid, gid, root, "stat -c %u:%g mnt/newfile").trim(),
        format!("{uid}:{gid}")
    );
    sh_ok(uid, gid, root, "rm mnt/gone && rm mnt/sub/drop");
    assert!(
        !sh(uid, gid, root, "test -e mnt/gone").status.success(),
        "deleted lower file still visible"
    );
    sh_ok(uid, gid, root, "mkdir mnt/made && printf inside > mnt/made/f");
    sh_ok(uid, gid, root, "mkdir mnt/temp && rmdir mnt/temp");
    sh_ok(uid, gid, root, "rm -r mnt/tree");
    // A directory recreated over a deleted lower one must be opaque.
    sh_ok(
        uid,
        gid,
        root,
        "rm -r mnt/again && mkdir mnt/again && printf fresh > mnt/again/new",
    );
    let expect_view = |when: &str| {
        let listing = sh_ok(uid, gid, root, "cd mnt && LC_ALL=C ls -A . again made sub");
        assert_eq!(
            listing, ".:\nagain\ncopyme\nmade\nnewfile\nsub\ntop\n\nagain:\nnew\n\nmade:\nf\n\nsub:\nkeep\n",
            "{when}: view listing"
        );
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/copyme"), "written by the user", "{when}");
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/newfile"), "newmore\n", "{when}");
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/top"), "top-over-bottom", "{when}");
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/sub/keep"), "kept", "{when}");
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/made/f"), "inside", "{when}");
        assert_eq!(sh_ok(uid, gid, root, "cat mnt/again/new"), "fresh", "{when}");
        for hidden in ["gone", "sub/drop", "tree", "tree/x", "temp", "again/old"] {
            let r = sh(uid, gid, root, &format!("test -e mnt/{hidden} || test -L mnt/{hidden}"));
            assert!(!r.status.success(), "{when}: mnt/{hidden} must not exist");
        }
    };
    expect_view("before unmount");

    // Unmount as the user: the daemon exits 0 and nothing stays mounted.
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(
        m.wait(Duration::from_secs(15)),
        Some(0),
        "unionfs must exit 0 after fusermount3 -u"
    );
    assert!(!is_mounted(&mnt), "mount left behind after fusermount3 -u");
    drop(m);

    // What landed in the upper: whiteouts in a form the user could write.
    let is_whiteout = |dir: &Path, name: &str| {
        let chr =
            std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0);
        chr || std::fs::symlink_metadata(dir.join(format!(".wh.{name}"))).is_ok_and(|m| m.is_file())
    };
    assert!(is_whiteout(&upper, "gone"), "no whiteout for 'gone' in the upper");
    assert!(
        is_whiteout(&upper.join("sub"), "drop"),
        "no whiteout for 'sub/drop' in the upper"
    );
    assert!(is_whiteout(&upper, "tree"), "no whiteout for 'tree' in the upper");
    let chr = std::fs::symlink_metadata(upper.join("gone")).is_ok_and(|m| m.file_type().is_char_device());
    eprintln!("rootless whiteout form: {}", if chr { "char 0/0" } else { ".wh.NAME" });
    let upper_tree = Tree::read_raw(&upper);
    // The recreated directory is opaque, marked in a way a plain user can write.
    let marks = upper_tree.xattrs.get(Path::new("again"));
    let opaque = marks
        .and_then(|x| x.get(std::ffi::OsStr::new("user.overlay.opaque")))
        .is_some_and(|v| v == b"y")
        || upper.join("again/.wh..wh..opq").exists();
    assert!(opaque, "upper/again is not marked opaque (xattrs {marks:?})");
    for p in upper_tree.entries.keys() {
        let md = std::fs::symlink_metadata(upper.join(p)).expect("lstat upper");
        assert_eq!(
            (md.uid(), md.gid()),
            (uid, gid),
            "upper/{} not owned by the user",
            p.display()
        );
    }

    // Second session: everything persisted.
    let mut m = UserMount::start(uid, gid, &bin, &args, &mnt);
    expect_view("after remount");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(
        m.wait(Duration::from_secs(15)),
        Some(0),
        "unionfs must exit 0 after the second fusermount3 -u"
    );
    assert!(!is_mounted(&mnt));
    drop(m);

    assert_eq!(
        [Tree::read_raw(&l0), Tree::read_raw(&l1)],
        lowers_before,
        "lower layers must not change"
    );
}

/// The rootless data path (no passthrough: every read and write goes through the daemon) with
/// `O_DIRECT`: a lower file read with direct reads (no copy-up), a new file written and read
/// with direct I/O, a lower file opened for direct writing (copied up first).
#[test]
fn plain_user_direct_io_reads_and_writes_every_byte() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: setting up a plain user needs root");
        return;
    }
    let (uid, gid) = rootless_user();
    set_mode(Path::new("/dev/fuse"), 0o666);
    let dir = tempfile::Builder::new()
        .prefix("unionfs-rootless-dio")
        .tempdir_in("/tmp")
        .expect("tempdir");
    set_mode(dir.path(), 0o755);
    let root = dir.path();
    let (lower, upper, work, mnt) = (
        root.join("lower"),
        root.join("upper"),
        root.join("work"),
        root.join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let data = common::Rng::new(7).bytes((4 << 20) + 4096);
    std::fs::write(lower.join("image"), &data).expect("write lower");
    std::fs::write(lower.join("db"), &data[..1 << 20]).expect("write lower");
    let ok = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(root)
        .status()
        .expect("chown");
    assert!(ok.success());
    let before = Tree::read_raw(&lower);
    let mut bin = common::bin();
    if !sh(uid, gid, root, &format!("test -x '{}'", bin.display()))
        .status
        .success()
    {
        let copy = root.join("unionfs-bin");
        std::fs::copy(&bin, &copy).expect("copy the binary");
        set_mode(&copy, 0o755);
        bin = copy;
    }
    let args: Vec<OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        lower.clone().into(),
        "--upper".into(),
        upper.clone().into(),
        "--workdir".into(),
        work.clone().into(),
        mnt.clone().into(),
    ];
    let mut m = UserMount::start(uid, gid, &bin, &args, &mnt);
    // Direct reads of a lower file, whole and from an offset split over several requests.
    sh_ok(
        uid,
        gid,
        root,
        "dd if=mnt/image of=out-whole bs=1M iflag=direct status=none",
    );
    assert!(
        std::fs::read(root.join("out-whole")).unwrap() == data,
        "direct read of the lower file"
    );
    sh_ok(
        uid,
        gid,
        root,
        "dd if=mnt/image of=out-part bs=4096 skip=3 count=700 iflag=direct status=none",
    );
    assert!(
        std::fs::read(root.join("out-part")).unwrap() == data[3 * 4096..703 * 4096],
        "direct read at an offset"
    );
    assert!(
        !upper.join("image").exists(),
        "a read-only direct open copied the file up"
    );
    // A new file written and read back with direct I/O.
    sh_ok(
        uid,
        gid,
        root,
        "dd if=out-whole of=mnt/new bs=64k oflag=direct status=none",
    );
    sh_ok(
        uid,
        gid,
        root,
        "dd if=mnt/new of=out-new bs=1M iflag=direct status=none",
    );
    assert!(
        std::fs::read(root.join("out-new")).unwrap() == data,
        "direct write then direct read"
    );
    // A lower file opened for direct writing: copied up, then written in place.
    sh_ok(
        uid,
        gid,
        root,
        "dd if=/dev/zero of=mnt/db bs=4096 seek=10 count=2 oflag=direct conv=notrunc status=none",
    );
    let mut want = data[..1 << 20].to_vec();
    want[10 * 4096..12 * 4096].fill(0);
    sh_ok(uid, gid, root, "dd if=mnt/db of=out-db bs=1M iflag=direct status=none");
    assert!(
        std::fs::read(root.join("out-db")).unwrap() == want,
        "direct write into a copied-up file"
    );
    assert!(std::fs::read(upper.join("db")).unwrap() == want, "the upper copy");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
    drop(m);
    assert_eq!(Tree::read_raw(&lower), before, "the lower layer changed");
}

/// POSIX ACLs on a mount made by a plain user: an ACL a lower layer ships is enforced against
/// that user (the mode alone would let them read), ACLs the user sets and default ACLs they
/// inherit land in the upper and hold after a remount.
#[test]
fn plain_user_mount_enforces_and_inherits_acls() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: setting up a plain user needs root");
        return;
    }
    if !Command::new("setfacl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: setfacl (Debian package acl) is missing");
        return;
    }
    let (uid, gid) = rootless_user();
    set_mode(Path::new("/dev/fuse"), 0o666);
    let dir = tempfile::Builder::new()
        .prefix("unionfs-rootless-acl")
        .tempdir_in("/tmp")
        .expect("tempdir");
    set_mode(dir.path(), 0o755);
    let root = dir.path();
    let (lower, upper, work, mnt) = (
        root.join("lower"),
        root.join("upper"),
        root.join("work"),
        root.join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::create_dir(lower.join("shared")).expect("mkdir");
    let ok = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(root)
        .status()
        .expect("chown");
    assert!(ok.success());
    // A root-owned file the mode lets everyone read, with an entry denying our user.
    std::fs::write(lower.join("denied"), "not for you").expect("write");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("chmod 644 denied && setfacl -m u:{USER}:--- denied"))
        .current_dir(&lower)
        .status()
        .expect("setfacl");
    assert!(st.success());
    let mut bin = common::bin();
    if !sh(uid, gid, root, &format!("test -x '{}'", bin.display()))
        .status
        .success()
    {
        let copy = root.join("unionfs-bin");
        std::fs::copy(&bin, &copy).expect("copy the binary");
        set_mode(&copy, 0o755);
        bin = copy;
    }
    let args: Vec<OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        lower.clone().into(),
        "--upper".into(),
        upper.clone().into(),
        "--workdir".into(),
        work.clone().into(),
        mnt.clone().into(),
    ];
    let mut m = UserMount::start(uid, gid, &bin, &args, &mnt);
    assert!(
        !sh(uid, gid, root, "cat mnt/denied").status.success(),
        "a lower file's ACL entry must deny the mounting user"
    );
    sh_ok(
        uid,
        gid,
        root,
        "setfacl -d -m u::rwx,g::---,o::---,u:root:r-x mnt/shared && umask 022 && echo x > mnt/shared/new && mkdir mnt/shared/sub",
    );
    let acls = |when: &str| {
        let out = sh_ok(
            uid,
            gid,
            root,
            "getfacl -cp mnt/shared/new mnt/shared/sub && stat -c '%n %a' mnt/shared/new",
        );
        assert!(
            out.contains("user:root:r-x"),
            "{when}: the default ACL was not inherited:\n{out}"
        );
        assert!(
            out.contains("default:user:root:r-x"),
            "{when}: the subdirectory lacks the default ACL:\n{out}"
        );
        assert!(
            out.contains("mnt/shared/new 640"),
            "{when}: mode not masked by the default ACL:\n{out}"
        );
        out
    };
    let before = acls("mounted");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
    drop(m);
    let mut m = UserMount::start(uid, gid, &bin, &args, &mnt);
    assert_eq!(acls("after remount"), before);
    assert!(!sh(uid, gid, root, "cat mnt/denied").status.success(), "after remount");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
}
