//! Concurrency: threads and `sh` loops hammer overlapping paths for a bounded time (create,
//! write, rename, unlink, readdir, concurrent copy-up of the same lower file). Afterwards no name
//! is lost or duplicated, every file holds what its owner last wrote, both appenders' records are
//! in the shared copied-up files with the lower prefix intact, the lowers are unchanged, the upper
//! is in valid overlay format, and a remount shows the same view.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;

const THREADS: usize = 4;
const FILES: usize = 8;
const SHARED: usize = 3;
const RUN: Duration = Duration::from_secs(5);

fn owned(t: usize, k: usize) -> String {
    format!("work/t{t}_f{k}")
}

fn lower_owned(t: usize, k: usize) -> Vec<u8> {
    format!("lower t{t} f{k}\n").repeat(100 + k).into_bytes()
}

fn shared_prefix(s: usize) -> Vec<u8> {
    format!("lower prefix of shared {s}\n").repeat(2000).into_bytes()
}

/// Owner thread `t`: random writes/renames/unlinks/stats/readdirs of its own files, all in the
/// shared directory `work/`. Returns what each of its names must hold at the end.
fn owner(m_root: std::path::PathBuf, t: usize, start: Arc<Barrier>) -> BTreeMap<String, Option<Vec<u8>>> {
    let p = |rel: &str| m_root.join(rel);
    let mut last: BTreeMap<String, Option<Vec<u8>>> = (0..FILES)
        .map(|k| (owned(t, k), (k < FILES / 2).then(|| lower_owned(t, k))))
        .collect();
    let mut rng = Rng::new(t as u64 + 1);
    start.wait();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < RUN {
        n += 1;
        let k = rng.below(FILES as u64) as usize;
        let name = owned(t, k);
        match rng.below(10) {
            0..=3 => {
                let data = format!("t{t} f{k} write {n}\n")
                    .repeat(1 + rng.below(50) as usize)
                    .into_bytes();
                std::fs::write(p(&name), &data).unwrap_or_else(|e| panic!("write {name}: {e}"));
                last.insert(name, Some(data));
            }
            4 => {
                // Append (copies a lower file up).
                if let Some(Some(old)) = last.get(&name).cloned() {
                    let add = format!("t{t} append {n}\n").into_bytes();
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(p(&name))
                        .unwrap_or_else(|e| panic!("open append {name}: {e}"));
                    f.write_all(&add).unwrap();
                    let mut d = old;
                    d.extend_from_slice(&add);
                    last.insert(name, Some(d));
                }
            }
            5 | 6 => {
                let j = rng.below(FILES as u64) as usize;
                let to = owned(t, j);
                let r = std::fs::rename(p(&name), p(&to));
                match last.get(&name).cloned().flatten() {
                    Some(d) => {
                        r.unwrap_or_else(|e| panic!("rename {name} -> {to}: {e}"));
                        if j != k {
                            last.insert(to, Some(d));
                            last.insert(name, None);
                        }
                    }
                    None => assert_eq!(err_code(r), Some(libc::ENOENT), "rename of absent {name}"),
                }
            }
            7 => {
                let r = std::fs::remove_file(p(&name));
                match last.get(&name).cloned().flatten() {
                    Some(_) => r.unwrap_or_else(|e| panic!("unlink {name}: {e}")),
                    None => assert_eq!(err_code(r), Some(libc::ENOENT), "unlink of absent {name}"),
                }
                last.insert(name, None);
            }
            8 => {
                // Own files are stable while we look: their presence must match exactly.
                let r = std::fs::read(p(&name));
                match last.get(&name).cloned().flatten() {
                    Some(d) => assert_eq!(r.unwrap_or_else(|e| panic!("read {name}: {e}")), d, "{name}"),
                    None => assert_eq!(err_code(r), Some(libc::ENOENT), "{name} should be absent"),
                }
            }
            _ => {
                let listed: Vec<_> = std::fs::read_dir(p("work"))
                    .expect("readdir work")
                    .map(|e| e.expect("readdir entry").file_name())
                    .collect();
                let mine: Vec<_> = listed
                    .iter()
                    .filter_map(|n| n.to_str())
                    .filter(|n| n.starts_with(&format!("t{t}_")))
                    .map(|n| format!("work/{n}"))
                    .collect();
                let mine_set: BTreeSet<_> = mine.iter().cloned().collect();
                assert_eq!(
                    mine.len(),
                    mine_set.len(),
                    "thread {t}: own name listed twice: {mine:?}"
                );
                let want: BTreeSet<_> = last
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(mine_set, want, "thread {t}: readdir disagrees with own files");
            }
        }
    }
    last
}

