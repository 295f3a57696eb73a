//! docs/semantics.md, "Data": an xattr read racing with `XATTR_REPLACE` sees the old or the new
//! value, never an error or a mix, in each of our data paths, also while the first replace
//! copies the file up.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::reference::*;

/// getxattr as `getfattr` does it: the size first, then the value into a buffer that large.
fn getxattr_twice(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let get = |buf: &mut [u8]| {
        // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes
        // at most `buf.len()` bytes into `buf` (nothing when it is empty).
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    };
    let size = get(&mut [])?;
    let mut buf = vec![0u8; size];
    let n = get(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// getxattr in one call, with room for any value.
fn getxattr_once(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    xget_err(p, name)
}

type XattrReader = fn(&Path, &str) -> Result<Vec<u8>, i32>;

/// The two values each file's `user.race` alternates between, and how readers read it: files
/// with values of one length are read as `getfattr` does (size, then value); files whose values
/// differ in length are read in one call with room for either.
fn race_values(i: usize) -> (Vec<u8>, Vec<u8>, XattrReader) {
    if i % 2 == 0 {
        (
            b"value-A-0123456789".to_vec(),
            b"value-B-9876543210".to_vec(),
            getxattr_twice,
        )
    } else {
        (vec![b'a'; 9], vec![b'b'; 3000], getxattr_once)
    }
}

/// Replaces `user.race` of each file in `files` (`(i, path)`: values and reader of
/// [`race_values`]`(i)`) back and forth `rounds` times (XATTR_REPLACE; `writers` threads, each
/// with its share of the files) while three readers read them all; returns every failure or
/// unexpected value the readers saw.
fn race_replace(files: &[(usize, PathBuf)], rounds: usize, writers: usize) -> Vec<String> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bad = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (i, f) in files {
                        let (a, b, read) = race_values(*i);
                        match read(f, "user.race") {
                            Ok(v) if v == a || v == b => {}
                            r => bad.lock().unwrap().push(format!("{}: {r:?}", f.display())),
                        }
                    }
                }
            });
        }
        let writing: Vec<_> = (0..writers)
            .map(|w| {
                s.spawn(move || {
                    for round in 0..rounds {
                        for (i, f) in files.iter().skip(w).step_by(writers) {
                            let (a, b, _) = race_values(*i);
                            let v = if round % 2 == 0 { b } else { a };
                            rustix::fs::lsetxattr(f, "user.race", &v, rustix::fs::XattrFlags::REPLACE)
                                .expect("replace");
                        }
                    }
                })
            })
            .collect();
        // Stop the readers before raising a writer's panic (or the scope would wait forever).
        let done: Vec<_> = writing.into_iter().map(|w| w.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in done {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    bad.into_inner().unwrap()
}

#[test]
fn getxattr_racing_with_replace_sees_old_or_new_value() {
    for (label, args) in MODES {
        // Lower files: the first replace copies each one up while the readers read it.
        let l = layers(|l| {
            for i in 0..40 {
                l.put(0, &format!("f{i}"), b"data");
                xset(&l.lower(0, &format!("f{i}")), "user.race", &race_values(i).0).unwrap();
            }
        });
        let m = l.mount(args);
        let files: Vec<(usize, PathBuf)> = (0..40).map(|i| (i, m.path(&format!("f{i}")))).collect();
        // One file also held open (its xattrs are then read through the open handle).
        let _held = std::fs::File::open(&files[0].1).unwrap();
        // Every file, the first replaces copying them up under the readers.
        let mut bad = race_replace(&files, 200, 1);
        // Then the file whose value changes length, alone, so that readers and the writer meet
        // on it all the time. Code that answers the size and the value from two reads (before
        // 71b85fd) fails this phase with 2 to 290 bad reads per mode (ERANGE, which a 64 KiB
        // reader sees as E2BIG), where the phase above alone got 0 to 11 and let about one run
        // in five pass.
        bad.extend(race_replace(&files[1..2], 10000, 1));
        assert!(
            bad.is_empty(),
            "{label}: {} bad reads, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
}
