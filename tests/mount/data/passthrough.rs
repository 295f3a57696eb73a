//! docs/semantics.md, "Data": FUSE passthrough (the kernel reads and writes upper files itself)
//! through a real mount: it is really in use when we run as root, `--no-passthrough` turns it
//! off, and the kernel's one-mode-per-inode rule never turns a legitimate open into an error (a
//! lower file open for reading, then opened for writing; mixed readers and writers of an upper
//! file; running a program written through the mount); a descriptor from before a copy-up keeps
//! reading the lower content and never writes it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;

/// Stops the daemon (SIGSTOP) until dropped, so that only the kernel can answer.
struct Stopped(i32);

impl Stopped {
    fn new(m: &Mount) -> Stopped {
        let pid = m.pid().expect("daemon pid") as i32;
        let p = rustix::process::Pid::from_raw(pid).expect("pid");
        rustix::process::kill_process(p, rustix::process::Signal::STOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
        }
    }
}

/// Reads 1 MiB at offset 4096 from `f` in a thread, after evicting its cached pages; whether
/// that finished within `wait` (the thread finishes later anyway once the daemon runs again).
/// Writes cannot show this: before each write the kernel asks the daemon for
/// `security.capability` (to clear it), passthrough or not.
fn read_finishes(f: std::fs::File, wait: Duration) -> bool {
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut back = vec![0u8; 1 << 20];
        let ok = f.read_exact_at(&mut back, 4096).is_ok() && back.iter().all(|&b| b == 7);
        let _ = tx.send(ok);
    });
    match rx.recv_timeout(wait) {
        Ok(ok) => {
            assert!(ok, "the read returned wrong data or an error");
            true
        }
        Err(_) => false,
    }
}

fn sevens(p: &std::path::Path) {
    let f = open_rw(p);
    f.write_all_at(&vec![7u8; 1 << 20], 4096).unwrap();
}

fn open_rw(p: &std::path::Path) -> std::fs::File {
    OpenOptions::new().read(true).write(true).open(p).expect("open rw")
}

#[test]
fn upper_file_io_is_served_by_the_kernel_while_the_daemon_is_stopped() {
    let l = Layers::new(1);
    l.put(0, "lower.txt", b"from the lower");
    let (sc, m) = Scenario::mount(&l, &[]);
    std::fs::write(m.path("new.bin"), b"x").unwrap();
    sevens(&m.path("new.bin"));
    // A copied-up file goes passthrough too.
    sevens(&m.path("lower.txt"));
    let f = open_rw(&m.path("new.bin"));
    let copied = open_rw(&m.path("lower.txt"));
    let stopped = Stopped::new(&m);
    assert!(
        read_finishes(f, Duration::from_secs(5)),
        "a read of a new upper file waited for the stopped daemon: no passthrough"
    );
    assert!(
        read_finishes(copied, Duration::from_secs(5)),
        "a read of a copied-up file waited for the stopped daemon: no passthrough"
    );
    drop(stopped);
    let back = std::fs::read(m.path("new.bin")).unwrap();
    assert_eq!(back.len(), 4096 + (1 << 20));
    assert!(back[4096..].iter().all(|&b| b == 7));
    assert_eq!(back[0], b'x');
    sc.ending(m)
        .view(|root| assert_eq!(std::fs::read(root.join("new.bin")).unwrap(), back))
        .end();
    assert_eq!(std::fs::read(l.lower(0, "lower.txt")).unwrap(), b"from the lower");
}

#[test]
fn no_passthrough_serves_io_in_the_daemon() {
    let l = Layers::new(1);
    let m = l.mount(&["--no-passthrough"]);
    std::fs::write(m.path("new.bin"), b"x").unwrap();
    sevens(&m.path("new.bin"));
    let f = open_rw(&m.path("new.bin"));
    let stopped = Stopped::new(&m);
    assert!(
        !read_finishes(f, Duration::from_millis(500)),
        "a read finished without the daemon although --no-passthrough was given"
    );
    drop(stopped);
    let back = std::fs::read(m.path("new.bin")).unwrap();
    assert!(back[4096..].iter().all(|&b| b == 7));
}

#[test]
fn a_lower_file_open_for_reading_can_be_opened_for_writing() {
    let l = Layers::new(1);
    l.put(0, "f.txt", b"lower content\n");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    // Served by the daemon (lower content); the writer below must not be refused because of it.
    let mut reader = std::fs::File::open(m.path("f.txt")).unwrap();
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower content\n");
    let mut w = OpenOptions::new().append(true).open(m.path("f.txt")).unwrap();
    w.write_all(b"appended\n").unwrap();
    let mut again = OpenOptions::new().read(true).write(true).open(m.path("f.txt")).unwrap();
    let mut s2 = String::new();
    again.read_to_string(&mut s2).unwrap();
    assert_eq!(s2, "lower content\nappended\n");
    again.write_all(b"more\n").unwrap();
    drop((reader, w, again));
    // Every open gone: the next ones share the upper copy (passthrough), and see it all.
    let r1 = std::fs::read(m.path("f.txt")).unwrap();
    assert_eq!(r1, b"lower content\nappended\nmore\n");
    let mut w2 = OpenOptions::new().append(true).open(m.path("f.txt")).unwrap();
    let r2 = std::fs::File::open(m.path("f.txt")).unwrap();
    w2.write_all(b"last\n").unwrap();
    let mut buf = vec![0u8; 64];
    let n = r2.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower content\nappended\nmore\nlast\n");
    drop((w2, r2));
    sc.ending(m)
        .view(|root| {
            assert_eq!(
                std::fs::read(root.join("f.txt")).unwrap(),
                b"lower content\nappended\nmore\nlast\n"
            )
        })
        .end();
}