/// Appender `a` on shared file `s`: one O_APPEND write per record.
fn appender(m_root: std::path::PathBuf, s: usize, a: usize, start: Arc<Barrier>) -> u64 {
    let path = m_root.join(format!("shared/s{s}"));
    start.wait();
    let t0 = Instant::now();
    let mut n = 0u64;
    // Both appenders open at the same moment: a concurrent copy-up of one lower file.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open shared s{s}: {e}"));
    while t0.elapsed() < RUN && n < 3000 {
        f.write_all(format!("[s{s} a{a} rec {n:06}]\n").as_bytes())
            .unwrap_or_else(|e| panic!("append s{s}: {e}"));
        n += 1;
        if n % 200 == 0 {
            // Reopen now and then: the file is in the upper by now.
            f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        }
    }
    n
}

/// Checks that the shared file is the lower prefix followed by both appenders' records, each in
/// order and exactly once.
fn check_shared(s: usize, data: &[u8], counts: &[u64; 2]) {
    let prefix = shared_prefix(s);
    assert!(data.starts_with(&prefix), "shared s{s}: lower prefix damaged");
    let body = std::str::from_utf8(&data[prefix.len()..]).expect("utf8 records");
    let mut next = [0u64; 2];
    for line in body.lines() {
        let (a, rec) = line
            .strip_prefix(&format!("[s{s} a"))
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.split_once(" rec "))
            .unwrap_or_else(|| panic!("shared s{s}: garbled record {line:?}"));
        let a: usize = a.parse().unwrap();
        let rec: u64 = rec.parse().unwrap();
        assert_eq!(
            rec, next[a],
            "shared s{s}: appender {a} record out of order / lost / duplicated"
        );
        next[a] += 1;
    }
    assert_eq!(&next, counts, "shared s{s}: records lost");
}

fn sh_loop(mnt: &std::path::Path, i: usize) -> std::process::Child {
    // Each loop owns sh{i}/ (a lower directory) and ends with a known state.
    let script = r#"
        d="$1/sh$2"; end=$(( $(date +%s) + 5 )); n=0
        while [ "$(date +%s)" -lt "$end" ]; do
            n=$((n+1))
            mkdir -p "$d/tmp$n" && echo "v$n" > "$d/tmp$n/f" && mv "$d/tmp$n" "$d/cur$n" || exit 11
            ls "$d" > /dev/null || exit 12
            [ "$(cat "$d/cur$n/f")" = "v$n" ] || exit 13
            rm -rf "$d/cur$n" || exit 14
            echo "$n" >> "$d/lower-log" || exit 15
            ls "$1/work" > /dev/null || exit 16
        done
        echo "done $n" > "$d/final"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(mnt)
        .arg(i.to_string())
        .spawn()
        .expect("spawn sh loop")
}

