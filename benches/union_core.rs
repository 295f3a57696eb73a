//! Micro-benchmarks of the union library (no FUSE, no mount): lookup resolution, readdir merge
//! and copy-up, through the public API of [`unionfs::Union`].
//!
//! Run: `cargo bench --bench union_core` (about a minute and a half; add a filter such as
//! `cargo bench --bench union_core -- lookup` to run a part). Runs as any user: whiteouts are
//! char devices 0/0 as root and OCI `.wh.` files otherwise (the union reads both).
//!
//! Layers (built once in a temp dir): three lowers, top first; `big/` is merged from all three
//! and shows 10,000 entries, with 500 more names of the bottom lower hidden by whiteouts in the
//! upper two lowers; `files/f1m` is a 1 MiB file in the bottom lower.

use std::ffi::{OsStr, OsString};
use std::hint::black_box;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tempfile::TempDir;
use unionfs::{MountConfig, ROOT, Union};

const VISIBLE: usize = 10_000;
const WHITED_OUT: usize = 500;

struct Layers {
    _tmp: TempDir,
    lowers: Vec<PathBuf>,
    /// Names visible in `big/`, names hidden by whiteouts, and names that exist nowhere.
    visible: Vec<OsString>,
    hidden: Vec<OsString>,
    absent: Vec<OsString>,
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// A whiteout for `name` in `dir`: char device 0/0 if we may, else an OCI `.wh.` file.
fn whiteout(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let dev = rustix::fs::makedev(0, 0);
    let chr = rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join(name),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        dev,
    );
    if chr.is_err() {
        write(&dir.join(format!(".wh.{name}")), b"");
    } else {
        debug_assert!(
            std::fs::symlink_metadata(dir.join(name))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
}

fn layers() -> Layers {
    let tmp = tempfile::Builder::new().prefix("unionfs-bench-").tempdir().unwrap();
    let lowers: Vec<PathBuf> = ["l1", "l2", "l3"].iter().map(|n| tmp.path().join(n)).collect();
    for l in &lowers {
        std::fs::create_dir_all(l.join("big")).unwrap();
    }
    let (mut visible, mut hidden) = (Vec::new(), Vec::new());
    // Name i lives in lower i % 3; every 21st name of the bottom lower is whited out above it.
    let mut i = 0;
    while visible.len() < VISIBLE || hidden.len() < WHITED_OUT {
        let name = format!("e{i:05}");
        let layer = i % 3;
        if layer == 2 && i % 21 == 2 && hidden.len() < WHITED_OUT {
            write(&lowers[2].join("big").join(&name), b"hidden");
            whiteout(&lowers[(i / 21) % 2].join("big"), &name);
            hidden.push(OsString::from(name));
        } else if visible.len() < VISIBLE {
            write(&lowers[layer].join("big").join(&name), &[b'x'; 256]);
            visible.push(OsString::from(name));
        }
        i += 1;
    }
    let absent = (0..VISIBLE).map(|i| OsString::from(format!("absent{i:05}"))).collect();
    let mb: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write(&lowers[2].join("files/f1m"), &mb);
    write(&lowers[1].join("files/other"), b"merged directory");
    Layers {
        _tmp: tmp,
        lowers,
        visible,
        hidden,
        absent,
    }
}

/// A read-only union of the lowers.
fn read_only(l: &Layers) -> Union {
    Union::new(&MountConfig::new(l.lowers.clone(), None)).unwrap()
}

/// A union with a fresh upper and workdir in a new temp dir.
fn writable(l: &Layers, volatile: bool) -> (TempDir, Union) {
    let tmp = tempfile::Builder::new()
        .prefix("unionfs-bench-upper-")
        .tempdir()
        .unwrap();
    let upper = tmp.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let mut cfg = MountConfig::new(l.lowers.clone(), Some(upper));
    cfg.workdir = Some(tmp.path().join("work"));
    cfg.volatile = volatile;
    (tmp, Union::new(&cfg).unwrap())
}

fn lookup_ino(u: &Union, parent: u64, name: &str) -> u64 {
    u.lookup(parent, OsStr::new(name)).unwrap().ino
}

fn bench_lookup(c: &mut Criterion, l: &Layers) {
    let u = read_only(l);
    let big = lookup_ino(&u, ROOT, "big");
    // Warm: the merged index of big/ is built by the first lookup.
    let first = u.lookup(big, &l.visible[0]).unwrap();
    u.forget(first.ino, 1);

    let mut g = c.benchmark_group("lookup");
    let mut i = 0;
    g.bench_function("hit_10k_dir", |b| {
        b.iter(|| {
            let name = &l.visible[i % l.visible.len()];
            i += 1;
            let a = u.lookup(big, black_box(name)).unwrap();
            u.forget(a.ino, 1);
            a.ino
        })
    });
    let mut i = 0;
    g.bench_function("miss_10k_dir", |b| {
        b.iter(|| {
            let name = &l.absent[i % l.absent.len()];
            i += 1;
            u.lookup(big, black_box(name)).unwrap_err()
        })
    });
    let mut i = 0;
    g.bench_function("whiteout_10k_dir", |b| {
        b.iter(|| {
            let name = &l.hidden[i % l.hidden.len()];
            i += 1;
            u.lookup(big, black_box(name)).unwrap_err()
        })
    });
    g.finish();
    u.forget(big, 1);
}

/// opendir + readdir(fh, 0) + release of big/; returns the entry count.
fn list(u: &Union, dir: u64) -> usize {
    let fh = u.opendir(dir).unwrap();
    let n = u.readdir(fh, 0).unwrap().len();
    u.release(fh);
    n
}

fn bench_readdir(c: &mut Criterion, l: &Layers) {
    let mut g = c.benchmark_group("readdir");
    g.bench_function("index_build_10k_merged", |b| {
        b.iter_batched(
            || {
                let u = read_only(l);
                let big = lookup_ino(&u, ROOT, "big");
                (u, big)
            },
            |(u, big)| {
                assert_eq!(list(&u, big), VISIBLE + 2);
                u // dropped outside the measurement
            },
            BatchSize::PerIteration,
        )
    });
    let u = read_only(l);
    let big = lookup_ino(&u, ROOT, "big");
    list(&u, big);
    g.bench_function("snapshot_10k_warm", |b| b.iter(|| list(&u, black_box(big))));
    g.finish();
}

fn bench_copy_up(c: &mut Criterion, l: &Layers) {
    let mut g = c.benchmark_group("copy_up");
    for (name, volatile) in [("open_wronly_1MiB", false), ("open_wronly_1MiB_volatile", true)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (tmp, u) = writable(l, volatile);
                    let dir = lookup_ino(&u, ROOT, "files");
                    let f = lookup_ino(&u, dir, "f1m");
                    (tmp, u, f)
                },
                |(tmp, u, f)| {
                    let fh = u.open(f, libc::O_WRONLY).unwrap();
                    u.release(fh);
                    (tmp, u) // dropped (and the temp dir removed) outside the measurement
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let l = layers();
    bench_lookup(c, &l);
    bench_readdir(c, &l);
    bench_copy_up(c, &l);
}

criterion_group! {
    name = union_core;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(union_core);
