//! docs/semantics.md, "Copy-up", through real mounts: what triggers it, what it keeps (data,
//! holes, mode, owner, times, xattrs), the parent chain (also for a deletion in a lower-only
//! directory), read-only sources, special files (also device nodes a hostile lower ships), and
//! that it is built in the workdir.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::Path;

use crate::common::*;

const T_ATIME: i64 = 1_000_000_000;

const T_MTIME: i64 = 1_100_000_000;

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn truncate_path(p: &Path, len: i64) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    let r = unsafe { libc::truncate(c.as_ptr(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mode, uid, gid, mtime (s, ns) of `p`.
fn meta(p: &Path) -> (u32, u32, u32, i64, i64) {
    let m = lstat(p);
    (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec())
}

#[test]
fn copy_up_keeps_mode_owner_times_and_xattrs() {
    let l = Layers::new(1);
    l.put(0, "f", b"data");
    l.mkdir(0, "dir");
    symlink("some/target", l.lower(0, "link")).unwrap();
    for (p, mode) in [("f", 0o640), ("dir", 0o751)] {
        let p = l.lower(0, p);
        chmod(&p, mode);
        xset(&p, "user.a", b"1").unwrap();
        xset(&p, "trusted.t", b"2").unwrap();
        // Longer than a first guess at the buffer size.
        xset(&p, "user.big", &[b'7'; 3000]).unwrap();
    }
    for p in ["f", "dir", "link"] {
        chown(&l.lower(0, p), 1234, 5678);
        set_times(&l.lower(0, p), T_ATIME, T_MTIME);
    }
    let sc = Scenario::new(&l);
    let want_f = meta(&l.lower(0, "f"));
    let want_dir = meta(&l.lower(0, "dir"));
    let want_link = meta(&l.lower(0, "link"));
    let want_x = xattrs(&l.lower(0, "f"));
    assert_eq!(want_x.len(), 3);
    // The full copy (a metadata-only one keeps the data below: tests/mount/metacopy.rs).
    let m = l.mount(&["--metacopy", "off"]);
    assert_eq!(meta(&m.path("f")), want_f);
    // Triggers that change nothing the test compares.
    xset(&m.path("f"), "user.new", b"n").unwrap();
    xset(&m.path("dir"), "user.new", b"n").unwrap();
    std::os::unix::fs::lchown(m.path("link"), Some(1234), None).unwrap();
    assert!(exists_raw(&l.up("f")) && exists_raw(&l.up("dir")) && exists_raw(&l.up("link")));
    let mut want_x2 = want_x.clone();
    want_x2.insert("user.new".into(), b"n".to_vec());
    let check = |root: &Path| {
        assert_eq!(meta(&root.join("f")), want_f, "file in {}", root.display());
        assert_eq!(meta(&root.join("dir")), want_dir, "dir in {}", root.display());
        assert_eq!(meta(&root.join("link")), want_link, "symlink in {}", root.display());
        assert_eq!(xattrs(&root.join("f")), want_x2);
        assert_eq!(xattrs(&root.join("dir")), want_x2);
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"data");
        assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new("some/target"));
    };
    sc.ending(m).both(check).end();
}

#[test]
fn copy_up_of_a_child_keeps_the_parent_directories_times() {
    // Overlayfs restores the parent's timestamps after a copy-up: a metadata-only change to
    // a/b/f must not make `ls -l` show a and a/b as modified.
    let l = Layers::new(1);
    l.put(0, "a/b/f", b"f");
    for p in ["a", "a/b", "a/b/f"] {
        set_times(&l.lower(0, p), T_ATIME, T_MTIME);
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    xset(&m.path("a/b/f"), "user.x", b"1").unwrap();
    assert!(exists_raw(&l.up("a/b/f")));
    sc.ending(m)
        .view(|root| {
            for p in ["a", "a/b"] {
                assert_eq!(lstat(&root.join(p)).mtime(), T_MTIME, "mtime of {p} in the view");
            }
        })
        .end();
}

#[test]
fn parent_chain_is_copied_up_with_its_metadata() {
    let l = Layers::new(2);
    l.put(1, "a/b/c/f", b"f");
    l.put(1, "a/b/c/gone", b"g");
    l.put(1, "x/y/z/g", b"g");
    for (p, mode, uid) in [("a", 0o750, 1111), ("a/b", 0o711, 2222), ("a/b/c", 0o755, 3333)] {
        chmod(&l.lower(1, p), mode);
        chown(&l.lower(1, p), uid, uid + 1);
        xset(&l.lower(1, p), "user.dir", p.as_bytes()).unwrap();
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let want: Vec<_> = ["a", "a/b", "a/b/c"]
        .iter()
        .map(|p| {
            (
                lstat(&m.path(p)).mode(),
                lstat(&m.path(p)).uid(),
                lstat(&m.path(p)).gid(),
            )
        })
        .collect();
    // Write deep inside; delete deep inside; create deep inside a lower-only chain.
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("a/b/c/f"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    std::fs::remove_file(m.path("a/b/c/gone")).unwrap();
    std::fs::write(m.path("x/y/z/new"), b"n").unwrap();
    let check = |root: &Path| {
        for (i, p) in ["a", "a/b", "a/b/c"].iter().enumerate() {
            let md = lstat(&root.join(p));
            assert_eq!((md.mode(), md.uid(), md.gid()), want[i], "{p} in {}", root.display());
            assert_eq!(xget(&root.join(p), "user.dir").as_deref(), Some(p.as_bytes()), "{p}");
        }
    };
    sc.ending(m)
        .both(check)
        .upper(|up| {
            assert!(is_chr_whiteout(&up.join("a/b/c/gone")));
            assert!(lstat(&up.join("x/y/z")).is_dir());
        })
        .view(|root| {
            assert_eq!(names(&root.join("a/b/c")), ["f"]);
            assert_eq!(std::fs::read(root.join("a/b/c/f")).unwrap(), b"f+");
            assert_eq!(names(&root.join("x/y/z")), ["g", "new"]);
        })
        .end();
}

#[test]
fn operations_that_trigger_copy_up_and_those_that_do_not() {
    let l = Layers::new(1);
    let triggers = [
        "open_wronly",
        "open_rdwr",
        "open_trunc",
        "truncate",
        "chmod",
        "chown",
        "utimes",
        "setxattr",
        "removexattr",
        "fallocate",
        "link",
        "rename",
    ];
    let readers = ["open_rdonly", "stat", "getxattr", "listxattr", "access", "readlink"];
    for n in triggers.iter().chain(readers.iter()) {
        l.put(0, &format!("d/{n}"), b"0123456789");
        xset(&l.lower(0, &format!("d/{n}")), "user.x", b"x").unwrap();
    }
    symlink("open_rdonly", l.lower(0, "d/sym")).unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let p = |n: &str| m.path(&format!("d/{n}"));
    let opts = |f: &dyn Fn(&mut std::fs::OpenOptions)| {
        let mut o = std::fs::OpenOptions::new();
        f(&mut o);
        o
    };
    drop(
        opts(&|o| {
            o.write(true);
        })
        .open(p("open_wronly"))
        .unwrap(),
    );
    drop(
        opts(&|o| {
            o.read(true).write(true);
        })
        .open(p("open_rdwr"))
        .unwrap(),
    );
    drop(
        opts(&|o| {
            o.write(true).truncate(true);
        })
        .open(p("open_trunc"))
        .unwrap(),
    );
    truncate_path(&p("truncate"), 4).unwrap();
    chmod(&p("chmod"), 0o600);
    chown(&p("chown"), 42, 43);
    set_times(&p("utimes"), T_ATIME, T_MTIME);
    xset(&p("setxattr"), "user.y", b"y").unwrap();
    rustix::fs::lremovexattr(p("removexattr"), "user.x").unwrap();
    {
        let f = opts(&|o| {
            o.read(true).write(true);
        })
        .open(p("fallocate"))
        .unwrap();
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 8192).unwrap();
    }
    std::fs::hard_link(p("link"), p("link2")).unwrap();
    std::fs::rename(p("rename"), p("renamed")).unwrap();
    // Readers.
    let mut s = String::new();
    std::fs::File::open(p("open_rdonly"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    lstat(&p("stat"));
    assert_eq!(xget(&p("getxattr"), "user.x").as_deref(), Some(&b"x"[..]));
    assert_eq!(xlist(&p("listxattr")), ["user.x"]);
    rustix::fs::access(p("access"), rustix::fs::Access::WRITE_OK).unwrap();
    std::fs::read_link(p("sym")).unwrap();
    names(&m.path("d"));

    for n in triggers {
        let up = if n == "rename" {
            "d/renamed".to_string()
        } else {
            format!("d/{n}")
        };
        assert!(lstat(&l.up(&up)).is_file(), "{n} must copy up");
    }
    for n in readers.iter().chain(["sym"].iter()) {
        assert!(!exists_raw(&l.up(&format!("d/{n}"))), "{n} must not copy up");
    }
    let check = |root: &Path| {
        let p = |n: &str| root.join(format!("d/{n}"));
        assert_eq!(std::fs::read(p("open_wronly")).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(p("open_rdwr")).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(p("open_trunc")).unwrap(), b"");
        assert_eq!(std::fs::read(p("truncate")).unwrap(), b"0123");
        assert_eq!(lstat(&p("chmod")).mode() & 0o7777, 0o600);
        assert_eq!((lstat(&p("chown")).uid(), lstat(&p("chown")).gid()), (42, 43));
        assert_eq!(lstat(&p("utimes")).mtime(), T_MTIME);
        assert_eq!(xlist(&p("setxattr")), ["user.x", "user.y"]);
        assert_eq!(xlist(&p("removexattr")), Vec::<String>::new());
        assert_eq!(lstat(&p("fallocate")).len(), 8192);
        assert_eq!(lstat(&p("link")).ino(), lstat(&p("link2")).ino());
        assert_eq!(lstat(&p("link")).nlink(), 2);
        assert_eq!(err_code(std::fs::symlink_metadata(p("rename"))), Some(libc::ENOENT));
        assert_eq!(std::fs::read(p("renamed")).unwrap(), b"0123456789");
    };
    sc.ending(m).view(check).end();
}

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn sparse_file_copy_up_copies_only_the_data() {
    let l = Layers::new(1);
    let data = pattern(MIB as usize, 5);
    {
        let f = std::fs::File::create(l.lower(0, "sparse")).unwrap();
        f.set_len(100 * MIB).unwrap();
        f.write_all_at(&data, 50 * MIB).unwrap();
    }
    let lower_blocks = lstat(&l.lower(0, "sparse")).blocks() * 512;
    assert!(
        lower_blocks <= 2 * MIB,
        "the lower file itself must be sparse ({lower_blocks})"
    );
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    // Metadata-only trigger: the copy alone decides the allocation.
    xset(&m.path("sparse"), "user.x", b"x").unwrap();
    let up = lstat(&l.up("sparse"));
    assert_eq!(up.len(), 100 * MIB);
    assert!(
        up.blocks() * 512 <= MIB + 256 * 1024,
        "copy-up filled holes: {} bytes allocated in the upper for 1 MiB of data",
        up.blocks() * 512
    );
    let check = |root: &Path| {
        let mut f = std::fs::File::open(root.join("sparse")).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        f.read_exact_at(&mut buf, 50 * MIB).unwrap();
        assert!(buf == data, "data region differs");
        f.read_exact_at(&mut buf, 10 * MIB).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 100 * MIB);
        let fd = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).unwrap();
        assert_eq!(fd, 50 * MIB, "SEEK_DATA must skip the leading hole");
    };
    sc.ending(m)
        .view(check)
        .after(|| assert!(lstat(&l.up("sparse")).blocks() * 512 <= MIB + 256 * 1024))
        .end();
}

#[test]
fn read_only_lower_file_opened_for_write_by_root() {
    let l = Layers::new(1);
    l.put(0, "ro", b"old content");
    chmod(&l.lower(0, "ro"), 0o444);
    l.put(0, "ro2", b"old");
    chmod(&l.lower(0, "ro2"), 0o400);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(m.path("ro")).unwrap();
        f.write_all(b"NEW").unwrap();
    }
    truncate_path(&m.path("ro2"), 1).unwrap();
    let check = |root: &Path| {
        assert_eq!(std::fs::read(root.join("ro")).unwrap(), b"NEW content");
        assert_eq!(std::fs::read(root.join("ro2")).unwrap(), b"o");
        assert_eq!(lstat(&root.join("ro")).mode() & 0o7777, 0o444);
        assert_eq!(lstat(&root.join("ro2")).mode() & 0o7777, 0o400);
    };
    sc.ending(m).both(check).end();
}

#[test]
fn children_of_a_read_only_lower_directory() {
    let l = Layers::new(1);
    l.put(0, "rodir/f", b"f");
    l.put(0, "rodir/gone", b"g");
    l.put(0, "rodir/sub/g", b"g");
    chmod(&l.lower(0, "rodir/sub/g"), 0o444);
    chmod(&l.lower(0, "rodir/sub"), 0o555);
    chmod(&l.lower(0, "rodir"), 0o555);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("rodir/sub/g"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    std::fs::write(m.path("rodir/new"), b"n").unwrap();
    std::fs::remove_file(m.path("rodir/gone")).unwrap();
    std::fs::create_dir(m.path("rodir/newdir")).unwrap();
    let check = |root: &Path| {
        assert_eq!(lstat(&root.join("rodir")).mode() & 0o7777, 0o555, "{}", root.display());
        assert_eq!(lstat(&root.join("rodir/sub")).mode() & 0o7777, 0o555);
        assert_eq!(lstat(&root.join("rodir/sub/g")).mode() & 0o7777, 0o444);
        assert_eq!(std::fs::read(root.join("rodir/sub/g")).unwrap(), b"g+");
    };
    let m = sc
        .ending(m)
        .both(check)
        .view(|root| assert_eq!(names(&root.join("rodir")), ["f", "new", "newdir", "sub"]))
        .remount();
    // A mkdir -m 0555 made through the view still works.
    std::fs::create_dir(m.path("made")).unwrap();
    chmod(&m.path("made"), 0o555);
    std::fs::write(m.path("made/inside"), b"i").unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("made/inside")).unwrap(), b"i");
            assert_eq!(lstat(&root.join("made")).mode() & 0o7777, 0o555);
        })
        .end();
}

