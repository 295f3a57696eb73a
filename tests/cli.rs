//! Integration tests of the `unionfs` command: bad input, background and foreground daemons,
//! every way of unmounting, the fuse-overlayfs form, read-only unions.
//!
//! They mount, so they need root and /dev/fuse; without those they are skipped (a failure in
//! strict mode, `UNIONFS_STRICT=1`).
//! Every test works inside its own temporary directory, and its [`Fixture`] tears down, even when
//! the test fails, every mount below that directory and every process whose command line names it.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

const BIN: &str = env!("CARGO_BIN_EXE_unionfs");

/// Whether these tests can mount here, through `common::require`.
fn can_mount() -> bool {
    common::require_root("mounting") && common::require(Path::new("/dev/fuse").exists(), "/dev/fuse (the fuse module)")
}

/// A temporary directory with layers `l1` (top, holding `g` and `sub/`), `l2` (holding `f`), an
/// upper `u`, a mountpoint `m` and a plain file `file`; cleans up everything on drop.
struct Fixture {
    dir: PathBuf,
    children: Vec<Child>,
    // Dropped last, after Drop::drop has unmounted everything below it.
    _tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new().prefix("unionfs-cli-").tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        for d in ["l1/sub", "l2", "u", "m"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("l1/g"), "top\n").unwrap();
        fs::write(dir.join("l2/f"), "bottom\n").unwrap();
        fs::write(dir.join("file"), "").unwrap();
        Fixture {
            dir,
            children: Vec::new(),
            _tmp: tmp,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    /// Every path below the directory (names only, not following mounts of ours).
    fn tree(&self) -> BTreeSet<PathBuf> {
        fn walk(d: &Path, out: &mut BTreeSet<PathBuf>) {
            let Ok(rd) = fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                out.insert(p.clone());
                if e.file_type().is_ok_and(|t| t.is_dir()) && !is_mounted(&p) {
                    walk(&p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.dir, &mut out);
        out
    }

    /// Mounts a tmpfs at `rel` (another filesystem, and a mount that is not ours).
    fn tmpfs(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        p
    }

    /// Starts `unionfs ARGS` as our child (for foreground daemons).
    fn spawn(&mut self, args: &[&str]) -> usize {
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Starts a foreground daemon and waits until it has mounted `m`.
    fn spawn_mounted(&mut self, args: &[&str]) -> usize {
        let i = self.spawn(args);
        let m = self.p("m");
        wait_until(Duration::from_secs(4), "the daemon mounted", || {
            if let Ok(Some(st)) = self.children[i].try_wait() {
                panic!("daemon exited early ({st}): {}", self.stderr_of(i));
            }
            is_mounted(&m)
        });
        i
    }

    fn signal(&self, i: usize, sig: Signal) {
        let pid = Pid::from_raw(self.children[i].id() as i32).unwrap();
        kill_process(pid, sig).unwrap();
    }

    /// Waits (at most 5 s) for child `i` to exit.
    fn wait(&mut self, i: usize) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = self.children[i].try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit within 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr_of(&mut self, i: usize) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.children[i].stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Lazily unmount everything below our directory, deepest first.
        for _ in 0..3 {
            let mut mounts = mounts_below(&self.dir);
            if mounts.is_empty() {
                break;
            }
            mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
            for m in mounts {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Background daemons we started: our binary with our directory in its arguments.
        for pid in daemons_naming(&self.dir) {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = kill_process(p, Signal::KILL);
            }
        }
    }
}

/// Runs `unionfs ARGS` to completion (at most 10 s) in `cwd`.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("unionfs {args:?} did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn run(args: &[&str]) -> Output {
    run_in(Path::new("/"), args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mount_points() -> Vec<PathBuf> {
    unionfs::mountinfo::table().into_iter().map(|e| e.mountpoint).collect()
}

fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mount_points().into_iter().filter(|m| m.starts_with(dir)).collect()
}

/// Live (not zombie) processes running our binary with `needle` in an argument.
fn daemons_naming(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args.first().is_some_and(|a| a == BIN) && args.iter().skip(1).any(|a| a.contains(&needle));
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
            .unwrap_or(true);
        if ours && !zombie {
            out.push(pid);
        }
    }
    out
}

fn assert_one_line_naming(o: &Output, path: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("unionfs: "), "{err}");
    assert!(err.contains(path), "{err:?} should name {path}");
}

#[test]
fn bad_input_is_one_line_exit_2_and_changes_nothing() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    let other = fx.tmpfs("other");
    fs::create_dir(fx.p("u/sub")).unwrap();
    let before = fx.tree();
    let (l1, l2, u, m) = (fx.s("l1"), fx.s("l2"), fx.s("u"), fx.s("m"));
    let other_w = other.join("w").to_string_lossy().into_owned();
    let other_s = other.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, String)> = vec![
        // (lower, upper, extra args, mountpoint) -> path named
        (
            vec![format!("{}:{l2}", fx.s("nope")), u.clone(), m.clone()],
            fx.s("nope"),
        ),
        (vec![fx.s("file"), u.clone(), m.clone()], fx.s("file")),
        (
            vec![l1.clone(), fx.s("missing-upper"), m.clone()],
            fx.s("missing-upper"),
        ),
        (vec![l1.clone(), fx.s("l1/sub"), m.clone()], fx.s("l1/sub")),
        (vec![fx.s("u/sub"), u.clone(), m.clone()], fx.s("u/sub")),
        (vec![l1.clone(), u.clone(), fx.s("l1/sub")], fx.s("l1/sub")),
        (vec![l1.clone(), u.clone(), fx.s("missing-mp")], fx.s("missing-mp")),
        (vec![l1.clone(), u.clone(), fx.s("file")], fx.s("file")),
        (vec![l1.clone(), u.clone(), other_s.clone()], other_s.clone()),
    ];
    for (v, named) in &cases {
        for fg in [false, true] {
            let mut args = vec!["mount", "--lower", &v[0], "--upper", &v[1], &v[2]];
            if fg {
                args.insert(1, "-f");
            }
            let o = run(&args);
            assert_one_line_naming(&o, named);
            assert_eq!(fx.tree(), before, "{args:?} changed the directory");
        }
    }
    // A workdir on another filesystem than the upper.
    for fg in [false, true] {
        let mut args = vec!["mount", "--lower", &l1, "--upper", &u, "--workdir", &other_w, &m];
        if fg {
            args.insert(1, "-f");
        }
        assert_one_line_naming(&run(&args), &other_w);
    }
    assert!(!other.join("w").exists());
    // The fuse-overlayfs form checks the same things.
    let opts = format!("lowerdir={l1}:{},upperdir={u},", fx.s("nope"));
    assert_one_line_naming(&run(&["-o", &opts, &m]), &fx.s("nope"));
    assert_eq!(run(&["-o", "upperdir=/tmp", &m]).status.code(), Some(2));
    // More lowers than a union stacks.
    let many = vec![l1.as_str(); 4097].join(":");
    let o = run(&["mount", "--lower", &many, "--upper", &u, &m]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("4097 lower layers given; at most 4096"));
    assert_eq!(fx.tree(), before);
    assert!(!fx.p(".unionfs-work.u").exists());
    assert!(mounts_below(&fx.dir) == vec![other]);
}