#[test]
fn concurrent_mixed_operations_on_overlapping_paths_stay_consistent() {
    let l = Layers::new(2);
    for t in 0..THREADS {
        for k in 0..FILES / 2 {
            l.put(t % 2, &owned(t, k), &lower_owned(t, k));
        }
    }
    l.mkdir(1, "work");
    for s in 0..SHARED {
        l.put(s % 2, &format!("shared/s{s}"), &shared_prefix(s));
    }
    for i in 0..2 {
        l.put(1, &format!("sh{i}/lower-log"), b"0\n");
        l.put(0, &format!("sh{i}/keep"), b"keep");
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);

    let start = Arc::new(Barrier::new(THREADS + 2 * SHARED));
    let owners: Vec<_> = (0..THREADS)
        .map(|t| {
            let (root, b) = (m.mnt.clone(), start.clone());
            std::thread::spawn(move || owner(root, t, b))
        })
        .collect();
    let appenders: Vec<_> = (0..SHARED)
        .flat_map(|s| (0..2).map(move |a| (s, a)))
        .map(|(s, a)| {
            let (root, b) = (m.mnt.clone(), start.clone());
            std::thread::spawn(move || appender(root, s, a, b))
        })
        .collect();
    let shells: Vec<_> = (0..2).map(|i| sh_loop(&m.mnt, i)).collect();

    let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for h in owners {
        expected.extend(h.join().expect("owner thread panicked"));
    }
    let mut counts = [[0u64; 2]; SHARED];
    for (i, h) in appenders.into_iter().enumerate() {
        counts[i / 2][i % 2] = h.join().expect("appender thread panicked");
    }
    let mut sh_final = Vec::new();
    for (i, mut c) in shells.into_iter().enumerate() {
        let st = c.wait().unwrap();
        assert!(st.success(), "sh loop {i} failed: {st}");
        let f = std::fs::read_to_string(m.path(&format!("sh{i}/final"))).unwrap();
        let n: u64 = f.trim().strip_prefix("done ").unwrap().parse().unwrap();
        assert!(n > 0);
        sh_final.push(n);
    }
    assert!(daemon_alive(&m));

    let check = |root: &Path, when: &str| {
        // readdir: unique names, every name stat()s.
        for dir in ["", "work", "shared", "sh0", "sh1"] {
            let listed: Vec<String> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let set: BTreeSet<_> = listed.iter().collect();
            assert_eq!(set.len(), listed.len(), "{when}: duplicate names in /{dir}: {listed:?}");
            for n in &listed {
                lstat(&root.join(dir).join(n));
            }
        }
        let want: BTreeSet<String> = expected
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.trim_start_matches("work/").to_string())
            .collect();
        let got: BTreeSet<String> = names(&root.join("work")).into_iter().collect();
        assert_eq!(got, want, "{when}: names in work/ lost or resurrected");
        for (name, v) in &expected {
            let r = std::fs::read(root.join(name));
            match v {
                Some(d) => assert_eq!(&r.unwrap(), d, "{when}: {name} does not hold its last write"),
                None => assert_eq!(err_code(r), Some(libc::ENOENT), "{when}: {name} should be gone"),
            }
        }
        for (s, c) in counts.iter().enumerate() {
            check_shared(s, &std::fs::read(root.join(format!("shared/s{s}"))).unwrap(), c);
        }
        for (i, n) in sh_final.iter().enumerate() {
            assert_eq!(
                names(&root.join(format!("sh{i}"))),
                ["final", "keep", "lower-log"],
                "{when}: sh{i}"
            );
            let log: String = std::iter::once("0\n".to_string())
                .chain((1..=*n).map(|k| format!("{k}\n")))
                .collect();
            assert_eq!(
                std::fs::read_to_string(root.join(format!("sh{i}/lower-log"))).unwrap(),
                log
            );
        }
    };
    // The ending also compares the whole view after the remount with the one before it.
    sc.ending(m)
        .view(|root| check(root, "before and after the remount"))
        .after(|| {
            assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new());
            assert!(workdir_leftovers(&l.work).is_empty());
        })
        .end();
}