#[test]
fn open_with_o_trunc_keeps_metadata() {
    let l = Layers::new(1);
    l.put(0, "t", &[9u8; 100_000]);
    chmod(&l.lower(0, "t"), 0o604);
    chown(&l.lower(0, "t"), 777, 888);
    xset(&l.lower(0, "t"), "user.keep", b"k").unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("t"))
        .unwrap()
        .write_all(b"short")
        .unwrap();
    let check = |root: &Path| {
        let md = lstat(&root.join("t"));
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o604, 777, 888));
        assert_eq!(xget(&root.join("t"), "user.keep").as_deref(), Some(&b"k"[..]));
        assert_eq!(std::fs::read(root.join("t")).unwrap(), b"short");
    };
    sc.ending(m).both(check).end();
}

#[test]
fn setuid_and_setgid_bits_survive_copy_up() {
    let l = Layers::new(1);
    l.put(0, "suid", b"#!/bin/sh\n");
    chown(&l.lower(0, "suid"), 1234, 1234);
    chmod(&l.lower(0, "suid"), 0o6755);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    xset(&m.path("suid"), "user.x", b"1").unwrap();
    sc.ending(m)
        .both(|root| {
            let md = lstat(&root.join("suid"));
            assert_eq!((md.mode() & 0o7777, md.uid()), (0o6755, 1234), "{}", root.display());
        })
        .end();
}