#[test]
fn background_mount_is_usable_and_umount_stops_the_daemon() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    let lower = format!("{}:{}", fx.s("l1"), fx.s("l2"));
    let start = Instant::now();
    let o = run(&["mount", "--lower", &lower, "--upper", &fx.s("u"), &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    assert!(start.elapsed() < Duration::from_secs(3));
    // Usable at once: both layers visible, writes land in the upper.
    assert_eq!(fs::read_to_string(fx.p("m/f")).unwrap(), "bottom\n");
    assert_eq!(fs::read_to_string(fx.p("m/g")).unwrap(), "top\n");
    fs::write(fx.p("m/new"), "x").unwrap();
    assert_eq!(fs::read_to_string(fx.p("u/new")).unwrap(), "x");
    let daemons = daemons_naming(&fx.p("m"));
    assert_eq!(daemons.len(), 1, "one daemon expected: {daemons:?}");

    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&fx.p("m")));
    // `umount` waited for the daemon.
    assert!(daemons_naming(&fx.p("m")).is_empty());
    assert!(!fx.p("m/f").exists());
    assert_eq!(fs::read_to_string(fx.p("u/new")).unwrap(), "x");
}

#[test]
fn sigterm_and_sigint_leave_no_mount_and_exit_0() {
    if !can_mount() {
        return;
    }
    let mut fx = Fixture::new();
    let (lower, u, m) = (fx.s("l1"), fx.s("u"), fx.s("m"));
    for sig in [Signal::TERM, Signal::INT] {
        let i = fx.spawn_mounted(&["mount", "--foreground", "--lower", &lower, "--upper", &u, &m]);
        assert_eq!(fs::read_to_string(fx.p("m/g")).unwrap(), "top\n");
        fx.signal(i, sig);
        let st = fx.wait(i);
        assert!(st.success(), "{sig:?}: {st}: {}", fx.stderr_of(i));
        assert!(!is_mounted(fx.p("m").as_path()));
    }
}

