use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use fuser::MountOption;

use super::*;
use crate::cli::{Cli, Cmd};

fn spec(opts: &str) -> Result<MountSpec, String> {
    let mut s = MountSpec::new();
    apply_options(&mut s, OsStr::new(opts))?;
    Ok(s)
}

fn mount_args(argv: &[&str]) -> Result<MountSpec, String> {
    let cli = Cli::try_parse_from(["unionfs", "mount"].iter().chain(argv)).map_err(|e| e.to_string())?;
    match cli.cmd {
        Cmd::Mount(a) => a.into_spec(),
        _ => unreachable!("a mount command"),
    }
}

/// Every row's example parses, with what its class promises: a warning line naming the item
/// for the ignored classes, a refusal for the unsupported one, silence for the others.
#[test]
fn every_row_parses_its_example_as_its_class_says() {
    let selinux = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    for row in table().filter(|r| !r.example.is_empty()) {
        let r = spec(row.example);
        let warned = matches!(
            row.class,
            Class::FuseOverlayfsIgnored | Class::OverlayIgnored | Class::CannotApply
        ) || (row.names.contains(&"context=") && !selinux);
        match row.class {
            Class::Unsupported => {
                let e = r.err().unwrap_or_else(|| panic!("{} accepted", row.example));
                assert!(e.contains(row.example) && e.contains("not supported"), "{e}");
            }
            _ => {
                let s = r.unwrap_or_else(|e| panic!("{}: {e}", row.example));
                if warned {
                    assert_eq!(s.warnings.len(), 1, "{}: {:?}", row.example, s.warnings);
                    assert!(s.warnings[0].contains(row.example), "{:?}", s.warnings);
                } else {
                    assert!(s.warnings.is_empty(), "{}: {:?}", row.example, s.warnings);
                }
            }
        }
    }
}

/// Every name of every row is taken in its own form (with a value where it needs one) and
/// refused in the other; no name is in two rows.
#[test]
fn every_name_parses_and_belongs_to_one_row() {
    let mut seen = std::collections::BTreeSet::new();
    for row in table() {
        for &name in row.names {
            assert!(seen.insert(name), "{name} is in two rows");
            let item = match name.strip_suffix('=') {
                // The example's value where it is this name's, else one any number row takes.
                Some(key) => match row.example.split_once('=') {
                    Some((k, v)) if k == key => format!("{key}={v}"),
                    _ => format!("{key}=1"),
                },
                None => name.replace('*', "anything"),
            };
            if row.class == Class::Unsupported {
                assert!(spec(&item).is_err(), "{item}");
                continue;
            }
            spec(&item).unwrap_or_else(|e| panic!("{item}: {e}"));
            // The other form (a value where none is taken, none where one is needed) is
            // refused unless some row takes it.
            let known = |n: &str| table().any(|r| r.names.contains(&n));
            let (other, other_name) = match name.strip_suffix('=') {
                Some(key) => (key.to_string(), key.to_string()),
                None => (format!("{name}=1"), format!("{name}=")),
            };
            if !name.ends_with('*') && !known(&other_name) {
                assert!(spec(&other).is_err(), "{other} accepted");
            }
        }
    }
}

