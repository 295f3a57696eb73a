//! docs/semantics.md, "One mount per upper", through real mounts: a second mount of an upper or
//! a workdir is refused naming the holder and changes nothing; the layer tools that write refuse
//! a held upper and the readers say it moves; a kernel overlay mount on the upper is named in
//! the refusal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{KernelOverlay, Tree, bin, kill9, lower_arg, unmount_dir};
use crate::hard_links::{CHANGED, farm, job1, mount_at, read};

/// `unionfs ARGS`, run to completion.
pub(crate) fn unionfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin()).args(args).output().expect("run unionfs")
}

fn mount_args<'a>(
    lowers: &'a std::ffi::OsStr,
    upper: &'a Path,
    work: &'a Path,
    mnt: &'a Path,
) -> Vec<&'a std::ffi::OsStr> {
    vec![
        "mount".as_ref(),
        "--foreground".as_ref(),
        "--lower".as_ref(),
        lowers,
        "--upper".as_ref(),
        upper.as_os_str(),
        "--workdir".as_ref(),
        work.as_os_str(),
        mnt.as_os_str(),
    ]
}

/// Asserts `out` is a refusal (exit 2, one line) naming `path` and `pid`.
fn assert_refused(out: &Output, path: &Path, pid: Option<u32>) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&path.display().to_string()),
        "names {}: {err}",
        path.display()
    );
    if let Some(pid) = pid {
        assert!(err.contains(&pid.to_string()), "names pid {pid}: {err}");
    }
}

#[test]
fn a_second_mount_of_an_upper_or_workdir_is_refused_and_changes_nothing() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    let pid = m.pid();
    let lowers = lower_arg(&l.lowers);
    let (u2, w2, mnt2) = (
        l.dir.path().join("u2"),
        l.dir.path().join("w2"),
        l.dir.path().join("mnt2"),
    );
    for d in [&u2, &mnt2] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let before = (Tree::read_raw(&l.upper), Tree::read_raw(&l.work));
    // The same upper and workdir; the same upper with another workdir; another upper with the
    // same workdir.
    let cases: [(&PathBuf, &PathBuf, &PathBuf); 3] = [
        (&l.upper, &l.work, &l.upper),
        (&l.upper, &w2, &l.upper),
        (&u2, &l.work, &l.work),
    ];
    for (upper, work, named) in cases {
        let out = unionfs(&mount_args(&lowers, upper, work, &mnt2));
        assert_refused(&out, named, pid);
        assert!(!crate::common::is_mounted(&mnt2));
    }
    assert_eq!((Tree::read_raw(&l.upper), Tree::read_raw(&l.work)), before);
    assert!(!w2.exists() || Tree::read_raw(&w2).entries.is_empty());
    assert_eq!(read(&m, "g"), CHANGED, "the first mount still serves");
    // After the first daemon dies by SIGKILL, the kernel has dropped its locks.
    kill9(&m);
    let start = std::time::Instant::now();
    while crate::common::daemon_alive(&m) && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unmount_dir(&l.mnt);
    let m2 = mount_at(&l, &l.upper, &l.work, &mnt2);
    assert_eq!(read(&m2, "f"), CHANGED);
    assert_eq!(read(&m2, "g"), CHANGED);
    assert_eq!(m2.unmount(), Some(0));
    drop(m);
}

#[test]
fn layer_tools_refuse_to_write_into_a_held_upper_and_readers_say_it_moves() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    let pid = m.pid();
    let lowers = lower_arg(&l.lowers);
    let stack: [&std::ffi::OsStr; 6] = [
        "--lower".as_ref(),
        &lowers,
        "--upper".as_ref(),
        l.upper.as_os_str(),
        "--workdir".as_ref(),
        l.work.as_os_str(),
    ];
    let blob = l.dir.path().join("layer.tar");
    let mut commit: Vec<&std::ffi::OsStr> = vec!["commit".as_ref()];
    commit.extend(stack);
    commit.extend(["--output".as_ref(), blob.as_os_str()]);
    assert_refused(&unionfs(&commit), &l.upper, pid);
    assert!(!blob.exists());
    let mut repair: Vec<&std::ffi::OsStr> = vec!["check".as_ref()];
    repair.extend(stack);
    repair.push("--repair".as_ref());
    assert_refused(&unionfs(&repair), &l.upper, pid);
    let tar = l.dir.path().join("empty.tar");
    std::fs::write(&tar, [0u8; 1024]).expect("an empty tar");
    let import = unionfs(&["import".as_ref(), tar.as_os_str(), l.upper.as_os_str()]);
    assert_refused(&import, &l.upper, pid);
    let mut diff: Vec<&std::ffi::OsStr> = vec!["diff".as_ref()];
    diff.extend(stack);
    let out = unionfs(&diff);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("moving target") && err.contains(&format!("{}", pid.unwrap_or(0))),
        "{err}"
    );
    // `g` shows the copy through the index, though it is not in the upper yet.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "C /f\nC /g\n");
    assert_eq!(m.unmount(), Some(0));
    // Unmounted, the same commit works.
    let out = unionfs(&commit);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_kernel_overlay_on_the_upper_is_named_in_the_refusal() {
    if !crate::common::require_root("a kernel overlay mount") {
        return;
    }
    let l = farm();
    let kmnt = l.dir.path().join("kmnt");
    std::fs::create_dir(&kmnt).expect("mkdir");
    let kwork = l.dir.path().join("kwork");
    std::fs::create_dir(&kwork).expect("mkdir");
    let k = KernelOverlay::mount(&l.lowers, Some((&l.upper, &kwork)), &kmnt).expect("kernel overlay mount (root)");
    let lowers = lower_arg(&l.lowers);
    let out = unionfs(&mount_args(&lowers, &l.upper, &l.work, &l.mnt));
    assert_refused(&out, &l.upper, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("kernel overlay"));
    drop(k);
}
