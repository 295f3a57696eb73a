//! docs/semantics.md, "Deep trees", through real mounts: a lower tree deeper than any path can
//! name, then through the view `mv` of it (every directory copied up and made opaque), a write
//! at its bottom (copy-up of the whole parent chain), `find` and `rm -rf`. Each completes,
//! survives a remount, and the daemon serves on afterwards. A hostile layer
//! (`hostile_very_deep_tree`): a lower tree 250 levels deep read, copied up, renamed and deleted
//! at its bottom, and another made through the view.
//!
//! The daemon runs with a 256 KiB thread stack (fuser's workers get std's 2 MiB): a request
//! handler whose stack grows with the tree fails here long before it could in production.
//!
//! How deep a tree the daemon can serve depends on its open-file limit, not on its stack: it
//! holds an `O_PATH` fd for every directory the kernel holds (a path pins all its parents), two
//! while a directory is being copied up, and raises its limit to the hard limit it inherits
//! from this test. So the first tests go as deep as that allows (100,000 levels where the limit
//! allows it), and the last goes 100,000 deep regardless: where the limit is lower, what needs
//! more fds must fail with EMFILE, and the daemon live on.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::common::deep::*;
use crate::common::*;

/// The daemon's thread stack in these tests (bytes).
const STACK: &str = "262144";

/// How deep these tests go: 100,000 levels, or as deep as the daemon's open-file limit allows
/// (two fds a level while a tree is copied up, and room for the rest).
fn depth() -> usize {
    let allowed = usize::try_from(nofile_hard_limit().saturating_sub(2_000) / 2).unwrap_or(DEPTH);
    DEPTH.min(allowed)
}

/// A lower layer holding `top/d/…/d` with the file `f` ("bottom\n") at the bottom, an upper, a
/// workdir (all on a tmpfs) and a mountpoint.
struct Deep {
    depth: usize,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    _s: Scratch,
}

impl Deep {
    fn new(depth: usize) -> Deep {
        let s = Scratch::new("2g");
        let (lower, upper, work) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("work"));
        let mnt = s.beside("mnt");
        let start = Instant::now();
        make_chain(&lower, "top", depth, |level, dir| {
            if level == depth {
                put_at(dir, "f", b"bottom\n");
            }
        });
        eprintln!(
            "a lower tree {depth} levels deep (open-file hard limit {}), made in {:?}",
            nofile_hard_limit(),
            start.elapsed()
        );
        Deep {
            depth,
            lower,
            upper,
            work,
            mnt,
            _s: s,
        }
    }

    fn mount(&self) -> Mount {
        let args: Vec<OsString> = vec![
            "mount".into(),
            "--foreground".into(),
            "--lower".into(),
            self.lower.clone().into(),
            "--upper".into(),
            self.upper.clone().into(),
            "--workdir".into(),
            self.work.clone().into(),
            self.mnt.clone().into(),
        ];
        Mount::start_with_env(&args, &self.mnt, &[("RUST_MIN_STACK", STACK)])
    }

    /// The bottom file of the tree at `top` in the view.
    fn bottom(&self, top: &str) -> String {
        let dir = walk_down(&self.mnt, top, self.depth).unwrap_or_else(|(l, e)| panic!("level {l} of {top}: {e}"));
        read_at(dir.as_fd(), "f")
    }
}

/// Runs `cmd`, timing it; its stderr is kept (quiet commands only).
fn run(what: &str, cmd: &mut Command) -> Output {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    eprintln!("{what}: {:?}, {}", start.elapsed(), out.status);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).chars().take(2_000).collect()
}

/// The daemon runs, the mount answers, and a new file can be written and read back.
fn alive(m: &Mount) {
    assert!(daemon_alive(m), "the daemon died");
    std::fs::metadata(&m.mnt).expect("stat of the mountpoint");
    std::fs::write(m.path("alive"), b"yes").expect("write a new file");
    assert_eq!(std::fs::read(m.path("alive")).expect("read it back"), b"yes");
    std::fs::remove_file(m.path("alive")).expect("remove it");
}

