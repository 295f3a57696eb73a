//! docs/semantics.md, "Caching", through real mounts: a lower changed while mounted corrupts
//! nothing (the daemon serves on, and a remount shows the change), and `--revalidate` notices
//! such changes while mounted.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// Visits everything below `dir`, ignoring every error (for views in an undefined state).
fn walk_ignoring_errors(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        n += 1;
        let p = e.path();
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            if md.is_dir() {
                n += walk_ignoring_errors(&p);
            } else if md.is_file() {
                let _ = std::fs::read(&p);
            }
        }
    }
    n
}

#[test]
fn changing_a_lower_while_mounted_does_not_crash_the_daemon() {
    let l = Layers::new(2);
    for i in 0..20 {
        l.put(0, &format!("d/f{i}"), b"x");
        l.put(1, &format!("d/g{i}"), b"y");
    }
    l.put(1, "sub/x", b"x");
    let m = l.mount(&[]);
    assert!(walk_ignoring_errors(&m.mnt) > 40);
    let held = std::fs::File::open(m.path("d/f0")).unwrap();
    // Undefined behaviour for the view, but the daemon must survive it.
    std::fs::remove_dir_all(l.lower(0, "d")).unwrap();
    std::fs::remove_dir_all(l.lower(1, "sub")).unwrap();
    l.put(1, "sub", b"now a file");
    l.put(0, "d2/new", b"n");
    for _ in 0..2 {
        let _ = std::fs::read_dir(m.path("d")).map(|r| r.count());
        let _ = std::fs::read(m.path("d/f1"));
        let _ = std::fs::write(m.path("d/f2"), b"w");
        let _ = std::fs::remove_file(m.path("d/g3"));
        let _ = std::fs::read_dir(m.path("sub")).map(|r| r.count());
        let _ = std::fs::write(m.path("sub/y"), b"w");
        let _ = std::fs::rename(m.path("d"), m.path("moved"));
        walk_ignoring_errors(&m.mnt);
    }
    let mut s = Vec::new();
    let _ = (&held).read_to_end(&mut s);
    drop(held);
    // Still serving.
    assert!(lstat(&m.mnt).is_dir());
    std::fs::write(m.path("alive"), b"yes").unwrap();
    assert_eq!(std::fs::read(m.path("alive")).unwrap(), b"yes");
    let m = remount(&l, m, &[]);
    assert_eq!(std::fs::read(m.path("alive")).unwrap(), b"yes");
    assert!(names(&m.mnt).contains(&"d2".to_string()));
    drop(m);
}

#[test]
fn revalidate_notices_changes_made_to_a_lower_while_mounted() {
    let l = Layers::new(2);
    l.put(1, "d/old", b"old");
    l.put(0, "d/top", b"top");
    let m = l.mount(&["--revalidate"]);
    assert_eq!(names(&m.path("d")), ["old", "top"]);
    assert_eq!(std::fs::read(m.path("d/top")).unwrap(), b"top");
    std::fs::write(l.lower(1, "d/new"), b"new").unwrap();
    std::fs::remove_file(l.lower(1, "d/old")).unwrap();
    std::fs::write(l.lower(0, "d/top"), b"top, changed").unwrap();
    // The kernel's entries and attributes live 1 s with --revalidate.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(names(&m.path("d")), ["new", "top"]);
    assert_eq!(std::fs::read(m.path("d/new")).unwrap(), b"new");
    assert!(!m.path("d/old").exists());
    assert_eq!(std::fs::read(m.path("d/top")).unwrap(), b"top, changed");
    // The union still works as usual on top of the changed layers.
    std::fs::write(m.path("d/mine"), b"mine").unwrap();
    std::fs::remove_file(m.path("d/new")).unwrap();
    assert_eq!(names(&m.path("d")), ["mine", "top"]);
    let m = remount(&l, m, &["--revalidate"]);
    assert_eq!(names(&m.path("d")), ["mine", "top"]);
    assert_eq!(std::fs::read(l.lower(1, "d/new")).unwrap(), b"new");
}