#[test]
fn special_files_and_symlinks_copy_up_as_themselves() {
    let l = Layers::new(1);
    let mk = |p: &str, ft, dev| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            l.lower(0, p),
            ft,
            rustix::fs::Mode::from_raw_mode(0o640),
            dev,
        )
        .unwrap();
    };
    mk("fifo", rustix::fs::FileType::Fifo, 0);
    mk("null", rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(1, 3));
    mk("blk", rustix::fs::FileType::BlockDevice, rustix::fs::makedev(7, 200));
    symlink("../some/where", l.lower(0, "sym")).unwrap();
    for p in ["fifo", "null", "blk", "sym"] {
        chown(&l.lower(0, p), 500, 500);
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    for p in ["fifo", "null", "blk", "sym"] {
        chown(&m.path(p), 600, 601);
    }
    let check = |root: &Path| {
        let ft = |p: &str| lstat(&root.join(p)).file_type();
        use std::os::unix::fs::FileTypeExt;
        assert!(ft("fifo").is_fifo(), "{}", root.display());
        assert!(ft("null").is_char_device());
        assert_eq!(lstat(&root.join("null")).rdev(), rustix::fs::makedev(1, 3));
        assert!(ft("blk").is_block_device());
        assert_eq!(lstat(&root.join("blk")).rdev(), rustix::fs::makedev(7, 200));
        assert!(ft("sym").is_symlink());
        assert_eq!(
            std::fs::read_link(root.join("sym")).unwrap(),
            Path::new("../some/where")
        );
        for p in ["fifo", "null", "blk", "sym"] {
            assert_eq!(
                (lstat(&root.join(p)).uid(), lstat(&root.join(p)).gid()),
                (600, 601),
                "{p}"
            );
        }
        for p in ["fifo", "null", "blk"] {
            assert_eq!(lstat(&root.join(p)).mode() & 0o7777, 0o640, "{p}");
        }
    };
    sc.ending(m).both(check).end();
}

