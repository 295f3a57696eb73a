//! docs/semantics.md, "Data": access times follow `noatime`, `relatime` (the default, with its
//! once-a-day rule), `strictatime` and `nodiratime` as on kernel overlayfs over identical layers
//! with the same options, in each of our data paths; lower layers keep theirs; a plain user's
//! `noatime` holds for files (README, "Access times").

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::as_user::*;
use crate::common::*;
use crate::reference::*;

/// atime (ns) of `p` (not following a symlink).
fn atime_of(p: &Path) -> i128 {
    let md = lstat(p);
    md.atime() as i128 * 1_000_000_000 + md.atime_nsec() as i128
}

/// Runs `access` on `p` and says whether the atime moved (after a pause, so that it could).
fn moved(p: &Path, access: impl FnOnce()) -> &'static str {
    std::thread::sleep(Duration::from_millis(30));
    let before = atime_of(p);
    access();
    if atime_of(p) != before { "updated" } else { "kept" }
}

fn read_all(p: &Path) {
    std::fs::read(p).unwrap();
}

fn read_noatime(p: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .unwrap();
    std::io::Read::read_to_end(&mut f, &mut Vec::new()).unwrap();
}

fn list(p: &Path) {
    names(p);
}

/// What reads, listings and runs do to access times through `mnt`, with lower layer `lower`.
fn atime_transcript(mnt: &Path, lower: &Path) -> Vec<String> {
    let p = |n: &str| mnt.join(n);
    let old = 1_000_000_000;
    std::fs::write(p("file"), b"data\n").unwrap();
    std::fs::create_dir(p("dir")).unwrap();
    std::fs::write(p("dir/inside"), b"x").unwrap();
    std::fs::copy("/bin/true", p("prog")).unwrap();
    let mut t = Vec::new();
    // An atime older than the ctime: the next access updates it unless `noatime`.
    set_times(&p("file"), old, old);
    t.push(format!(
        "file, 1st read: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    t.push(format!(
        "file, 2nd read: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    append(&p("file"), b"more\n").unwrap();
    t.push(format!(
        "file, read after a write: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    t.push(format!(
        "file, read again: {}",
        moved(&p("file"), || read_all(&p("file")))
    ));
    set_times(&p("dir"), old, old);
    t.push(format!("dir, 1st listing: {}", moved(&p("dir"), || list(&p("dir")))));
    t.push(format!("dir, 2nd listing: {}", moved(&p("dir"), || list(&p("dir")))));
    set_times(&p("prog"), old, old);
    let run = || assert!(spawn_fresh_program(&p("prog"), &[]).wait().unwrap().success());
    t.push(format!("program run: {}", moved(&p("prog"), run)));
    // O_NOATIME (tar --atime-preserve=system, rsync --open-noatime): whatever the option, that
    // read leaves the atime alone; the next plain read follows the option.
    std::fs::write(p("quiet"), b"q\n").unwrap();
    set_times(&p("quiet"), old, old);
    t.push(format!(
        "O_NOATIME read: {}",
        moved(&p("quiet"), || read_noatime(&p("quiet")))
    ));
    t.push(format!(
        "plain read after an O_NOATIME one: {}",
        moved(&p("quiet"), || read_all(&p("quiet")))
    ));
    // Lower objects: read, listed, followed through the mount; the layer keeps its times.
    let raw = ["lfile", "ldir", "llink"].map(|n| atime_of(&lower.join(n)));
    let view = atime_of(&p("lfile"));
    read_all(&p("lfile"));
    list(&p("ldir"));
    std::fs::read_link(p("llink")).unwrap();
    read_all(&p("llink"));
    t.push(format!(
        "lower file seen: {}",
        if atime_of(&p("lfile")) == view {
            "kept"
        } else {
            "updated"
        }
    ));
    let now = ["lfile", "ldir", "llink"].map(|n| atime_of(&lower.join(n)));
    t.push(format!("lower layer: {}", if now == raw { "kept" } else { "updated" }));
    t
}

fn fill_atime(l: &Layers) {
    l.put(0, "lfile", b"lower\n");
    l.put(0, "ldir/entry", b"e");
    std::os::unix::fs::symlink("lfile", l.lower(0, "llink")).unwrap();
    for n in ["lfile", "ldir", "llink"] {
        set_times(&l.lower(0, n), 1_000_000_000, 1_000_000_000);
    }
}

/// The atime options as the kernel shows them, for each set of options.
fn check_atime_options(opts: &str, expect: &[(&str, &str)]) {
    let k = layers(fill_atime);
    let kernel = {
        let _ko = kernel_overlay(&k, opts);
        atime_transcript(&k.mnt, &k.lowers[0])
    };
    for (what, how) in expect {
        let line = format!("{what}: {how}");
        assert!(
            kernel.contains(&line),
            "kernel overlayfs -o {opts}: no '{line}' in {kernel:#?}"
        );
    }
    for (label, args) in MODES {
        let l = layers(fill_atime);
        let mut args = args.to_vec();
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let m = l.mount(&args);
        let ours = atime_transcript(&m.mnt, &l.lowers[0]);
        assert_eq!(ours, kernel, "{label}, -o {opts:?}");
    }
}

#[test]
fn relatime_is_the_default_and_updates_the_first_access_after_a_change() {
    let expect = [
        ("file, 1st read", "updated"),
        ("file, 2nd read", "kept"),
        ("file, read after a write", "updated"),
        ("dir, 2nd listing", "kept"),
        ("O_NOATIME read", "kept"),
        ("plain read after an O_NOATIME one", "updated"),
        ("lower layer", "kept"),
    ];
    check_atime_options("", &expect);
    check_atime_options("relatime", &expect);
}

#[test]
fn strictatime_updates_every_access() {
    check_atime_options(
        "strictatime",
        &[
            ("file, 2nd read", "updated"),
            ("dir, 2nd listing", "updated"),
            ("lower layer", "kept"),
        ],
    );
}

#[test]
fn noatime_updates_nothing_not_even_a_program_run() {
    check_atime_options(
        "noatime",
        &[
            ("file, 1st read", "kept"),
            ("dir, 1st listing", "kept"),
            ("program run", "kept"),
            ("O_NOATIME read", "kept"),
            ("lower layer", "kept"),
        ],
    );
}

#[test]
fn nodiratime_keeps_directory_times_only() {
    check_atime_options(
        "strictatime,nodiratime",
        &[
            ("file, 2nd read", "updated"),
            ("dir, 1st listing", "kept"),
            ("lower layer", "kept"),
        ],
    );
    check_atime_options(
        "nodiratime",
        &[("file, 1st read", "updated"), ("dir, 1st listing", "kept")],
    );
}

/// An ext4 image mounted through a loop device. Dropping it unmounts (lazily if busy), which
/// also frees the loop device (mount(8) sets it to clear itself).
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn mount(image: &Path, dir: &Path) -> LoopMount {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir)
            .output()
            .expect("spawn mount");
        assert!(
            out.status.success(),
            "mount -o loop {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        LoopMount { dir: dir.to_path_buf() }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        unmount_dir(&self.dir);
    }
}

/// Runs `prog args` and asserts it succeeded.
#[track_caller]
fn run_ok(prog: &str, args: &[&OsStr]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The once-a-day rule of `relatime` through `mnt`: `day-old` and `hour-old` are upper files
/// whose atime (2 days, 1 hour ago) is newer than their mtime and ctime (3 days ago); `touched`
/// gets an atime 2 days back through the mount (which makes its ctime now).
fn day_old_transcript(mnt: &Path) -> Vec<String> {
    let p = |n: &str| mnt.join(n);
    let mut t = Vec::new();
    t.push(format!(
        "day-old atime, read: {}",
        moved(&p("day-old"), || read_all(&p("day-old")))
    ));
    let recent = atime_of(&p("day-old")) >= (now_secs() as i128 - 60) * 1_000_000_000;
    t.push(format!("day-old atime now: {}", if recent { "recent" } else { "old" }));
    t.push(format!(
        "day-old atime, read again: {}",
        moved(&p("day-old"), || read_all(&p("day-old")))
    ));
    t.push(format!(
        "hour-old atime, read: {}",
        moved(&p("hour-old"), || read_all(&p("hour-old")))
    ));
    run_ok(
        "touch",
        &[
            "-a".as_ref(),
            "-d".as_ref(),
            "2 days ago".as_ref(),
            p("touched").as_os_str(),
        ],
    );
    let two_days = (now_secs() as i128 - 2 * 86400) * 1_000_000_000;
    let set = (atime_of(&p("touched")) - two_days).abs() < 60 * 1_000_000_000;
    t.push(format!(
        "touch -a -d '2 days ago': {}",
        if set { "set" } else { "not set" }
    ));
    t.push(format!(
        "touched, read: {}",
        moved(&p("touched"), || read_all(&p("touched")))
    ));
    t
}

#[test]
fn relatime_updates_an_atime_a_day_old_even_when_newer_than_mtime_and_ctime() {
    // A ctime older than the atime cannot be made through any system call (every change of
    // times sets the ctime to now): the uppers live on an ext4 image whose inode times debugfs
    // sets while it is not mounted.
    let fs = tempfile::Builder::new().prefix("unionfs-posix-ext4").tempdir().unwrap();
    let img = fs.path().join("img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run_ok("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), img.as_os_str()]);
    let ext_dir = fs.path().join("ext");
    let targets = ["kernel overlayfs", MODES[0].0, MODES[1].0, MODES[2].0];
    {
        let ext = LoopMount::mount(&img, &ext_dir);
        for i in 0..targets.len() {
            let upper = ext.dir.join(format!("upper{i}"));
            std::fs::create_dir(&upper).unwrap();
            std::fs::create_dir(ext.dir.join(format!("work{i}"))).unwrap();
            for name in ["day-old", "hour-old", "touched"] {
                std::fs::write(upper.join(name), b"data\n").unwrap();
            }
        }
    }
    let now = now_secs();
    let (old, day, hour) = (now - 3 * 86400, now - 2 * 86400, now - 3600);
    let mut cmds = String::new();
    for i in 0..targets.len() {
        for (name, atime) in [("day-old", day), ("hour-old", hour)] {
            for (field, t) in [("atime", atime), ("mtime", old), ("ctime", old)] {
                cmds.push_str(&format!("set_inode_field /upper{i}/{name} {field} @{t}\n"));
            }
        }
    }
    let cmd_file = fs.path().join("debugfs-commands");
    std::fs::write(&cmd_file, cmds).unwrap();
    run_ok(
        "debugfs",
        &["-w".as_ref(), "-f".as_ref(), cmd_file.as_os_str(), img.as_os_str()],
    );
    let ext = LoopMount::mount(&img, &ext_dir);
    for i in 0..targets.len() {
        let md = lstat(&ext.dir.join(format!("upper{i}/day-old")));
        assert_eq!(
            (md.atime(), md.mtime(), md.ctime()),
            (day, old, old),
            "debugfs set the times"
        );
    }
    let mut transcripts = Vec::new();
    for (i, label) in targets.iter().enumerate() {
        let mut l = layers(|_| {});
        l.upper = ext.dir.join(format!("upper{i}"));
        l.work = ext.dir.join(format!("work{i}"));
        let t = if i == 0 {
            let _ko = kernel_overlay(&l, "");
            day_old_transcript(&l.mnt)
        } else {
            let m = l.mount(MODES[i - 1].1);
            day_old_transcript(&m.mnt)
        };
        transcripts.push((*label, t));
    }
    let (_, kernel) = &transcripts[0];
    assert_eq!(
        kernel,
        &[
            "day-old atime, read: updated",
            "day-old atime now: recent",
            "day-old atime, read again: kept",
            "hour-old atime, read: kept",
            "touch -a -d '2 days ago': set",
            "touched, read: updated",
        ],
        "kernel overlayfs"
    );
    for (label, t) in &transcripts[1..] {
        assert_eq!(t, kernel, "{label}");
    }
}