#[test]
fn sigterm_with_open_files_still_unmounts() {
    if !can_mount() {
        return;
    }
    let mut fx = Fixture::new();
    let (lower, u, m) = (fx.s("l1"), fx.s("u"), fx.s("m"));
    let i = fx.spawn_mounted(&["mount", "-f", "--lower", &lower, "--upper", &u, &m]);
    let open = fs::File::open(fx.p("m/g")).unwrap();
    fx.signal(i, Signal::TERM);
    let st = fx.wait(i);
    assert!(st.success(), "{st}: {}", fx.stderr_of(i));
    assert!(!is_mounted(&fx.p("m")));
    drop(open);
}

#[test]
fn fusermount3_and_umount_make_the_daemon_exit_0() {
    if !can_mount() {
        return;
    }
    let mut fx = Fixture::new();
    let (lower, u, m) = (fx.s("l1"), fx.s("u"), fx.s("m"));
    for tool in [["fusermount3", "-u"], ["umount", "--"]] {
        let i = fx.spawn_mounted(&["mount", "-f", "--lower", &lower, "--upper", &u, &m]);
        fs::write(fx.p("m/x"), tool[0]).unwrap();
        let st = Command::new(tool[0]).arg(tool[1]).arg(&m).status().unwrap();
        assert!(st.success(), "{tool:?}");
        let st = fx.wait(i);
        assert!(st.success(), "{tool:?}: {st}: {}", fx.stderr_of(i));
        assert!(!is_mounted(&fx.p("m")));
        assert_eq!(fs::read_to_string(fx.p("u/x")).unwrap(), tool[0]);
    }
}

