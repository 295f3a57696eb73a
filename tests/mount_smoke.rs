//! A first check through a real mount: lookup, copy-up, whiteout, remount.

mod common;

use common::{Layers, Tree};

#[test]
fn lookup_copy_up_whiteout_and_remount() {
    let l = Layers::new(2);
    l.put(0, "a", b"top");
    l.put(1, "a", b"bottom");
    l.put(1, "d/x", b"x");
    l.put(1, "gone", b"bye");
    let before = l.snapshot_lowers();
    {
        let m = l.mount(&[]);
        assert_eq!(std::fs::read(m.path("a")).unwrap(), b"top");
        std::fs::write(m.path("a"), b"changed").unwrap();
        std::fs::remove_file(m.path("gone")).unwrap();
        assert_eq!(m.unmount(), Some(0));
    }
    let m = l.mount(&[]);
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"changed");
    assert!(!m.path("gone").exists());
    assert_eq!(std::fs::read(m.path("d/x")).unwrap(), b"x");
    drop(m);
    assert_eq!(l.snapshot_lowers(), before, "lower layers must not change");
    let _ = Tree::read(&l.upper);
}
