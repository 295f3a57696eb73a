//! The layer tools on trees of any depth (issue 18, item 3): `diff`, `check`, `size` and
//! `layers` of an upper 100,000 directories deep, `commit` of it and `import` of the layer (and
//! of a deep tar the `tar` crate wrote). Every tool runs as a user might run it, with a 64-fd
//! limit and a 256 KiB stack (`common::deep::tool`): a walk that holds an fd per level or
//! recurses per level fails at once. Each gives what it gives for a shallow tree.

mod common;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::deep::*;

/// Where the upper rewrote a file (`g`): deep enough to be past where a recursion per level
/// overflows, shallow enough that `diff`'s lines (each a whole path) stay small.
const LEVEL_G: usize = 3_000;
/// Modification time of `f` and `g`.
const MTIME: i64 = 1_600_000_000;

/// A lower holding `top/d/…/d` (100,000 levels) with `g` at level [`LEVEL_G`] and `f` at the
/// bottom, and an upper holding the same tree as copy-up leaves it (same modes, `f` with the
/// same content and times), but `g` rewritten, plus a new file `new`.
struct Fixture {
    lower: PathBuf,
    upper: PathBuf,
    s: Scratch,
}

fn fixture() -> Fixture {
    let s = Scratch::new("4g");
    let (lower, upper) = (s.mkdir("lower"), s.mkdir("upper"));
    let start = Instant::now();
    for (root, g) in [(&lower, "old\n"), (&upper, "rewritten\n")] {
        make_chain(root, "top", DEPTH, |level, dir| {
            if level == LEVEL_G {
                put_at(dir, "g", g.as_bytes());
                set_mtime_at(dir, "g", MTIME);
            }
            if level == DEPTH {
                put_at(dir, "f", b"bottom\n");
                set_mtime_at(dir, "f", MTIME);
            }
        });
    }
    std::fs::write(upper.join("new"), b"new\n").expect("write new");
    eprintln!("two trees {DEPTH} levels deep made in {:?}", start.elapsed());
    Fixture { lower, upper, s }
}

/// Runs a tool (see [`tool`]), timing it; panics with its stderr unless it succeeds. Returns
/// its stdout and stderr.
fn run_tool(args: &[&OsStr]) -> (String, String) {
    let start = Instant::now();
    let out = tool(args);
    eprintln!("unionfs {}: {:?}", args[0].to_string_lossy(), start.elapsed());
    let err: String = String::from_utf8_lossy(&out.stderr).chars().take(2_000).collect();
    assert!(out.status.success(), "unionfs {:?}: {}: {err}", args[0], out.status);
    (String::from_utf8(out.stdout).expect("utf-8 output"), err)
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// Level `level` of the chain as the view names it: `/top/d/…/d`.
fn view_path(level: usize) -> String {
    let mut p = String::from("/top");
    for _ in 1..level {
        p.push_str("/d");
    }
    p
}

#[test]
fn diff_check_size_and_layers_of_a_deep_upper() {
    let x = fixture();
    let (l, u) = (os(&x.lower), os(&x.upper));
    let (out, _) = run_tool(&["diff".as_ref(), "--lower".as_ref(), l, "--upper".as_ref(), u]);
    // `g` changed, and so every directory above it; nothing below (`f` is as copy-up left it).
    let mut want = vec!["A /new".to_string()];
    want.extend((1..=LEVEL_G).map(|level| format!("C {}", view_path(level))));
    want.push(format!("C {}/g", view_path(LEVEL_G)));
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), want.len(), "diff lines");
    assert!(
        got.iter().zip(&want).all(|(g, w)| g == w),
        "diff differs from what it is for a shallow tree"
    );

    let (_, err) = run_tool(&["check".as_ref(), "--lower".as_ref(), l, "--upper".as_ref(), u]);
    assert!(err.contains("no problems"), "check: {err}");

    let (out, _) = run_tool(&[
        "layers".as_ref(),
        "--lower".as_ref(),
        l,
        "--upper".as_ref(),
        u,
        "--json".as_ref(),
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).expect("layers --json");
    assert_eq!(rows[0]["entries"], DEPTH + 3, "upper: the directories, f, g and new");
    assert_eq!(rows[1]["entries"], DEPTH + 2, "lower: the directories, f and g");

    let (out, _) = run_tool(&[
        "size".as_ref(),
        "--lower".as_ref(),
        l,
        "--upper".as_ref(),
        u,
        "--json".as_ref(),
    ]);
    let size: serde_json::Value = serde_json::from_str(&out).expect("size --json");
    let du = |p: &Path| -> u64 {
        let out = std::process::Command::new("du")
            .args(["-s", "--block-size=1"])
            .arg(p)
            .output()
            .expect("du");
        let s = String::from_utf8_lossy(&out.stdout);
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du's count")
    };
    assert_eq!(size["upper_bytes"], du(&x.upper), "size of the upper, as du counts it");
}

