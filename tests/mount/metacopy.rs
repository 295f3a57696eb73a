//! docs/semantics.md, "Metadata-only copy-up", through real mounts: a metadata change of a lower
//! file copies up its metadata only (kernel overlayfs's metacopy format), reads keep coming
//! from the lower, and whatever needs the data in the upper (a write, a truncate, a rename, a
//! link) copies it in first; kernel overlayfs reads the upper we write and we read its.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::*;

const MARKER: &str = "trusted.overlay.metacopy";

/// 1 MiB and a bit, not a multiple of a page, different at every offset.
fn data() -> Vec<u8> {
    Rng::new(23).bytes((1 << 20) + 123)
}

/// Whether the raw upper file `p` is a metacopy file: the marker, no data (a hole throughout;
/// its block count may include an xattr block).
fn is_metacopy(p: &Path, marker: &str) -> bool {
    xget(p, marker).is_some() && data_extents(p) == 0
}

/// Whether the raw upper file `p` holds its data: no marker, data up to its end.
fn holds_data(p: &Path) -> bool {
    let size = lstat(p).size();
    xget(p, MARKER).is_none() && xget(p, "user.overlay.metacopy").is_none() && (size == 0 || data_extents(p) > 0)
}

/// How many bytes of `p` lie in data extents (SEEK_DATA/SEEK_HOLE).
fn data_extents(p: &Path) -> u64 {
    use rustix::fs::SeekFrom;
    let f = std::fs::File::open(p).expect("open raw file");
    let size = f.metadata().expect("fstat").len();
    let (mut pos, mut data) = (0, 0);
    while pos < size {
        let Ok(start) = rustix::fs::seek(&f, SeekFrom::Data(pos)) else {
            break;
        };
        let end = rustix::fs::seek(&f, SeekFrom::Hole(start)).unwrap_or(size);
        data += end - start;
        pos = end;
    }
    data
}

fn layers_with_file() -> Layers {
    let l = Layers::new(1);
    l.put(0, "dir/f", &data());
    std::fs::set_permissions(l.lower(0, "dir/f"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    l
}

#[test]
fn a_metadata_change_copies_up_metadata_only_and_reads_stay_on_the_lower() {
    if !require_root("chown and the trusted.overlay.metacopy marker") {
        return;
    }
    let l = layers_with_file();
    let lowers = l.snapshot_lowers();
    let lower_blocks = lstat(&l.lower(0, "dir/f")).blocks();
    let m = l.mount(&[]);
    let f = m.path("dir/f");
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).expect("chown");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    set_times(&f, 1_000_000_000, 1_100_000_000);
    xset(&f, "user.note", b"kept").expect("setfattr");
    let up = l.up("dir/f");
    assert!(
        is_metacopy(&up, MARKER),
        "the upper copy holds data or lacks the marker"
    );
    assert_eq!(lstat(&up).size(), data().len() as u64, "the upper copy keeps the size");
    let check = |root: &Path| {
        let p = root.join("dir/f");
        let md = lstat(&p);
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 5678, 0o600));
        assert_eq!(md.mtime(), 1_100_000_000);
        assert_eq!(
            md.blocks(),
            lower_blocks,
            "blocks are the lower data's, as kernel overlayfs has them"
        );
        assert_eq!(xget(&p, "user.note").as_deref(), Some(&b"kept"[..]));
        assert_eq!(xget(&p, MARKER), None, "the marker shows in the view");
        assert!(
            std::fs::read(&p).expect("read") == data(),
            "the view's data differs from the lower's"
        );
    };
    check(&m.mnt);
    drop(m);
    // A new daemon finds the data through the marker.
    let m = l.mount(&[]);
    check(&m.mnt);
    drop(m);
    assert!(is_metacopy(&up, MARKER), "reading copied the data up");
    assert!(l.snapshot_lowers() == lowers, "a lower layer changed");
}

