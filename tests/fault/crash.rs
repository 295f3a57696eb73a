//! Crash safety (docs/semantics.md, "Copy-up": a crash at any step leaves the view as it was): the daemon is
//! killed with SIGKILL in the middle of big copy-ups, directory-rename materialisation and streams
//! of fsynced writes. After cleaning up the dead mount and remounting, no partial file is visible
//! at a final name, every byte written before a completed fsync is there, the workdir's scratch
//! directory is empty and the lower layers are byte-for-byte unchanged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const MIB: usize = 1 << 20;

/// Deterministic content: each MiB block starts with its index, the rest is a fixed pattern.
fn big_content(mib: usize) -> Vec<u8> {
    let mut block = vec![0u8; MIB];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ (i >> 8)) as u8;
    }
    let mut out = Vec::with_capacity(mib * MIB);
    for k in 0..mib {
        let mut blk = block.clone();
        blk[..8].copy_from_slice(&(k as u64).to_le_bytes());
        out.extend_from_slice(&blk);
    }
    out
}

/// Kills the daemon of `m`, then tears the dead mount down (`umount -l`) and reaps the daemon.
fn crash(m: Mount) {
    assert!(daemon_alive(&m), "daemon died before we killed it");
    kill9(&m);
    drop(m);
}

/// The upper must never hold a partial copy at `rel`: absent, or at least `lower` as a prefix.
fn assert_upper_not_partial(l: &Layers, rel: &str, lower: &[u8]) {
    let p = l.up(rel);
    if let Ok(md) = std::fs::symlink_metadata(&p) {
        if md.is_file() {
            let data = std::fs::read(&p).unwrap();
            assert!(
                data.len() >= lower.len() && data[..lower.len()] == *lower,
                "partial copy-up at the final name {} in the upper: {} of {} bytes",
                p.display(),
                data.len(),
                lower.len()
            );
        }
    }
}

