//! docs/semantics.md, "Data": `O_DIRECT` through a real mount: reads of lower files (read-only
//! opens, so nothing is copied up), reads and writes of upper files, writes that copy a lower
//! file up, and a copy-up while a direct descriptor is open; with FUSE passthrough (as root) and
//! without it (the data path of every rootless mount). Every byte is compared with what was
//! written. The scenarios live in `crate::common::direct_io`, which `rootless` runs as a plain user too.

use crate::common::direct_io::*;
use crate::common::*;

/// The two data paths: passthrough of upper files (root default) and the daemon for everything.
const MODES: [&[&str]; 2] = [&[], &["--no-passthrough"]];

#[test]
fn direct_reads_of_a_lower_file_return_its_bytes() {
    for mode in MODES {
        let l = Layers::new(1);
        l.put(0, "db/image.raw", &image_data());
        let before = l.snapshot_lowers();
        let m = l.mount(mode);
        lower_direct_reads(&m.path("db/image.raw"), &image_data(), &format!("{mode:?}"));
        assert!(
            !exists_raw(&l.up("db")),
            "{mode:?}: a read-only open copied something up"
        );
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: lower changed");
    }
}

#[test]
fn direct_writes_and_reads_of_a_new_file_keep_every_byte() {
    for mode in MODES {
        let l = Layers::new(1);
        let (sc, m) = Scenario::mount(&l, mode);
        new_file_direct_writes(&m.path("new.img"), &format!("{mode:?}"));
        let model = new_file_expected();
        sc.ending(m)
            .view(|root| {
                assert!(
                    std::fs::read(root.join("new.img")).unwrap() == model,
                    "{mode:?}: the view"
                )
            })
            .remount_with(mode)
            .after(|| assert!(std::fs::read(l.up("new.img")).unwrap() == model, "{mode:?}: upper file"))
            .named(format!("{mode:?}"))
            .end();
    }
}

#[test]
fn a_direct_write_open_of_a_lower_file_copies_it_up_and_writes_there() {
    for mode in MODES {
        let l = Layers::new(1);
        l.put(0, "vm.img", &vm_data());
        let before = l.snapshot_lowers();
        let m = l.mount(mode);
        copy_up_direct_writes(&m.path("vm.img"), &format!("{mode:?}"));
        assert!(
            std::fs::read(l.up("vm.img")).unwrap() == copy_up_expected(),
            "{mode:?}: upper copy"
        );
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: the lower file was written");
    }
}

#[test]
fn a_direct_reader_opened_before_a_copy_up_keeps_reading_the_lower_data() {
    for mode in MODES {
        let l = Layers::new(1);
        let (old, new) = before_copy_up_data();
        l.put(0, "data", &old);
        let m = l.mount(mode);
        direct_reader_across_copy_up(&m.path("data"), &format!("{mode:?}"));
        assert!(std::fs::read(l.up("data")).unwrap() == new, "{mode:?}: upper copy");
        assert!(
            std::fs::read(l.lower(0, "data")).unwrap() == old,
            "{mode:?}: lower changed"
        );
    }
}

#[test]
fn direct_and_buffered_opens_of_one_file_stay_coherent() {
    for mode in MODES {
        let l = Layers::new(1);
        let m = l.mount(mode);
        direct_and_buffered_coherent(&m.path("mixed"), &format!("{mode:?}"));
    }
}
