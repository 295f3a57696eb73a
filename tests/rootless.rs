//! A plain user mounts through fusermount3: reads, copies up, creates, deletes (whiteouts),
//! makes and removes directories, unmounts with `fusermount3 -u`, mounts again and finds
//! everything as it left it; the lowers are untouched. Direct I/O on such a mount (every read
//! and write served by the daemon) runs the scenarios of the mount tests' `data::direct_io` as
//! the plain user: this test binary starts itself again as that user to run them.
//!
//! Needs root (it is skipped otherwise, a failure in strict mode) to act as the account
//! `unionfs-rootless-user`, which scripts/setup.sh creates; it also makes `/dev/fuse` 0666, as
//! desktop distributions ship it.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Tree, direct_io, is_mounted};

const USER: &str = common::ROOTLESS_USER;

/// `setpriv` switching to the test user, ready for the program and its arguments.
fn as_user(uid: u32, gid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg("--");
    c.env("HOME", common::account(USER).home)
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

/// `path` if the test user can execute it, else a copy in `dir` they can (a parent directory of
/// the build may be private).
fn reachable_program(uid: u32, gid: u32, dir: &Path, path: &Path) -> PathBuf {
    if sh(uid, gid, dir, &format!("test -x '{}'", path.display()))
        .status
        .success()
    {
        return path.to_path_buf();
    }
    let copy = dir.join(path.file_name().expect("program name"));
    std::fs::copy(path, &copy).expect("copy the program");
    set_mode(&copy, 0o755);
    copy
}

/// Whether the test runs as root, through `common::require`.
fn root_or_skip() -> bool {
    common::require_root("acting as the plain user")
}

/// The layers of a rootless test in a fresh directory below /tmp that the test user can reach:
/// the lowers (top first), the upper, the workdir and the mount point, all root's until
/// [`RootlessDirs::chown_to_user`].
struct RootlessDirs {
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

/// Root's set-up of a rootless test: the test user and a world-usable /dev/fuse (both made by
/// scripts/setup.sh, checked here), and the directories (the lowers named `lowers`, top first)
/// in a temporary directory `prefix…` in /tmp. None, after saying the test is skipped, when not
/// run as root.
fn rootless_dirs(prefix: &str, lowers: &[&str]) -> Option<RootlessDirs> {
    if !root_or_skip() {
        return None;
    }
    let (uid, gid) = common::user(USER);
    common::assert_dev_fuse_for_everyone();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir");
    set_mode(dir.path(), 0o755);
    let root = dir.path();
    let lowers: Vec<PathBuf> = lowers.iter().map(|name| root.join(name)).collect();
    let (upper, work, mnt) = (root.join("upper"), root.join("work"), root.join("mnt"));
    for d in lowers.iter().chain([&upper, &work, &mnt]) {
        std::fs::create_dir(d).expect("mkdir");
    }
    Some(RootlessDirs {
        dir,
        uid,
        gid,
        lowers,
        upper,
        work,
        mnt,
    })
}

/// `mount --foreground --lower LOWERS --upper UPPER --workdir WORK MNT`.
fn mount_args(lowers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> Vec<OsString> {
    vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        common::lower_arg(lowers),
        "--upper".into(),
        upper.into(),
        "--workdir".into(),
        work.into(),
        mnt.into(),
    ]
}

impl RootlessDirs {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Hands everything below the test directory to the test user (`chown -R`).
    fn chown_to_user(&self) {
        let ok = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(self.root())
            .status()
            .expect("chown");
        assert!(ok.success(), "chown -R the test dirs");
    }

    /// `bin` started as the test user, mounting the lowers, upper and workdir at the mount point.
    fn mount(&self, bin: &Path) -> UserMount {
        let args = mount_args(&self.lowers, &self.upper, &self.work, &self.mnt);
        UserMount::start(self.uid, self.gid, bin, &args, &self.mnt)
    }
}

#[test]
fn plain_user_mounts_writes_deletes_unmounts_and_remounts() {
    let Some(d) = rootless_dirs("unionfs-rootless", &["lower0", "lower1"]) else {
        return;
    };
    let (uid, gid, root) = (d.uid, d.gid, d.root());
    let (l0, l1, upper, mnt) = (&d.lowers[0], &d.lowers[1], &d.upper, &d.mnt);
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
    d.chown_to_user();
    let lowers_before = [Tree::read_raw(l0), Tree::read_raw(l1)];

    // The binary must be reachable by the user; if a parent directory is private, use a copy.
    let bin = reachable_program(uid, gid, root, &common::bin());

    // First session: the user changes things through the mount.
    let mut m = d.mount(&bin);
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
    assert!(!is_mounted(mnt), "mount left behind after fusermount3 -u");
    drop(m);

    // What landed in the upper: whiteouts in a form the user could write.
    let is_whiteout = |dir: &Path, name: &str| {
        let chr =
            std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0);
        chr || std::fs::symlink_metadata(dir.join(format!(".wh.{name}"))).is_ok_and(|m| m.is_file())
    };
    assert!(is_whiteout(upper, "gone"), "no whiteout for 'gone' in the upper");
    assert!(
        is_whiteout(&upper.join("sub"), "drop"),
        "no whiteout for 'sub/drop' in the upper"
    );
    assert!(is_whiteout(upper, "tree"), "no whiteout for 'tree' in the upper");
    let chr = std::fs::symlink_metadata(upper.join("gone")).is_ok_and(|m| m.file_type().is_char_device());
    eprintln!("rootless whiteout form: {}", if chr { "char 0/0" } else { ".wh.NAME" });
    let upper_tree = Tree::read_raw(upper);
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
    let mut m = d.mount(&bin);
    expect_view("after remount");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(
        m.wait(Duration::from_secs(15)),
        Some(0),
        "unionfs must exit 0 after the second fusermount3 -u"
    );
    assert!(!is_mounted(mnt));
    drop(m);

    assert_eq!(
        [Tree::read_raw(l0), Tree::read_raw(l1)],
        lowers_before,
        "lower layers must not change"
    );
}

/// The rootless data path (no passthrough: every read and write goes through the daemon) with
/// `O_DIRECT`: a lower file read with direct reads (no copy-up), a new file written and read
/// with direct I/O, a lower file opened for direct writing (copied up first).
#[test]
fn plain_user_direct_io_reads_and_writes_every_byte() {
    let Some(d) = rootless_dirs("unionfs-rootless-dio", &["lower"]) else {
        return;
    };
    let (uid, gid, root) = (d.uid, d.gid, d.root());
    let (lower, upper) = (&d.lowers[0], &d.upper);
    let data = common::Rng::new(7).bytes((4 << 20) + 4096);
    std::fs::write(lower.join("image"), &data).expect("write lower");
    std::fs::write(lower.join("db"), &data[..1 << 20]).expect("write lower");
    d.chown_to_user();
    let before = Tree::read_raw(lower);
    let bin = reachable_program(uid, gid, root, &common::bin());
    let mut m = d.mount(&bin);
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
    assert_eq!(Tree::read_raw(lower), before, "the lower layer changed");
}

/// POSIX ACLs on a mount made by a plain user: an ACL a lower layer ships is enforced against
/// that user (the mode alone would let them read), ACLs the user sets and default ACLs they
/// inherit land in the upper and hold after a remount.
#[test]
fn plain_user_mount_enforces_and_inherits_acls() {
    if !root_or_skip() || !common::require_program("setfacl", "acl") {
        return;
    }
    let Some(d) = rootless_dirs("unionfs-rootless-acl", &["lower"]) else {
        return;
    };
    let (uid, gid, root) = (d.uid, d.gid, d.root());
    let lower = &d.lowers[0];
    std::fs::create_dir(lower.join("shared")).expect("mkdir");
    d.chown_to_user();
    // A root-owned file the mode lets everyone read, with an entry denying our user.
    std::fs::write(lower.join("denied"), "not for you").expect("write");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("chmod 644 denied && setfacl -m u:{USER}:--- denied"))
        .current_dir(lower)
        .status()
        .expect("setfacl");
    assert!(st.success());
    let bin = reachable_program(uid, gid, root, &common::bin());
    let mut m = d.mount(&bin);
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
    let mut m = d.mount(&bin);
    assert_eq!(acls("after remount"), before);
    assert!(!sh(uid, gid, root, "cat mnt/denied").status.success(), "after remount");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
}