#[test]
fn copy_up_is_built_in_the_workdir_and_leaves_nothing_behind() {
    let l = Layers::new(1);
    for i in 0..20 {
        l.put(0, &format!("d{i}/f"), &pattern(100_000, i as u8));
    }
    // Leftovers of a crashed run must be cleaned at mount and never show.
    std::fs::create_dir_all(l.work.join("unionfs/#stale-dir/x")).unwrap();
    std::fs::write(l.work.join("unionfs/#stale"), b"half a file").unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    assert_eq!(
        names(&l.work.join("unionfs")),
        Vec::<String>::new(),
        "workdir not emptied at mount"
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mnt = m.mnt.clone();
            std::thread::spawn(move || {
                for i in (t..20).step_by(4) {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(mnt.join(format!("d{i}/f")))
                        .unwrap();
                    f.write_all(b"!").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        names(&l.work.join("unionfs")),
        Vec::<String>::new(),
        "workdir must be empty after copy-ups"
    );
    let mut expect: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    expect.sort();
    sc.ending(m)
        .upper(|up| {
            assert_eq!(names(up), expect);
            for i in 0..20 {
                assert_eq!(names(&up.join(format!("d{i}"))), ["f"]);
            }
        })
        .view(|root| {
            for i in 0..20 {
                let mut want = pattern(100_000, i as u8);
                want.push(b'!');
                assert!(std::fs::read(root.join(format!("d{i}/f"))).unwrap() == want, "d{i}/f");
            }
        })
        .end();
}

#[test]
fn concurrent_writers_of_one_lower_file_copy_it_up_once() {
    let l = Layers::new(1);
    l.put(0, "shared", &[b'.'; 64]);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let p = m.path("shared");
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(&[b'0' + t as u8], t * 8).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let check = |root: &Path| {
        let got = std::fs::read(root.join("shared")).unwrap();
        assert_eq!(got.len(), 64);
        for t in 0..8 {
            assert_eq!(
                got[t * 8],
                b'0' + t as u8,
                "a writer's byte was lost: {}",
                String::from_utf8_lossy(&got)
            );
        }
    };
    sc.ending(m).view(check).end();
}

#[test]
fn written_lower_file_opened_o_append_keeps_data() {
    let l = Layers::new(1);
    l.put(0, "log", b"line1\n");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(m.path("log"))
            .unwrap();
        f.write_all(b"line2\n").unwrap();
        f.write_all(b"line3\n").unwrap();
    }
    sc.ending(m)
        .view(|root| assert_eq!(std::fs::read(root.join("log")).unwrap(), b"line1\nline2\nline3\n"))
        .end();
}

#[test]
fn deleting_inside_a_lower_only_directory_copies_up_the_chain() {
    let l = Layers::new(1);
    l.put(0, "a/b/c/f", b"f");
    l.put(0, "a/b/c/g", b"g");
    l.put(0, "a/b/c/sub/x", b"x");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_file(m.path("a/b/c/f")).unwrap();
    std::fs::remove_dir_all(m.path("a/b/c/sub")).unwrap();
    sc.ending(m)
        .upper(|up| {
            assert!(lstat(&up.join("a/b/c")).is_dir());
            assert!(is_chr_whiteout(&up.join("a/b/c/f")));
            assert!(is_chr_whiteout(&up.join("a/b/c/sub")));
        })
        .view(|root| assert_eq!(names(&root.join("a/b/c")), ["g"]))
        .end();
}

/// Character and block device nodes in a lower: visible with their numbers, usable (a null-like
/// char device), copied up as themselves by chmod.
#[test]
fn hostile_device_nodes_in_a_lower() {
    let l = Layers::new(1);
    let null_dev = rustix::fs::makedev(1, 3);
    let loop_dev = rustix::fs::makedev(7, 200);
    mknod(
        &l.lower(0, "null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        null_dev,
    );
    mknod(&l.lower(0, "blk"), rustix::fs::FileType::BlockDevice, 0o600, loop_dev);
    l.mkdir(0, "sub");
    mknod(
        &l.lower(0, "sub/chr"),
        rustix::fs::FileType::CharacterDevice,
        0o640,
        rustix::fs::makedev(4, 64),
    );
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let md = lstat(&m.path("null"));
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), null_dev);
    let md = lstat(&m.path("blk"));
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), loop_dev);
    // Usable as the device (the mount has `dev` as root).
    assert_eq!(std::fs::read(m.path("null")).unwrap(), b"");
    std::fs::write(m.path("null"), b"discarded").unwrap();
    // Copy-up by chmod.
    for (n, dev) in [("null", null_dev), ("blk", loop_dev)] {
        std::fs::set_permissions(m.path(n), std::fs::Permissions::from_mode(0o604)).unwrap();
        let up = lstat(&l.up(n));
        assert_eq!(up.rdev(), dev, "{n}: copied up with another device number");
        assert_eq!(up.mode() & 0o7777, 0o604);
    }
    assert!(lstat(&l.up("blk")).file_type().is_block_device());
    assert!(lstat(&l.up("null")).file_type().is_char_device());
    std::fs::rename(m.path("sub/chr"), m.path("chr2")).unwrap();
    assert_healthy(&m);
    sc.ending(m)
        .view(|root| {
            let md = lstat(&root.join("chr2"));
            assert!(md.file_type().is_char_device());
            assert_eq!(md.rdev(), rustix::fs::makedev(4, 64));
            assert_eq!(lstat(&root.join("blk")).mode() & 0o7777, 0o604);
            assert!(names(&root.join("sub")).is_empty());
        })
        .end();
}
