//! The layer tools walk the upper, not the image: the same small change over an image of 1,000
//! entries and over one of 40,000 costs `diff`, `commit` and `check` the same number of
//! directory listings and `lstat`s (the process-wide counters `Union::stats` reports). One test
//! in this binary, so no other test's system calls are counted.

use std::path::{Path, PathBuf};

use unionfs::layers::{self, Quiet, Stack};
use unionfs::{MountConfig, Union};

const PER_DIR: usize = 100;

/// Two lowers with `dirs` directories of [`PER_DIR`] files, and an upper (overlay format, written
/// by hand) with the same small change whatever `dirs` is.
fn image(root: &Path, dirs: usize) -> (Vec<PathBuf>, PathBuf) {
    let top = root.join("lower0");
    let bottom = root.join("lower1");
    let upper = root.join("upper");
    for d in 0..dirs {
        let dir = bottom.join(format!("d{d:05}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..PER_DIR {
            std::fs::write(dir.join(format!("f{f:03}")), b"x").expect("write");
        }
    }
    std::fs::create_dir_all(top.join("d00000")).expect("mkdir");
    std::fs::write(top.join("d00000/top"), b"top").expect("write");
    // The change: a file rewritten, one deleted, a new directory, a directory made again.
    std::fs::create_dir_all(upper.join("d00000")).expect("mkdir");
    std::fs::write(upper.join("d00000/f001"), b"changed").expect("write");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.join("d00000/f002"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("whiteout");
    std::fs::create_dir_all(upper.join("new/sub")).expect("mkdir");
    std::fs::write(upper.join("new/sub/file"), b"new").expect("write");
    std::fs::create_dir_all(upper.join("d00001")).expect("mkdir");
    rustix::fs::setxattr(
        upper.join("d00001"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("opaque");
    std::fs::write(upper.join("d00001/again"), b"again").expect("write");
    (vec![top, bottom], upper)
}

/// The process-wide counts of directory listings and lstats (read through a union of an empty
/// layer, which adds nothing to them).
fn counters() -> (u64, u64) {
    static EMPTY: std::sync::OnceLock<(tempfile::TempDir, Union)> = std::sync::OnceLock::new();
    let (_, u) = EMPTY.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("unionfs-cost-empty")
            .tempdir()
            .expect("tempdir");
        let u = Union::new(&MountConfig::new(vec![d.path().to_path_buf()], None)).expect("union");
        (d, u)
    });
    let s = u.stats();
    (s.dir_reads, s.lstats)
}

/// (directory listings, lstats) that `f` makes.
fn cost(f: impl FnOnce()) -> (u64, u64) {
    let (d0, s0) = counters();
    f();
    let (d1, s1) = counters();
    (d1 - d0, s1 - s0)
}

fn costs(dirs: usize) -> Vec<(u64, u64)> {
    let t = tempfile::Builder::new()
        .prefix("unionfs-cost")
        .tempdir()
        .expect("tempdir");
    let (lowers, upper) = image(t.path(), dirs);
    let stack = Stack::open(&lowers, Some(&upper)).expect("open the stack");
    let out = t.path().join("layer.tar");
    let mut v = Vec::new();
    let mut changes = None;
    v.push(cost(|| {
        changes = Some(layers::diff::diff(&stack, &Quiet).expect("diff"))
    }));
    let changes = changes.expect("ran");
    assert_eq!(changes.len(), 108, "{changes:?}");
    v.push(cost(|| {
        layers::commit::commit_to_file(&stack, &layers::commit::CommitOptions::default(), &out, &Quiet)
            .expect("commit");
    }));
    v.push(cost(|| {
        let r = layers::check::check(&stack, &layers::check::CheckOptions::default(), &Quiet).expect("check");
        assert_eq!(r.problems.len(), 0, "{:?}", r.problems);
    }));
    v
}

#[test]
fn cost_follows_the_change_not_the_image() {
    let small = costs(10);
    let big = costs(400);
    eprintln!("(listings, lstats) of diff, commit, check: {small:?}");
    assert_eq!(
        small, big,
        "(listings, lstats) of diff, commit, check: 1,000 vs 40,000 image entries"
    );
    // And it is small: 9 upper entries, and the listing of the one image directory made opaque.
    // But not nothing: each tool lists and stats the upper, so counters stuck at 0 (which would
    // also be "the same") fail here.
    for (reads, stats) in &small {
        assert!(*reads > 0 && *stats > 0, "a counter did not move: {small:?}");
        assert!(*reads <= 12 && *stats <= 300, "{small:?}");
    }
}