/// While a reader from before the copy-up holds the file, new opens are served by the daemon
/// without the page cache (FOPEN_DIRECT_IO); a shared mapping of such an open must still work.
#[test]
fn a_file_open_from_before_its_copy_up_can_be_mapped_shared() {
    let l = Layers::new(1);
    l.put(0, "m.bin", &[b'.'; 8192]);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let reader = std::fs::File::open(m.path("m.bin")).unwrap();
    let rw = open_rw(&m.path("m.bin"));
    mmap_write(&rw, 8192, 100, b"MAPPED");
    drop((reader, rw));
    let back = std::fs::read(m.path("m.bin")).unwrap();
    assert_eq!(&back[100..106], b"MAPPED");
    sc.ending(m)
        .view(|root| assert_eq!(&std::fs::read(root.join("m.bin")).unwrap()[100..106], b"MAPPED"))
        .end();
}

#[test]
fn readers_and_writers_of_an_upper_file_see_one_content() {
    let l = Layers::new(1);
    let (sc, m) = Scenario::mount(&l, &[]);
    let p = m.path("shared.bin");
    std::fs::write(&p, vec![1u8; 8192]).unwrap();
    let readers: Vec<_> = (0..4).map(|_| std::fs::File::open(&p).unwrap()).collect();
    let writer = OpenOptions::new().write(true).open(&p).unwrap();
    for (i, r) in readers.iter().enumerate() {
        writer.write_all_at(&[i as u8 + 10; 100], 0).unwrap();
        let mut b = [0u8; 100];
        r.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [i as u8 + 10; 100], "reader {i} saw stale data");
    }
    writer.set_len(10).unwrap();
    assert_eq!(readers[0].metadata().unwrap().len(), 10);
    let mut rest = Vec::new();
    let mut r0 = &readers[0];
    r0.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, [13u8; 10]);
    drop((readers, writer));
    sc.ending(m)
        .view(|root| assert_eq!(std::fs::read(root.join("shared.bin")).unwrap(), [13u8; 10]))
        .end();
}

#[test]
fn a_program_written_through_the_mount_runs_and_is_busy_while_running() {
    let l = Layers::new(1);
    let m = l.mount(&[]);
    let prog = m.path("sleeper");
    std::fs::copy("/bin/sleep", &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = spawn_fresh_program(&prog, &["0"]).wait().unwrap();
    assert!(out.success());
    let mut child = spawn_fresh_program(&prog, &["5"]);
    std::thread::sleep(Duration::from_millis(200));
    let busy = OpenOptions::new().write(true).open(&prog);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(err_code(busy), Some(libc::ETXTBSY));
    // Readers of the running program are fine.
    assert_eq!(std::fs::read(&prog).unwrap(), std::fs::read("/bin/sleep").unwrap());
}

/// fuse-overlayfs 2.0 passes lower files through, so with a read-only descriptor open on a
/// lower file, a write-open of it through the mount wrote into the lower layer. Here: the lower
/// stays byte-identical, the upper holds the new data, and the old descriptor keeps reading the
/// lower content (as the README says), with passthrough and without.
#[test]
fn a_write_open_while_a_lower_file_is_open_never_writes_the_lower() {
    for mode in [&[][..], &["--no-passthrough"][..]] {
        let l = Layers::new(1);
        let old: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        l.put(0, "data.bin", &old);
        let before = l.snapshot_lowers();
        let m = l.mount(mode);
        let reader = std::fs::File::open(m.path("data.bin")).unwrap();
        let mut head = vec![0u8; 4096];
        reader.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head[..], &old[..4096]);
        let new = vec![0xABu8; 100_000];
        let mut w = OpenOptions::new().write(true).open(m.path("data.bin")).unwrap();
        w.write_all(&new).unwrap();
        w.sync_all().unwrap();
        drop(w);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: the lower layer was written");
        assert_eq!(
            std::fs::read(l.up("data.bin")).unwrap(),
            new,
            "{mode:?}: the upper copy"
        );
        assert_eq!(std::fs::read(m.path("data.bin")).unwrap(), new, "{mode:?}: a new open");
        let mut all = vec![0u8; old.len()];
        reader.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(all, old, "{mode:?}: the descriptor from before the copy-up");
        drop(reader);
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: the lower layer after unmount");
    }
}