#[test]
fn unknown_options_are_refused_naming_them() {
    for bad in ["frobnicate", "frobnicate=1", "lowerdir=a,bogus", "nodevv", "x_systemd"] {
        let e = spec(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
        let name = bad.rsplit(',').next().unwrap_or(bad);
        assert!(e.contains(&format!("unknown mount option '{name}'")), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    let mut s = MountSpec::new();
    let e = apply_options(&mut s, OsStr::from_bytes(b"\xffbad")).unwrap_err();
    assert!(e.contains("unknown mount option"), "{e}");
    assert!(spec("nodev=1").unwrap_err().contains("takes no value"));
    assert!(spec("upperdir").unwrap_err().contains("needs a value"));
    assert!(spec("nosymfollow").unwrap_err().contains("fuser"));
}

/// Every long flag of `unionfs mount` is a row's, and clap's flags are exactly the table's.
#[test]
fn the_mount_flags_are_the_tables() {
    let cli = Cli::command();
    let mount = cli.find_subcommand("mount").expect("mount subcommand");
    let clap_flags: Vec<String> = mount
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    let table_flags: Vec<String> = table()
        .filter_map(|r| r.flag.as_ref())
        .map(|f| f.long.to_string())
        .collect();
    let mut a = clap_flags.clone();
    a.retain(|f| f != "--help");
    assert_eq!(a, table_flags);
    for f in [
        "--lower",
        "--upper",
        "--workdir",
        "--ttl",
        "--revalidate",
        "--no-passthrough",
    ] {
        assert!(clap_flags.iter().any(|c| c == f), "{f}");
    }
}

/// A flag and its `-o` name set the same thing: one row.
#[test]
fn flags_and_o_names_give_the_same_spec() {
    let flags = mount_args(&[
        "--lower",
        "/a:/b",
        "--upper",
        "/u",
        "--workdir",
        "/w",
        "--whiteouts",
        "oci",
        "--volatile",
        "--threads",
        "3",
        "--ttl",
        "7",
        "--no-passthrough",
        "--revalidate",
        "--index-cache",
        "99",
        "--readdirplus",
        "auto",
        "--no-writeback-cache",
        "--no-acl",
        "--log",
        "/l",
        "-d",
        "/m",
    ])
    .unwrap();
    let opts = mount_args(&[
        "-o",
        "lowerdir=/a:/b,upperdir=/u,workdir=/w,whiteouts=oci,volatile,threads=3,ttl=7",
        "-o",
        "nopassthrough,revalidate,index_cache=99,readdirplus=auto,nowriteback,noacl,log=/l",
        "-d",
        "/m",
    ])
    .unwrap();
    assert_eq!(format!("{flags:?}"), format!("{opts:?}"));
    assert!(!flags.foreground, "--debug alone stays in the background");
    assert!(spec("debug").unwrap().foreground, "-o debug is libfuse's: foreground");
    // Flags win over -o.
    let s = mount_args(&[
        "-o",
        "upperdir=/x,readdirplus=auto",
        "--upper",
        "/u",
        "--readdirplus",
        "always",
        "/m",
    ])
    .unwrap();
    assert_eq!(s.config.upper, Some(PathBuf::from("/u")));
    assert!(s.session.adapter.readdirplus_always);
    // Bad values are refused, naming the flag.
    let e = mount_args(&["--threads", "0", "--lower", "/a", "/m"]).unwrap_err();
    assert!(e.contains("--threads 0"), "{e}");
    assert!(
        mount_args(&["--whiteouts", "x", "/m"])
            .unwrap_err()
            .contains("'overlay' or 'oci'")
    );
    assert!(mount_args(&["-o", "frob", "/m"]).unwrap_err().contains("'frob'"));
}

/// The kernel's options end up in the session's mount options; the last of a pair wins.
#[test]
fn kernel_options_reach_the_session() {
    let s = spec("nodev,nosuid,noexec,sync,dirsync,lazytime").unwrap();
    assert!(!s.session.dev && !s.session.suid && !s.session.exec);
    assert_eq!(
        s.session.extra,
        vec![
            MountOption::Sync,
            MountOption::DirSync,
            MountOption::CUSTOM("lazytime".into())
        ]
    );
    let s = spec("sync,async,lazytime,nolazytime,dev,suid,exec").unwrap();
    assert!(s.session.extra.is_empty(), "{:?}", s.session.extra);
    assert!(s.session.dev && s.session.suid && s.session.exec);
    let s = spec("max_read=65536,noiversion,nomand").unwrap();
    assert_eq!(s.session.extra, vec![MountOption::CUSTOM("max_read=65536".into())]);
    assert!(spec("max_read=0").is_err());
}

#[test]
fn atime_options() {
    use unionfs::AtimeMode::*;
    let atime = |o: &str| spec(o).unwrap().config.atime;
    assert_eq!(atime("lowerdir=a").mode, Relatime);
    assert_eq!(atime("noatime").mode, NoAtime);
    assert_eq!(atime("strictatime").mode, Strict);
    assert_eq!(atime("noatime,relatime").mode, Relatime);
    assert_eq!(atime("strictatime,atime").mode, Relatime);
    assert_eq!(atime("strictatime,nostrictatime").mode, Relatime);
    let p = atime("strictatime,nodiratime");
    assert_eq!((p.mode, p.nodiratime), (Strict, true));
    assert!(!atime("nodiratime,diratime").nodiratime);
    assert_eq!(spec("noatime").unwrap().session.extra, vec![MountOption::NoAtime]);
    let s = spec("noatime,relatime").unwrap();
    assert!(s.session.extra.is_empty());
    assert!(s.warnings.is_empty());
}

/// The one conversion: `ro` reads the upper as the top layer, `--revalidate` shortens the
/// cache unless a TTL is given, `fsname=` names the mount.
#[test]
fn the_spec_converts_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (l, u, m) = (d("l"), d("u"), d("m"));
    let mut s = spec(&format!("lowerdir={l},upperdir={u},ro,revalidate,fsname=x")).unwrap();
    s.mountpoint = Some(PathBuf::from(&m));
    let p = s.prepare().unwrap();
    assert_eq!(p.config.lowers.len(), 2);
    assert_eq!(p.config.upper, None);
    assert_eq!(p.session.adapter.ttl, Duration::from_secs(1));
    assert_eq!(p.session.fsname, "x");
    s.ttl = Some(Duration::from_secs(9));
    assert_eq!(s.prepare().unwrap().session.adapter.ttl, Duration::from_secs(9));
    s.mountpoint = None;
    assert!(s.prepare().unwrap_err().contains("no mountpoint"));
}

#[test]
fn lowers_split_with_escapes() {
    assert_eq!(
        split_lowers(OsStr::new("a:b\\:c:d\\\\:e::")),
        vec![
            PathBuf::from("a"),
            PathBuf::from("b:c"),
            PathBuf::from("d\\"),
            PathBuf::from("e")
        ]
    );
    assert_eq!(split_lowers(OsStr::new("x\\y")), vec![PathBuf::from("x\\y")]);
}

#[test]
fn options_split_quotes_escapes_and_empties() {
    let items = split_options(OsStr::new("lowerdir=a,,upperdir=u\\,v,context=\"s0:c1,c2\","));
    let items: Vec<String> = items.iter().map(|i| String::from_utf8_lossy(i).into_owned()).collect();
    assert_eq!(items, vec!["lowerdir=a", "upperdir=u,v", "context=\"s0:c1,c2\""]);
    let s = spec("upperdir=\"/with,comma\"").unwrap();
    assert_eq!(s.config.upper, Some(PathBuf::from("/with,comma")));
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
    assert_eq!(parse_ttl("1.5").unwrap(), Duration::from_millis(1500));
    assert!(parse_ttl("-1").is_err());
    assert!(parse_ttl("x").is_err());
    assert!(parse_ttl("inf").is_err());
}