#[test]
fn the_first_write_copies_the_data_in_and_readers_see_every_byte() {
    if !require_root("the trusted.overlay.metacopy marker") {
        return;
    }
    let l = layers_with_file();
    let m = l.mount(&[]);
    let f = m.path("dir/f");
    // A reader from before the change keeps reading the same bytes.
    let mut early = std::fs::File::open(&f).expect("open");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mtime = lstat(&f).mtime();
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open for writing");
    assert!(holds_data(&l.up("dir/f")), "an open for writing left a metacopy file");
    assert_eq!(lstat(&f).mtime(), mtime, "copying the data in changed the file's times");
    assert_eq!(lstat(&f).mode() & 0o7777, 0o640);
    w.seek(SeekFrom::Start(4096 + 7)).expect("seek");
    w.write_all(b"PATCH").expect("write");
    drop(w);
    let mut want = data();
    want[4096 + 7..4096 + 12].copy_from_slice(b"PATCH");
    assert!(std::fs::read(&f).expect("read") == want, "the written file differs");
    let mut got = Vec::new();
    early.read_to_end(&mut got).expect("read through the early handle");
    assert_eq!(got.len(), data().len());
    drop(m);
    assert!(std::fs::read(l.up("dir/f")).expect("raw upper") == want);
    assert!(
        std::fs::read(l.lower(0, "dir/f")).expect("raw lower") == data(),
        "the lower changed"
    );
}

#[test]
fn truncates_renames_and_links_copy_the_data_in_first() {
    if !require_root("the trusted.overlay.metacopy marker") {
        return;
    }
    let l = Layers::new(1);
    for n in ["trunc0", "trunc10", "otrunc", "moved", "linked"] {
        l.put(0, &format!("d/{n}"), &data());
    }
    l.mkdir(0, "e");
    let m = l.mount(&[]);
    for n in ["trunc0", "trunc10", "otrunc", "moved", "linked"] {
        let p = m.path(&format!("d/{n}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        assert!(
            is_metacopy(&l.up(&format!("d/{n}")), MARKER),
            "{n}: not a metacopy file"
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("d/trunc0"))
        .and_then(|f| f.set_len(0))
        .expect("truncate to 0");
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("d/trunc10"))
        .and_then(|f| f.set_len(10))
        .expect("truncate to 10");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("d/otrunc"))
        .expect("O_TRUNC");
    std::fs::rename(m.path("d/moved"), m.path("e/moved")).expect("rename");
    std::fs::hard_link(m.path("d/linked"), m.path("e/linked")).expect("link");
    let check = |root: &Path| {
        assert_eq!(std::fs::read(root.join("d/trunc0")).expect("read").len(), 0);
        assert!(std::fs::read(root.join("d/trunc10")).expect("read") == data()[..10]);
        assert_eq!(std::fs::read(root.join("d/otrunc")).expect("read").len(), 0);
        assert!(
            std::fs::read(root.join("e/moved")).expect("read") == data(),
            "renamed file"
        );
        assert!(
            std::fs::read(root.join("e/linked")).expect("read") == data(),
            "new link"
        );
        assert!(
            std::fs::read(root.join("d/linked")).expect("read") == data(),
            "old link"
        );
        assert!(!root.join("d/moved").exists());
    };
    check(&m.mnt);
    drop(m);
    for n in ["d/trunc0", "d/trunc10", "d/otrunc", "e/moved", "e/linked"] {
        assert!(holds_data(&l.up(n)), "{n}: still a metacopy file");
    }
    let m = l.mount(&[]);
    check(&m.mnt);
}

#[test]
fn kernel_overlayfs_reads_our_metacopy_files_and_we_read_its() {
    if !require_root("kernel overlayfs") {
        return;
    }
    let l = Layers::new(2);
    l.put(1, "a/ours", &data());
    l.put(0, "a/kernels", &data());
    let m = l.mount(&[]);
    std::os::unix::fs::chown(m.path("a/ours"), Some(42), Some(43)).expect("chown");
    drop(m);
    let kmnt = l.dir.path().join("kmnt");
    let kwork = l.dir.path().join("kwork");
    for d in [&kmnt, &kwork] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let opts = "metacopy=on,redirect_dir=on,index=off";
    let k = KernelOverlay::mount_with(&l.lowers, Some((&l.upper, &kwork)), &kmnt, opts).expect("kernel mount");
    let ours = k.path("a/ours");
    assert_eq!((lstat(&ours).uid(), lstat(&ours).gid()), (42, 43));
    assert!(std::fs::read(&ours).expect("kernel reads our metacopy file") == data());
    std::fs::set_permissions(k.path("a/kernels"), std::fs::Permissions::from_mode(0o604)).expect("chmod");
    drop(k);
    assert!(is_metacopy(&l.up("a/kernels"), MARKER), "the kernel copied the data up");
    let m = l.mount(&[]);
    assert_eq!(lstat(&m.path("a/kernels")).mode() & 0o7777, 0o604);
    assert!(std::fs::read(m.path("a/kernels")).expect("we read the kernel's metacopy file") == data());
}