/// The environment variable that hands the mount point to [`direct_io_matrix_as_the_plain_user`].
const DIO_MNT_ENV: &str = "UNIONFS_ROOTLESS_DIO_MNT";
const DIO_CHILD: &str = "direct_io_matrix_as_the_plain_user";

/// The `O_DIRECT` matrix of the mount tests' `data::direct_io` on a mount a plain user made
/// through fusermount3 (no passthrough: the daemon serves every read and write), run by that
/// user: direct reads of a lower file opened read-only (aligned sizes from 512 bytes to 4 MiB at
/// offsets the kernel splits; nothing copied up), direct writes and reads of a new file, direct writes into a lower
/// file copied up by the open, a direct reader opened before another descriptor copies the file
/// up, and direct and buffered opens of one file. Every byte is compared, through the mount and
/// afterwards in the upper; the lower is untouched.
#[test]
fn plain_user_direct_io_matrix_compares_every_byte() {
    let Some(d) = rootless_dirs("unionfs-rootless-diomatrix", &["lower"]) else {
        return;
    };
    let (uid, gid, root) = (d.uid, d.gid, d.root());
    let (lower, upper, mnt) = (&d.lowers[0], &d.upper, &d.mnt);
    let (old, new) = direct_io::before_copy_up_data();
    std::fs::write(lower.join("image.raw"), direct_io::image_data()).expect("write lower");
    std::fs::write(lower.join("vm.img"), direct_io::vm_data()).expect("write lower");
    std::fs::write(lower.join("data"), &old).expect("write lower");
    d.chown_to_user();
    let before = Tree::read_raw(lower);
    let bin = reachable_program(uid, gid, root, &common::bin());
    let exe = reachable_program(uid, gid, root, &std::env::current_exe().expect("test binary"));
    let mut m = d.mount(&bin);
    let out = as_user(uid, gid)
        .arg(&exe)
        .args(["--exact", DIO_CHILD, "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIO_MNT_ENV, mnt)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary as the test user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the direct I/O matrix as {USER} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
    drop(m);
    assert!(
        !upper.join("image.raw").exists(),
        "a read-only direct open copied the file up"
    );
    assert!(
        std::fs::read(upper.join("new.img")).unwrap() == direct_io::new_file_expected(),
        "upper new.img"
    );
    assert!(
        std::fs::read(upper.join("vm.img")).unwrap() == direct_io::copy_up_expected(),
        "upper vm.img"
    );
    assert!(std::fs::read(upper.join("data")).unwrap() == new, "upper data");
    for name in ["new.img", "vm.img", "data", "mixed"] {
        let md = std::fs::metadata(upper.join(name)).expect("upper file");
        assert_eq!((md.uid(), md.gid()), (uid, gid), "upper/{name} not owned by the user");
    }
    assert_eq!(Tree::read_raw(lower), before, "the lower layer changed");
}

/// The half of [`plain_user_direct_io_matrix_compares_every_byte`] that runs as the plain user,
/// in the mount named by `UNIONFS_ROOTLESS_DIO_MNT`; does nothing without it.
#[test]
#[ignore = "helper: run as the plain user by plain_user_direct_io_matrix_compares_every_byte"]
fn direct_io_matrix_as_the_plain_user() {
    let Some(mnt) = std::env::var_os(DIO_MNT_ENV).map(PathBuf::from) else {
        eprintln!("nothing to do: {DIO_MNT_ENV} is not set (plain_user_direct_io_matrix_compares_every_byte sets it)");
        return;
    };
    assert!(
        !rustix::process::geteuid().is_root(),
        "the matrix is meant to run as the plain user"
    );
    direct_io::lower_direct_reads(&mnt.join("image.raw"), &direct_io::image_data(), "rootless");
    direct_io::new_file_direct_writes(&mnt.join("new.img"), "rootless");
    direct_io::copy_up_direct_writes(&mnt.join("vm.img"), "rootless");
    direct_io::direct_reader_across_copy_up(&mnt.join("data"), "rootless");
    direct_io::direct_and_buffered_coherent(&mnt.join("mixed"), "rootless");
}

/// A lower directory the daemon of a plain user cannot search (root's, mode 0700: /root,
/// /etc/ssl/private in a system tree) cannot have its opaque marker read. Nothing of a lower
/// directory below it may show (its contents stay an error), but its own name and attributes
/// need no marker: it lists and stats as on the plain filesystem and with fuse-overlayfs.
#[test]
fn plain_user_lists_and_stats_a_lower_directory_it_cannot_search() {
    let Some(d) = rootless_dirs("unionfs-rootless-nosearch", &["lower0", "lower1"]) else {
        return;
    };
    let (uid, gid, root) = (d.uid, d.gid, d.root());
    let (l0, l1) = (&d.lowers[0], &d.lowers[1]);
    std::fs::create_dir(l1.join("private")).expect("mkdir");
    std::fs::write(l1.join("private/secret"), "hidden below an opaque directory").expect("write");
    std::fs::write(l1.join("pub"), "public").expect("write");
    d.chown_to_user();
    // The top layer's `private`: root's, 0700, marked opaque in the form a plain user can read
    // when allowed to search the directory.
    std::fs::create_dir(l0.join("private")).expect("mkdir");
    std::fs::write(l0.join("private/.wh..wh..opq"), "").expect("opaque marker");
    std::fs::set_permissions(l0.join("private"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(l0, Some(uid), Some(gid)).expect("chown lower0");
    let bin = reachable_program(uid, gid, root, &common::bin());
    let mut m = d.mount(&bin);
    // Never what the directory may hide.
    let r = sh(uid, gid, root, "cat mnt/private/secret");
    assert!(
        !r.status.success() && !String::from_utf8_lossy(&r.stdout).contains("hidden"),
        "the content below a directory whose marker cannot be read showed"
    );
    assert!(!sh(uid, gid, root, "ls mnt/private").status.success(), "listed");
    // Its name and attributes, as on the plain filesystem.
    assert_eq!(sh_ok(uid, gid, root, "LC_ALL=C ls -A mnt"), "private\npub\n");
    assert_eq!(sh_ok(uid, gid, root, "stat -c '%a %u' mnt/private").trim(), "700 0");
    sh_ok(uid, gid, root, "fusermount3 -u mnt");
    assert_eq!(m.wait(Duration::from_secs(15)), Some(0));
}