/// SIGKILL while a 256 MiB lower file is being copied up by an open for append. After remount
/// the file is the full lower version, or the complete copy plus a prefix of what was appended
/// (all of it when the fsync had returned). At least one kill must land inside the copy-up
/// (the copy being built is left in the workdir's scratch directory), or nothing was tested.
#[test]
fn crash_during_big_copy_up_leaves_lower_or_complete_copy() {
    let l = Layers::new(1);
    let content = Arc::new(big_content(256));
    std::fs::write(l.lower(0, "big"), &content[..]).unwrap();
    let before = l.snapshot_lowers();
    let tail = b"APPENDED-RECORD-0123456789";
    let mut copied_seen = 0;
    let mut killed_in_copy_up = 0;
    for delay_ms in [0u64, 30, 150, 400, 900] {
        let m = l.mount(&[]);
        // 0 = not opened yet, 1 = open returned, 2 = write returned, 3 = fsync returned.
        let stage = Arc::new(AtomicU64::new(0));
        let p = m.path("big");
        let st = stage.clone();
        let h = std::thread::spawn(move || {
            let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&p) else {
                return;
            };
            st.store(1, Ordering::SeqCst);
            if f.write_all(tail).is_err() {
                return;
            }
            st.store(2, Ordering::SeqCst);
            if f.sync_all().is_ok() {
                st.store(3, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        crash(m);
        h.join().unwrap();
        let stage = stage.load(Ordering::SeqCst);
        assert_upper_not_partial(&l, "big", &content);
        // The daemon is dead and nothing has emptied the scratch directory yet (the next mount
        // does): whatever is there is the copy the kill interrupted.
        if !workdir_leftovers(&l.work).is_empty() {
            killed_in_copy_up += 1;
        }

        let m = l.mount(&[]);
        assert!(
            workdir_leftovers(&l.work).is_empty(),
            "workdir not emptied at mount: {:?}",
            workdir_leftovers(&l.work)
        );
        let seen = std::fs::read(m.path("big")).unwrap();
        assert!(
            seen.len() >= content.len() && seen[..content.len()] == content[..],
            "delay {delay_ms} ms: partial file visible: {} of {} bytes",
            seen.len(),
            content.len()
        );
        let extra = &seen[content.len()..];
        assert!(
            tail.starts_with(extra),
            "delay {delay_ms} ms: garbage appended: {extra:?}"
        );
        if stage == 3 {
            assert_eq!(extra, tail, "delay {delay_ms} ms: fsynced append lost");
        }
        if l.up("big").exists() {
            copied_seen += 1;
        }
        assert_eq!(m.unmount(), Some(0));
        // Start the next round from the lower again.
        let _ = std::fs::remove_file(l.up("big"));
        assert_eq!(l.snapshot_lowers(), before, "delay {delay_ms} ms: lower changed");
    }
    eprintln!(
        "complete copies published before the kill: {copied_seen} of 5; kills inside the copy-up: {killed_in_copy_up}"
    );
    assert!(
        killed_in_copy_up >= 1,
        "no kill landed inside the copy-up (nothing left in the workdir's scratch directory)"
    );
    assert_eq!(l.snapshot_lowers(), before);
}

/// Entries at and below `p` (0 when it does not exist).
fn count_entries(p: &Path) -> usize {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return 1;
    }
    let children = std::fs::read_dir(p).expect("read_dir");
    1 + children
        .map(|e| count_entries(&e.expect("entry").path()))
        .sum::<usize>()
}

/// SIGKILL while a big lower directory tree is being renamed (materialised into the upper: with
/// `--redirect-dir follow`, as the Podman form mounts; by redirect the rename is one step).
/// After remount exactly one of the two names is visible, holding the complete tree. At least
/// one kill must land inside the rename: it had not returned, and the daemon had been
/// materialising (more of the tree in the upper than before the round, or a copy left in the
/// workdir's scratch directory).
#[test]
fn crash_during_directory_rename_materialisation_is_all_or_nothing() {
    let l = Layers::new(2);
    // ~60 MiB over 600 files in nested directories, split over two lowers.
    let blob = big_content(1);
    for d in 0..12 {
        for f in 0..50 {
            let mut data = blob[..(f % 10 + 1) * 10_000].to_vec();
            data.extend_from_slice(format!("tree/d{d}/sub/f{f}").as_bytes());
            l.put(d % 2, &format!("tree/d{d}/sub/f{f}"), &data);
        }
    }
    l.put(0, "tree/huge", &big_content(32));
    std::os::unix::fs::symlink("d0/sub/f0", l.lower(1, "tree/link")).unwrap();
    let before = l.snapshot_lowers();
    let m = l.mount(&["--redirect-dir", "follow"]);
    let expected = Tree::read(&m.path("tree"));
    drop(m);
    let mut killed_in_rename = 0;
    for (round, delay_ms) in [5u64, 60, 400, 1500, 8000].into_iter().enumerate() {
        let in_upper_before = count_entries(&l.up("tree"));
        let m = l.mount(&["--redirect-dir", "follow"]);
        let from = m.path("tree");
        let to = m.path(&format!("moved{round}"));
        let result = Arc::new(AtomicI64::new(-1));
        let r = result.clone();
        let h = std::thread::spawn(move || {
            let code = match std::fs::rename(&from, &to) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-2) as i64,
            };
            r.store(code, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        crash(m);
        h.join().unwrap();
        let materialising = count_entries(&l.up("tree")) > in_upper_before || !workdir_leftovers(&l.work).is_empty();
        if result.load(Ordering::SeqCst) != 0 && materialising {
            killed_in_rename += 1;
        }
        // Materialisation copies object by object: any file already in the upper is complete.
        if l.up("tree").is_dir() {
            for (p, e) in Tree::read(&l.up("tree")).entries {
                if let Entry::File { data, .. } = e {
                    let Some(Entry::File { data: want, .. }) = expected.entries.get(&p) else {
                        panic!("round {round}: unexpected file tree/{} in the upper", p.display());
                    };
                    assert!(
                        data == *want,
                        "round {round}: partial copy at tree/{} in the upper",
                        p.display()
                    );
                }
            }
        }
        let m = l.mount(&["--redirect-dir", "follow"]);
        assert!(
            workdir_leftovers(&l.work).is_empty(),
            "round {round}: workdir not emptied: {:?}",
            workdir_leftovers(&l.work)
        );
        let src = exists_raw(&m.path("tree"));
        let dst = exists_raw(&m.path(&format!("moved{round}")));
        assert!(
            src ^ dst,
            "round {round} (delay {delay_ms} ms, rename result {}): tree visible at source: {src}, at target: {dst}",
            result.load(Ordering::SeqCst)
        );
        eprintln!(
            "round {round} (delay {delay_ms} ms): rename result {}, tree at target: {dst}",
            result.load(Ordering::SeqCst)
        );
        let name = if src {
            "tree".to_string()
        } else {
            format!("moved{round}")
        };
        assert_eq!(
            Tree::read(&m.path(&name)),
            expected,
            "round {round}: {name} is not the complete tree"
        );
        if result.load(Ordering::SeqCst) == 0 {
            assert!(
                dst,
                "round {round}: rename returned success but the target is gone after the crash"
            );
        }
        // Put the tree back at its name for the next round.
        if dst {
            std::fs::rename(m.path(&name), m.path("tree")).unwrap();
            assert_eq!(Tree::read(&m.path("tree")), expected);
        }
        assert_eq!(m.unmount(), Some(0));
        assert_eq!(l.snapshot_lowers(), before, "round {round}: lower changed");
    }
    eprintln!("kills inside the rename's materialisation: {killed_in_rename} of 5");
    assert!(
        killed_in_rename >= 1,
        "no kill landed inside the rename (none while it was materialising the tree)"
    );
}

/// Record `i` of writer `w`: 4 KiB, self-describing.
fn record(w: usize, i: u64) -> Vec<u8> {
    let mut r = format!("w{w} rec {i:010}|").into_bytes();
    r.resize(4096, b'a' + (i % 26) as u8);
    r
}

/// Checks `data` (after `prefix`) is records 0.. of writer `w`, at least `synced + 1` of them, and
/// that whatever follows the last complete record is a prefix of the next one.
fn check_stream(what: &str, data: &[u8], prefix: &[u8], w: usize, synced: i64) {
    assert!(
        data.len() >= prefix.len() && data[..prefix.len()] == *prefix,
        "{what}: original content damaged"
    );
    let body = &data[prefix.len()..];
    let full = body.len() / 4096;
    for i in 0..full {
        assert_eq!(
            &body[i * 4096..(i + 1) * 4096],
            &record(w, i as u64)[..],
            "{what}: record {i} corrupt"
        );
    }
    let rest = &body[full * 4096..];
    assert!(
        record(w, full as u64).starts_with(rest),
        "{what}: torn garbage after record {full}"
    );
    assert!(
        full as i64 > synced,
        "{what}: only {full} records survived, but record {synced} had been fsynced"
    );
}

/// SIGKILL during streams of writes with fsync: to a new file, to a copied-up lower file
/// (append) and to a lower file rewritten in place. Every record whose fsync returned is there.
/// At least one kill must land while all three streams were under way (each with a record
/// fsynced), or the check of fsynced records checked nothing.
#[test]
fn crash_during_fsync_write_streams_keeps_every_synced_byte() {
    let l = Layers::new(1);
    let lower_a = b"lower content of a\n".repeat(1000);
    let lower_c = vec![b'L'; 3 * 4096];
    for round in 0..4 {
        l.put(0, &format!("r{round}/a"), &lower_a);
        l.put(0, &format!("r{round}/c"), &lower_c);
    }
    let before = l.snapshot_lowers();
    let mut killed_mid_stream = 0;
    for (round, delay_ms) in [50u64, 200, 450, 800].into_iter().enumerate() {
        let m = l.mount(&[]);
        // Per writer: index of the last record whose fsync returned (-1 = none).
        let synced: Arc<Vec<AtomicI64>> = Arc::new((0..3).map(|_| AtomicI64::new(-1)).collect());
        let mut hs = Vec::new();
        for w in 0..3 {
            let synced = synced.clone();
            let p = match w {
                0 => m.path(&format!("r{round}/new")),
                1 => m.path(&format!("r{round}/a")),
                _ => m.path(&format!("r{round}/c")),
            };
            hs.push(std::thread::spawn(move || {
                let mut o = std::fs::OpenOptions::new();
                match w {
                    0 => o.write(true).create_new(true).mode(0o644),
                    1 => o.append(true),
                    _ => o.write(true),
                };
                let Ok(mut f) = o.open(&p) else { return };
                let start = Instant::now();
                for i in 0u64.. {
                    if start.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    if f.write_all(&record(w, i)).is_err() || f.sync_data().is_err() {
                        break;
                    }
                    synced[w].store(i as i64, Ordering::SeqCst);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        crash(m);
        for h in hs {
            h.join().unwrap();
        }
        let s: Vec<i64> = synced.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        if s.iter().all(|&n| n >= 0) {
            killed_mid_stream += 1;
        }
        let m = l.mount(&[]);
        assert!(
            workdir_leftovers(&l.work).is_empty(),
            "round {round}: workdir not emptied"
        );
        let read = |rel: &str| std::fs::read(m.path(&format!("r{round}/{rel}")));
        match read("new") {
            Ok(d) => check_stream(&format!("round {round} new"), &d, b"", 0, s[0]),
            Err(e) => assert_eq!(s[0], -1, "round {round}: fsynced new file is gone: {e}"),
        }
        check_stream(&format!("round {round} a"), &read("a").unwrap(), &lower_a, 1, s[1]);
        // In-place overwrite from offset 0: synced records, then the lower's remaining bytes.
        let c = read("c").unwrap();
        let ok_records = (0..)
            .take_while(|&i| c.len() >= (i + 1) * 4096 && c[i * 4096..(i + 1) * 4096] == record(2, i as u64)[..])
            .count();
        assert!(
            ok_records as i64 > s[2],
            "round {round} c: {ok_records} records survived, but record {} had been fsynced",
            s[2]
        );
        assert!(
            c.len() >= lower_c.len(),
            "round {round} c: partial copy-up ({} bytes)",
            c.len()
        );
        if ok_records < 3 {
            let rest = &c[ok_records * 4096..lower_c.len()];
            let rec = record(2, ok_records as u64);
            let torn = rest.iter().zip(rec.iter()).take_while(|(a, b)| a == b).count();
            assert!(
                rest[torn..].iter().all(|&b| b == b'L'),
                "round {round} c: bytes that are neither the lower's nor written"
            );
        }
        eprintln!("round {round} (delay {delay_ms} ms): fsynced records {s:?}");
        assert_eq!(m.unmount(), Some(0));
        assert_eq!(l.snapshot_lowers(), before, "round {round}: lower changed");
    }
    assert!(
        killed_mid_stream >= 1,
        "no kill landed while all three streams had fsynced records"
    );
    assert!(Path::new(&l.upper).exists());
}