#[test]
fn commit_of_a_deep_upper_and_import_of_the_layer() {
    let x = fixture();
    let (l, u) = (os(&x.lower), os(&x.upper));
    let blob = x.s.path("layer.tar.zst");
    let commit = |lower: &OsStr, upper: &OsStr, out: &Path| -> String {
        let args = [
            "commit".as_ref(),
            "--lower".as_ref(),
            lower,
            "--upper".as_ref(),
            upper,
            "--output".as_ref(),
            out.as_os_str(),
            // The tar names every entry's whole path: it is the depth squared in bytes.
            "--compress".as_ref(),
            "zstd".as_ref(),
            "--timestamp".as_ref(),
            "1700000000".as_ref(),
        ];
        let (stdout, _) = run_tool(&args);
        stdout.lines().last().expect("the DiffID").to_string()
    };
    let diff_id = commit(l, u, &blob);
    assert!(diff_id.starts_with("sha256:"), "{diff_id}");

    let imported = x.s.path("imported");
    let (out, _) = run_tool(&["import".as_ref(), blob.as_os_str(), imported.as_os_str()]);
    assert!(
        out.contains(&format!("{} entries, 0 whiteouts, 0 opaque directories", DEPTH + 3)),
        "import: {out}"
    );
    let root = walk_down(&imported, "top", 0).expect("the layer");
    assert_eq!(names_at(root.as_fd()), ["new", "top"]);
    let bottom = check_chain(&imported, "top", DEPTH, |level| match level {
        LEVEL_G => vec!["g"],
        DEPTH => vec!["f"],
        _ => vec![],
    });
    assert_eq!(read_at(bottom.as_fd(), "f"), "bottom\n");
    let g = walk_down(&imported, "top", LEVEL_G).expect("level of g");
    assert_eq!(read_at(g.as_fd(), "g"), "rewritten\n");

    // The layer imported is the layer committed: committed again, it is the same tar.
    let again = commit(OsStr::new(""), imported.as_os_str(), &x.s.path("again.tar.zst"));
    assert_eq!(again, diff_id, "commit of the imported layer");
}

/// A deep tar as other tools write it (paths with `./`, directories with a trailing `/`, long
/// names as GNU records), 20,000 levels: far past PATH_MAX. And a name longer than NAME_MAX is
/// refused as the kernel refuses it, with nothing left behind.
#[test]
fn import_of_a_deep_tar_from_the_tar_crate() {
    const LEVELS: usize = 20_000;
    let s = Scratch::new("2g");
    let tar_path = s.path("deep.tar");
    let write_tar = |path: &Path, long_name: bool| {
        let mut b = tar::Builder::new(std::fs::File::create(path).expect("create the tar"));
        let mut p = String::from("./top/");
        for level in 1..=LEVELS {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o750);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_650_000_000);
            h.set_size(0);
            b.append_data(&mut h, &p, std::io::empty()).expect("a directory");
            if level < LEVELS {
                p.push_str("d/");
            }
        }
        let name = if long_name { "x".repeat(300) } else { "f".into() };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_650_000_000);
        h.set_size(7);
        b.append_data(&mut h, format!("{p}{name}"), &b"bottom\n"[..])
            .expect("a file");
        b.finish().expect("finish the tar");
    };
    write_tar(&tar_path, false);
    let imported = s.path("imported");
    let (out, _) = run_tool(&["import".as_ref(), tar_path.as_os_str(), imported.as_os_str()]);
    assert!(out.contains(&format!("{} entries", LEVELS + 1)), "import: {out}");
    let bottom = check_chain(&imported, "top", LEVELS, |level| match level {
        LEVELS => vec!["f"],
        _ => vec![],
    });
    assert_eq!(read_at(bottom.as_fd(), "f"), "bottom\n");
    let st = rustix::fs::fstat(&bottom).expect("stat of the bottom directory");
    assert_eq!(
        (st.st_mode & 0o7777, st.st_mtime),
        (0o750, 1_650_000_000),
        "its metadata"
    );

    let bad = s.path("too-long.tar");
    write_tar(&bad, true);
    let refused = s.path("refused");
    let out = tool(&["import".as_ref(), bad.as_os_str(), refused.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("File name too long") && err.contains("nothing was imported"),
        "{err}"
    );
    assert!(!refused.exists(), "what was made is removed");
}