/// atime of `p` as `user` sees it through its mount (seconds, with nanoseconds).
fn user_atime(user: (u32, u32), p: &Path) -> String {
    user_sh_ok(user, "stat -c %.9X \"$1\"", &[p.as_os_str()])
        .trim()
        .to_string()
}

#[test]
fn rootless_noatime_reads_keep_access_times() {
    // README: "Without CAP_SYS_ADMIN (rootless) noatime still holds for files, and otherwise
    // the upper's own mount options decide" (here the relatime of /tmp's filesystem, under
    // which the first read of a file whose atime is older than its ctime updates it: the
    // contrast that shows the reads reach the file).
    let user = rootless_user();
    let old = 1_000_000_000;
    for (opts, first_read) in [(&[][..], "updated"), (&["-o", "noatime"][..], "kept")] {
        let l = user_layers(user, |l| {
            l.put(0, "lower", b"lower\n");
            set_times(&l.lower(0, "lower"), old, old);
        });
        let m = UserMount::start(user, &l, opts);
        let p = |n: &str| m.mnt.join(n);
        user_sh_ok(user, "printf 'new\\n' > \"$1\"", &[p("new").as_os_str()]);
        user_sh_ok(user, "touch -d @1000000000 \"$1\"", &[p("new").as_os_str()]);
        assert_eq!(user_atime(user, &p("new")), format!("{old}.000000000"));
        let mut t = Vec::new();
        for name in ["new", "lower"] {
            for read in ["1st", "2nd"] {
                std::thread::sleep(Duration::from_millis(30));
                let before = user_atime(user, &p(name));
                user_sh_ok(user, "cat \"$1\" >/dev/null", &[p(name).as_os_str()]);
                let moved = user_atime(user, &p(name)) != before;
                t.push(format!(
                    "{name}, {read} read: {}",
                    if moved { "updated" } else { "kept" }
                ));
            }
        }
        let raw = |p: &Path| if lstat(p).atime() == old { "kept" } else { "updated" };
        t.push(format!("upper file itself: {}", raw(&l.up("new"))));
        t.push(format!("lower layer: {}", raw(&l.lower(0, "lower"))));
        assert!(!l.up("lower").exists(), "{opts:?}: a read copied the lower file up");
        m.finish();
        assert_eq!(
            t,
            [
                format!("new, 1st read: {first_read}"),
                "new, 2nd read: kept".to_string(),
                "lower, 1st read: kept".to_string(),
                "lower, 2nd read: kept".to_string(),
                format!("upper file itself: {first_read}"),
                "lower layer: kept".to_string(),
            ],
            "rootless mount with {opts:?}"
        );
    }
}