#[test]
fn fuse_overlayfs_form_with_trailing_comma_symlinked_lower_and_unknown_option() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    std::os::unix::fs::symlink(fx.p("l1"), fx.p("link")).unwrap();
    // A made-up option is refused with one line naming it, before anything is touched: the
    // workdir is not created.
    let before = fx.tree();
    let o = run_in(
        &fx.dir,
        &["-o", "lowerdir=link:l2,upperdir=u,workdir=w,frobnicate=1,nodev,", "m"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        "unionfs: unknown mount option 'frobnicate=1' (the README's \"Mount options\" lists what unionfs takes)"
    );
    assert_eq!(fx.tree(), before, "nothing created");
    assert!(!fx.p("w").exists() && !fx.p(".unionfs-work.u").exists());
    fs::create_dir(fx.p("w")).unwrap();
    // Relative paths from the working directory, as Podman passes them; an option that cannot
    // apply to a FUSE union gets one warning line.
    let o = run_in(
        &fx.dir,
        &["-o", "lowerdir=link:l2,upperdir=u,workdir=w,dax=never,nodev,", "m"],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.trim_end(),
        "unionfs: warning: ignoring option 'dax=never': DAX maps a virtio-fs host's memory window; \
         a union of directories has none",
        "only the warning expected"
    );
    assert_eq!(fs::read_to_string(fx.p("m/g")).unwrap(), "top\n");
    assert_eq!(fs::read_to_string(fx.p("m/f")).unwrap(), "bottom\n");
    fs::write(fx.p("m/g"), "changed").unwrap();
    assert_eq!(fs::read_to_string(fx.p("u/g")).unwrap(), "changed");
    assert_eq!(fs::read_to_string(fx.p("l1/g")).unwrap(), "top\n");
    assert!(!fx.p(".unionfs-work.u").exists(), "the given workdir is used");

    // A fuse-overlayfs option we do not implement warns the same way; -o twice, mountpoint first.
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lower = format!("lowerdir={}", fx.s("link"));
    let o = run(&[&fx.s("m"), "-o", &lower, "-o", "static_nlink,"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ignoring fuse-overlayfs option 'static_nlink'"));
    assert!(fs::write(fx.p("m/new"), "x").is_err(), "no upper: read-only");
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(daemons_naming(&fx.dir).is_empty());
}

#[test]
fn read_only_union_gives_erofs() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    let lower = format!("{}:{}", fx.s("l1"), fx.s("l2"));
    let o = run(&["mount", "--lower", &lower, &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(fx.p("m/f")).unwrap(), "bottom\n");
    let erofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(erofs(fs::write(fx.p("m/new"), "x")));
    assert!(erofs(fs::write(fx.p("m/f"), "x")));
    assert!(erofs(fs::create_dir(fx.p("m/d"))));
    assert!(erofs(fs::remove_file(fx.p("m/g"))));
    // `-o ro` with an upper is read-only too, and leaves the upper alone.
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "mount",
        "--lower",
        &lower,
        "--upper",
        &fx.s("u"),
        "-o",
        "ro",
        &fx.s("m"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(erofs(fs::write(fx.p("m/new"), "x")));
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!fx.p(".unionfs-work.u").exists());
}

#[test]
fn stale_mount_is_reported_and_umount_cleans_it() {
    if !can_mount() {
        return;
    }
    let mut fx = Fixture::new();
    let (lower, u, m) = (fx.s("l1"), fx.s("u"), fx.s("m"));
    let i = fx.spawn_mounted(&["mount", "-f", "--lower", &lower, "--upper", &u, &m]);
    fx.signal(i, Signal::KILL);
    fx.wait(i);
    assert_eq!(
        fs::metadata(fx.p("m")).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    // Remove the workdir the killed daemon made, to see that the failed mount makes none.
    fs::remove_dir_all(fx.p(".unionfs-work.u")).unwrap();
    let o = run(&["mount", "--lower", &lower, "--upper", &u, &m]);
    assert_one_line_naming(&o, &m);
    assert!(stderr(&o).contains("unionfs umount"), "{}", stderr(&o));
    assert!(!fx.p(".unionfs-work.u").exists());
    let o = run(&["umount", &m]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&fx.p("m")));
    assert!(fx.p("m").is_dir());
}

#[test]
fn umount_errors_and_lazy_when_busy() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    // Not a mount, a mount of something else, nothing at all: exit 2.
    let o = run(&["umount", &fx.s("l1")]);
    assert_one_line_naming(&o, &fx.s("l1"));
    let other = fx.tmpfs("other");
    let o = run(&["umount", &other.to_string_lossy()]);
    assert_one_line_naming(&o, &other.to_string_lossy());
    assert!(stderr(&o).contains("tmpfs"));
    assert!(is_mounted(&other));
    let o = run(&["umount", &fx.s("nothing")]);
    assert_one_line_naming(&o, &fx.s("nothing"));

    // Busy: refused with advice, then detached with --lazy; the daemon exits on the last close.
    let o = run(&["mount", "--lower", &fx.s("l1"), "--upper", &fx.s("u"), &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let open = fs::File::open(fx.p("m/g")).unwrap();
    let o = run(&["umount", &fx.s("m")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("busy") && stderr(&o).contains("--lazy"),
        "{}",
        stderr(&o)
    );
    assert!(is_mounted(&fx.p("m")));
    let o = run(&["umount", "-l", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&fx.p("m")));
    assert_eq!(daemons_naming(&fx.p("m")).len(), 1, "serving the open file");
    let mut s = String::new();
    (&open).read_to_string(&mut s).unwrap();
    assert_eq!(s, "top\n");
    drop(open);
    wait_until(Duration::from_secs(3), "the daemon exited", || {
        daemons_naming(&fx.p("m")).is_empty()
    });
}

#[test]
fn log_file_receives_daemon_output() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    let log = fx.s("daemon.log");
    let o = run(&[
        "mount",
        "--log",
        &log,
        "-o",
        "dax=never",
        "--lower",
        &fx.s("l1"),
        &fx.s("m"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ignoring option 'dax=never'"));
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("ignoring option 'dax=never'"), "{text}");
    match fs::metadata(fx.p("m/g")) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        r => panic!("unmounted expected: {r:?}"),
    }
}

/// `--debug` logs every failed request with its operation, its errno and, when a system call
/// failed, the place in the union core that made it; errnos the union decides say so.
#[test]
fn debug_log_names_each_failure_and_where_it_came_from() {
    if !can_mount() {
        return;
    }
    let fx = Fixture::new();
    let log = fx.s("daemon.log");
    let (lowers, upper, work) = (format!("{}:{}", fx.s("l1"), fx.s("l2")), fx.s("u"), fx.s("w"));
    fs::write(fx.p("l1/sub/x"), "").unwrap();
    let o = run(&[
        "mount",
        "--debug",
        "--log",
        &log,
        "--lower",
        &lowers,
        "--upper",
        &upper,
        "--workdir",
        &work,
        &fx.s("m"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // ENODATA from the backing file's getxattr: a failed system call.
    let missing = rustix::fs::getxattr(fx.p("m/g"), "user.unionfs-test-missing", &mut [0u8; 64]);
    assert_eq!(missing.err(), Some(rustix::io::Errno::NODATA));
    // ENOTEMPTY: decided from the union's merged index of the directory, no system call behind it.
    let rmdir = fs::remove_dir(fx.p("m/sub"));
    assert_eq!(rmdir.map_err(|e| e.raw_os_error()), Err(Some(libc::ENOTEMPTY)));
    let o = run(&["umount", &fx.s("m")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&log).unwrap();
    let line = |op: &str, errno: i32| {
        text.lines()
            .find(|l| l.contains(&format!("op=\"{op}\"")) && l.contains(&format!("errno={errno}")))
            .unwrap_or_else(|| panic!("no {op} failure with errno {errno} in the log:\n{text}"))
            .to_owned()
    };
    let getxattr = line("getxattr", libc::ENODATA);
    assert!(
        getxattr.contains("at=\"src/union/"),
        "the failing call's place: {getxattr}"
    );
    let rmdir = line("rmdir", libc::ENOTEMPTY);
    assert!(rmdir.contains("decided by the union"), "{rmdir}");
}