#[test]
fn without_metacopy_and_for_hard_links_the_data_is_copied() {
    if !require_root("chown") {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "off", &data());
    l.put(0, "linked", &data());
    std::fs::hard_link(l.lower(0, "linked"), l.lower(0, "other-name")).expect("link");
    let m = l.mount(&["--metacopy", "off"]);
    std::fs::set_permissions(m.path("off"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    drop(m);
    assert!(holds_data(&l.up("off")), "--metacopy off wrote a metacopy file");
    let m = l.mount(&[]);
    std::fs::set_permissions(m.path("linked"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Both names of the lower file share the one upper copy, which holds the data.
    assert_eq!(lstat(&m.path("other-name")).mode() & 0o7777, 0o600);
    assert!(std::fs::read(m.path("other-name")).expect("read") == data());
    drop(m);
    assert!(holds_data(&l.up("linked")), "a hard-linked file became a metacopy file");
}

#[test]
fn a_metacopy_file_whose_lower_is_gone_fails_to_read_never_reads_zeros() {
    if !require_root("the trusted.overlay.metacopy marker") {
        return;
    }
    let l = layers_with_file();
    let m = l.mount(&[]);
    std::fs::set_permissions(m.path("dir/f"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    drop(m);
    std::fs::remove_file(l.lower(0, "dir/f")).expect("remove the lower file");
    let m = l.mount(&[]);
    let r = std::fs::read(m.path("dir/f"));
    assert_eq!(
        err_code(r),
        Some(libc::EIO),
        "a metacopy file without its data read as something"
    );
}

#[test]
fn a_plain_user_writes_the_user_overlay_marker() {
    let user = crate::as_user::rootless_user();
    let l = crate::as_user::user_layers(user, |l| {
        l.put(0, "f", &data());
        l.put(0, "ro", &data());
    });
    let m = crate::as_user::UserMount::start(user, &l, &[]);
    crate::as_user::user_sh_ok(
        user,
        "chmod 600 \"$1/f\" && cmp \"$1/f\" \"$2\"",
        &[m.mnt.as_os_str(), l.lower(0, "f").as_os_str()],
    );
    assert!(
        is_metacopy(&l.up("f"), "user.overlay.metacopy"),
        "no user.overlay.metacopy file"
    );
    crate::as_user::user_sh_ok(user, "echo x >> \"$1/f\"", &[m.mnt.as_os_str()]);
    // A file its owner may not write: the daemon (its owner) still fills the data in on rename.
    crate::as_user::user_sh_ok(
        user,
        "chmod 400 \"$1/ro\" && mv \"$1/ro\" \"$1/ro2\" && cmp \"$1/ro2\" \"$2\"",
        &[m.mnt.as_os_str(), l.lower(0, "ro").as_os_str()],
    );
    m.finish();
    assert_eq!(
        lstat(&l.up("ro2")).mode() & 0o7777,
        0o400,
        "the fill left the mode changed"
    );
    assert!(holds_data(&l.up("ro2")), "the renamed file is still a metacopy file");
    let mut want = data();
    want.extend_from_slice(b"x\n");
    assert!(std::fs::read(l.up("f")).expect("raw upper") == want);
    assert!(xget(&l.up("f"), "user.overlay.metacopy").is_none(), "the marker stayed");
}

#[test]
fn a_metacopy_file_the_kernel_renamed_reads_its_data_through_the_redirect() {
    if !require_root("kernel overlayfs") {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "a/f", &data());
    l.mkdir(0, "b");
    let kmnt = l.dir.path().join("kmnt");
    let kwork = l.dir.path().join("kwork");
    for d in [&kmnt, &kwork] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let opts = "metacopy=on,redirect_dir=on,index=off";
    let k = KernelOverlay::mount_with(&l.lowers, Some((&l.upper, &kwork)), &kmnt, opts).expect("kernel mount");
    std::fs::set_permissions(k.path("a/f"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(k.path("a/f"), k.path("b/g")).expect("rename");
    drop(k);
    assert!(
        is_metacopy(&l.up("b/g"), MARKER),
        "the kernel copied the data up on rename"
    );
    assert_eq!(
        xget(&l.up("b/g"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/a/f"[..])
    );
    let m = l.mount(&[]);
    assert!(!m.path("a/f").exists());
    assert_eq!(lstat(&m.path("b/g")).mode() & 0o7777, 0o600);
    assert!(
        std::fs::read(m.path("b/g")).expect("read") == data(),
        "the renamed metacopy file"
    );
}

/// An upper crafted by someone else: metacopy markers whose data would be a lower symlink's
/// target, or a redirect out of the layers or through a symlink, read nothing (EIO).
#[test]
fn hostile_metacopy_markers_read_nothing_outside_the_layers() {
    if !require_root("the trusted.overlay.* xattrs of a crafted upper") {
        return;
    }
    let l = Layers::new(1);
    let secret = l.dir.path().join("secret");
    std::fs::write(&secret, b"outside the layers").expect("write secret");
    std::os::unix::fs::symlink(&secret, l.lower(0, "link")).expect("symlink");
    l.mkdir(0, "d");
    std::os::unix::fs::symlink(l.dir.path(), l.lower(0, "d/out")).expect("symlink dir");
    let crafted = |name: &str, redirect: Option<&[u8]>| {
        let p = l.up(name);
        std::fs::write(&p, b"").expect("write");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(18))
            .expect("set_len");
        xset(&p, MARKER, b"").expect("marker");
        if let Some(r) = redirect {
            xset(&p, "trusted.overlay.redirect", r).expect("redirect");
        }
    };
    crafted("link", None);
    crafted("dotdot", Some(b"/../secret"));
    crafted("through", Some(b"/d/out/secret"));
    crafted("relative", Some(b"../secret"));
    let m = l.mount(&[]);
    for n in ["link", "dotdot", "through", "relative"] {
        let r = std::fs::read(m.path(n));
        assert_eq!(
            err_code(r),
            Some(libc::EIO),
            "{n}: a hostile metacopy file read something"
        );
    }
}

#[test]
fn fallocate_copy_file_range_and_mapped_writes_see_every_byte_of_a_metacopy_file() {
    if !require_root("the trusted.overlay.metacopy marker") {
        return;
    }
    let l = Layers::new(1);
    for n in ["falloc", "cfr", "mapped"] {
        l.put(0, n, &data());
    }
    let m = l.mount(&[]);
    for n in ["falloc", "cfr", "mapped"] {
        std::fs::set_permissions(m.path(n), std::fs::Permissions::from_mode(0o660)).expect("chmod");
        assert!(is_metacopy(&l.up(n), MARKER), "{n}: not a metacopy file");
    }
    let open_rw = |n: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path(n))
            .expect("open rw")
    };
    let len = data().len() as u64;
    // Growing by fallocate keeps every old byte and adds zeros.
    let f = open_rw("falloc");
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len + 4096).expect("fallocate");
    drop(f);
    let mut want = data();
    want.resize(len as usize + 4096, 0);
    assert!(std::fs::read(m.path("falloc")).expect("read") == want, "fallocate");
    // copy_file_range from the metacopy file itself into a new file, then into it.
    let src = std::fs::File::open(m.path("cfr")).expect("open");
    let dst = std::fs::File::create(m.path("copy")).expect("create");
    let mut done = 0;
    while done < len as usize {
        let n = rustix::fs::copy_file_range(&src, None, &dst, None, len as usize - done).expect("copy_file_range");
        assert!(n > 0, "copy_file_range stopped early");
        done += n;
    }
    drop((src, dst));
    assert!(
        std::fs::read(m.path("copy")).expect("read") == data(),
        "copy_file_range out of a metacopy file"
    );
    let f = open_rw("mapped");
    mmap_write(&f, len as usize, 100, b"MAPPED");
    drop(f);
    let mut want = data();
    want[100..106].copy_from_slice(b"MAPPED");
    assert!(std::fs::read(m.path("mapped")).expect("read") == want, "mapped write");
    drop(m);
    for n in ["falloc", "mapped"] {
        assert!(holds_data(&l.up(n)), "{n}: still a metacopy file");
    }
    assert!(std::fs::read(l.up("mapped")).expect("raw upper") == want);
}