/// Many threads race to copy up the same set of lower files (open for write, chmod, truncate,
/// setxattr at once). Each file is copied up exactly once: every writer's record is present, the
/// lower prefix is intact, and nothing is left in the workdir.
#[test]
fn concurrent_copy_up_of_the_same_lower_files_from_many_threads() {
    let l = Layers::new(1);
    let prefix = Arc::new(b"0123456789abcdef".repeat(64 * 1024)); // 1 MiB
    for i in 0..20 {
        l.put(0, &format!("d{}/f{i}", i % 4), &prefix[..]);
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let start = Arc::new(Barrier::new(6));
    let hs: Vec<_> = (0..6)
        .map(|t| {
            let (root, b, prefix) = (m.mnt.clone(), start.clone(), prefix.clone());
            std::thread::spawn(move || {
                b.wait();
                for i in 0..20 {
                    let p = root.join(format!("d{}/f{i}", i % 4));
                    match t {
                        0..=2 => {
                            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                            f.write_all(format!("<writer {t} file {i}>").as_bytes()).unwrap();
                        }
                        3 => {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
                        }
                        4 => xset(&p, "user.mark", format!("x{i}").as_bytes()).unwrap(),
                        _ => {
                            // Readers keep seeing at least the full lower content.
                            let d = std::fs::read(&p).unwrap();
                            assert!(d.starts_with(&prefix[..]), "reader saw a partial file f{i}");
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread panicked");
    }
    let check = |root: &Path| {
        for i in 0..20 {
            let p = root.join(format!("d{}/f{i}", i % 4));
            let d = std::fs::read(&p).unwrap();
            assert!(d.starts_with(&prefix[..]), "f{i}: lower prefix damaged");
            let tail = String::from_utf8(d[prefix.len()..].to_vec()).unwrap();
            for t in 0..3 {
                assert_eq!(
                    tail.matches(&format!("<writer {t} file {i}>")).count(),
                    1,
                    "f{i}: writer {t}'s record lost or doubled: {tail:?}"
                );
            }
            assert_eq!(tail.len(), 3 * "<writer 0 file 0>".len() + 3 * (i >= 10) as usize);
            use std::os::unix::fs::MetadataExt;
            assert_eq!(lstat(&p).mode() & 0o7777, 0o640, "f{i}: chmod lost");
            assert_eq!(
                xget(&p, "user.mark"),
                Some(format!("x{i}").into_bytes()),
                "f{i}: xattr lost"
            );
        }
    };
    sc.ending(m)
        .view(check)
        .after(|| {
            assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new());
            assert!(workdir_leftovers(&l.work).is_empty());
        })
        .end();
}

/// Focused reproducer: listings of a directory taken while other threads create and unlink
/// *other* names in it must return every stable name exactly once (POSIX leaves only the names
/// added or removed during the listing unspecified).
#[test]
fn readdir_during_concurrent_changes_returns_stable_names_exactly_once() {
    let l = Layers::new(1);
    for i in 0..150 {
        l.put(0, &format!("dir/lower-{i:03}"), b"l");
    }
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    for i in 0..150 {
        std::fs::write(m.path(&format!("dir/upper-{i:03}")), b"u").unwrap();
    }
    let stable: BTreeSet<String> = names(&m.path("dir")).into_iter().collect();
    assert_eq!(stable.len(), 300);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|t| {
            let (dir, stop) = (m.path("dir"), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = dir.join(format!("churn-{t}-{}", n % 40));
                    if n % 80 < 40 {
                        std::fs::write(&p, b"c").unwrap();
                    } else {
                        std::fs::remove_file(&p).unwrap();
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stable) = (m.path("dir"), stable.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let (mut bad, mut total) = (Vec::new(), 0);
                while t0.elapsed() < Duration::from_secs(3) {
                    total += 1;
                    let mut seen = BTreeMap::<String, usize>::new();
                    for e in std::fs::read_dir(&dir).unwrap() {
                        *seen
                            .entry(e.unwrap().file_name().to_string_lossy().into_owned())
                            .or_default() += 1;
                    }
                    let dup: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).map(|(n, _)| n.clone()).collect();
                    let missing: Vec<_> = stable.iter().filter(|n| !seen.contains_key(*n)).cloned().collect();
                    if !dup.is_empty() || !missing.is_empty() {
                        bad.push(format!("duplicated {dup:?}, missing {missing:?}"));
                    }
                }
                (bad, total)
            })
        })
        .collect();
    let mut bad = Vec::new();
    let mut total = 0;
    for h in readers {
        let (b, t) = h.join().unwrap();
        bad.extend(b);
        total += t;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in churners {
        h.join().unwrap();
    }
    assert!(
        bad.is_empty(),
        "{} of {total} listings returned a stable name twice or not at all; first: {}",
        bad.len(),
        bad[0]
    );
    assert!(daemon_alive(&m));
    sc.finish(m);
}