/// [`alive`], once the kernel has forgotten the deep path a failed operation left it holding:
/// until then, the daemon's fds are all taken by the directories the kernel holds, and every
/// open through the mount fails with EMFILE too.
fn alive_once_forgotten(m: &Mount) {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop caches (needs root)");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::write(m.path("alive"), b"yes").is_err() {
        assert!(
            Instant::now() < deadline,
            "no file can be made even after the kernel forgot"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    alive(m);
}

/// `find MNT | wc -l`.
fn find_count(m: &Mount) -> usize {
    let out = run(
        "find MNT | wc -l",
        Command::new("sh").args(["-c", "find \"$1\" | wc -l", "sh"]).arg(&m.mnt),
    );
    assert!(out.status.success(), "find: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

#[test]
fn mv_of_a_deep_lower_tree() {
    let t = Deep::new(depth());
    let m = t.mount();
    let out = run("mv top top2", Command::new("mv").arg(m.path("top")).arg(m.path("top2")));
    assert!(out.status.success(), "mv: {}", stderr(&out));
    assert_eq!(names(&m.mnt), ["top2"]);
    assert_eq!(t.bottom("top2"), "bottom\n");
    alive(&m);
    assert_eq!(
        find_count(&m),
        t.depth + 2,
        "the mountpoint, {} directories and f",
        t.depth
    );
    drop(m);
    let m = t.mount();
    assert_eq!(names(&m.mnt), ["top2"], "after a remount");
    assert_eq!(t.bottom("top2"), "bottom\n", "after a remount");
    alive(&m);
    drop(m);
    let lower = walk_down(&t.lower, "top", t.depth).expect("the lower tree");
    assert_eq!(read_at(lower.as_fd(), "f"), "bottom\n", "the lower is unchanged");
}

#[test]
fn write_at_the_bottom_of_a_deep_lower_tree_copies_up_its_parents() {
    let t = Deep::new(depth());
    let m = t.mount();
    let start = Instant::now();
    let bottom = walk_down(&m.mnt, "top", t.depth).expect("walk down the view");
    let f = rustix::fs::openat(
        &bottom,
        "f",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::APPEND | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open the bottom file for writing (copy-up of its parents)");
    rustix::io::write(&f, b"more\n").expect("write");
    drop((f, bottom));
    eprintln!("copy-up of {} parents and the write: {:?}", t.depth, start.elapsed());
    assert_eq!(t.bottom("top"), "bottom\nmore\n");
    let up = walk_down(&t.upper, "top", t.depth).expect("the parents are in the upper");
    assert_eq!(read_at(up.as_fd(), "f"), "bottom\nmore\n");
    alive(&m);
    drop(m);
    let m = t.mount();
    assert_eq!(t.bottom("top"), "bottom\nmore\n", "after a remount");
    alive(&m);
    drop(m);
    let lower = walk_down(&t.lower, "top", t.depth).expect("the lower tree");
    assert_eq!(read_at(lower.as_fd(), "f"), "bottom\n", "the lower is unchanged");
}

#[test]
fn find_and_rm_rf_of_a_deep_lower_tree() {
    let t = Deep::new(depth());
    let m = t.mount();
    assert_eq!(
        find_count(&m),
        t.depth + 2,
        "the mountpoint, {} directories and f",
        t.depth
    );
    let out = run("rm -rf top", Command::new("rm").arg("-rf").arg(m.path("top")));
    assert!(out.status.success(), "rm -rf: {}", stderr(&out));
    assert!(names(&m.mnt).is_empty());
    assert!(is_chr_whiteout(&t.upper.join("top")), "a whiteout hides the lower tree");
    alive(&m);
    drop(m);
    let m = t.mount();
    assert!(names(&m.mnt).is_empty(), "after a remount");
    alive(&m);
}

/// 100,000 levels whatever the open-file limit: each operation completes, or (only where the
/// limit is below what the tree needs) fails with EMFILE; the daemon never dies, and serves on
/// once the kernel lets go of the deep path.
#[test]
fn a_tree_100000_deep_never_takes_the_daemon_down() {
    let limited = depth() < DEPTH;
    let t = Deep::new(DEPTH);
    let m = t.mount();
    let check_alive = |m: &Mount| if limited { alive_once_forgotten(m) } else { alive(m) };
    let emfile = |out: &Output| limited && String::from_utf8_lossy(&out.stderr).contains("Too many open files");

    let out = run("mv top top2", Command::new("mv").arg(m.path("top")).arg(m.path("top2")));
    let top = if out.status.success() {
        assert_eq!(t.bottom("top2"), "bottom\n");
        "top2"
    } else {
        assert!(emfile(&out), "mv: {}", stderr(&out));
        assert_eq!(names(&m.mnt), ["top"], "a failed mv changes nothing");
        "top"
    };
    check_alive(&m);

    let start = Instant::now();
    match walk_down(&m.mnt, top, DEPTH) {
        Ok(bottom) => {
            let f = rustix::fs::openat(
                &bottom,
                "f",
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::APPEND | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            );
            match f {
                Ok(f) => {
                    rustix::io::write(&f, b"more\n").expect("write");
                    drop(f);
                    assert_eq!(read_at(bottom.as_fd(), "f"), "bottom\nmore\n");
                }
                Err(e) => assert!(limited && e == rustix::io::Errno::MFILE, "write at the bottom: {e}"),
            }
        }
        Err((level, e)) => assert!(limited && e == rustix::io::Errno::MFILE, "level {level}: {e}"),
    }
    eprintln!("walk down and write at the bottom: {:?}", start.elapsed());
    check_alive(&m);

    // One byte per entry: the paths themselves add up to the depth squared.
    let out = run(
        "find MNT -printf x",
        Command::new("find").arg(&m.mnt).args(["-printf", "x"]),
    );
    if out.status.success() {
        assert_eq!(out.stdout.len(), DEPTH + 2);
    } else {
        assert!(emfile(&out), "find: {}", stderr(&out));
    }
    check_alive(&m);

    // Its messages (one per directory it could not empty) add up to the depth squared too.
    let rm = run(
        "rm -rf",
        Command::new("rm").arg("-rf").arg(m.path(top)).stderr(Stdio::null()),
    );
    if rm.status.success() {
        assert!(names(&m.mnt).is_empty());
    } else {
        let stop = walk_down(&m.mnt, top, DEPTH).err();
        assert!(
            limited && stop.is_some_and(|(_, e)| e == rustix::io::Errno::MFILE),
            "rm -rf failed, and not for lack of fds: {stop:?}"
        );
    }
    check_alive(&m);
}

/// A lower tree 250 directories deep: read, copy up the deepest file (and the whole chain),
/// rename and delete at the bottom, build another deep chain through the view, remount.
#[test]
fn hostile_very_deep_tree() {
    const DEPTH: usize = 250;
    let l = Layers::new(1);
    let chain = vec!["d"; DEPTH].join("/");
    l.put(0, &format!("{chain}/leaf"), b"deep leaf");
    l.put(0, &format!("{chain}/other"), b"other");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    assert_eq!(std::fs::read(m.path(&format!("{chain}/leaf"))).unwrap(), b"deep leaf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path(&format!("{chain}/leaf")))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"!"))
        .unwrap();
    std::fs::rename(m.path(&format!("{chain}/other")), m.path(&format!("{chain}/renamed"))).unwrap();
    let new_chain = vec!["n"; DEPTH].join("/");
    std::fs::create_dir_all(m.path(&format!("{chain}/{new_chain}"))).unwrap();
    std::fs::write(m.path(&format!("{chain}/{new_chain}/f")), b"new deep").unwrap();
    assert_healthy(&m);
    let m = sc
        .ending(m)
        .view(|root| {
            assert_eq!(
                std::fs::read(root.join(format!("{chain}/leaf"))).unwrap(),
                b"deep leaf!"
            );
            assert_eq!(names(&root.join(&chain)), ["leaf", "n", "renamed"]);
            assert_eq!(
                std::fs::read(root.join(format!("{chain}/{new_chain}/f"))).unwrap(),
                b"new deep"
            );
        })
        .remount();
    // Rename the top of the deep lower tree (materialises all 250 levels), then remove it.
    std::fs::rename(m.path("d"), m.path("moved")).unwrap();
    assert_eq!(
        std::fs::read(m.path(&format!("moved/{}/leaf", vec!["d"; DEPTH - 1].join("/")))).unwrap(),
        b"deep leaf!"
    );
    std::fs::remove_dir_all(m.path("moved")).unwrap();
    assert_healthy(&m);
    sc.ending(m)
        .view(|root| assert!(names(root).is_empty()))
        .after(|| assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new()))
        .end();
}
