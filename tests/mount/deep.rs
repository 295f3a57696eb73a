//! docs/semantics.md, "Deep trees", through real mounts: a lower tree deeper than any path can
//! name, then through the view `mv` of it (by a redirect: the top directory alone), a write
//! at its bottom (copy-up of the whole parent chain), `find` and `rm -rf`. Each completes,
//! survives a remount, and the daemon serves on afterwards. A hostile layer
//! (`hostile_very_deep_tree`): a lower tree 250 levels deep read, copied up, renamed and deleted
//! at its bottom, and another made through the view.
//!
//! The daemon runs with a 256 KiB thread stack (fuser's workers get std's 2 MiB): a request
//! handler whose stack grows with the tree fails here long before it could in production.
//!
//! Nor may the daemon's open files grow with the tree: the kernel holds every directory of a
//! deep path, and the daemon keeps only a bounded set of their fds open (see
//! `src/union/fsdir.rs`). So these tests run the daemon with an open-file limit of 1,024, a
//! hundred times fewer than the tree's directories, and every operation must still succeed.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::common::deep::*;
use crate::common::*;

/// The daemon's thread stack in these tests (bytes).
const STACK: &str = "262144";

/// The daemon's open-file limit in these tests (soft and hard).
const NOFILE: u64 = 1024;

/// How deep these tests go.
fn depth() -> usize {
    DEPTH
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
        eprintln!("a lower tree {depth} levels deep, made in {:?}", start.elapsed());
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
        let mut cmd = Command::new(bin());
        cmd.args(&args).env("RUST_MIN_STACK", STACK);
        // SAFETY: between fork and exec the closure only makes one system call.
        unsafe {
            cmd.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(NOFILE),
                    maximum: Some(NOFILE),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(std::io::Error::from)
            });
        }
        Mount::start_command(cmd, &self.mnt)
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
