//! The fuse-overlayfs command line, so Podman and Buildah can use unionfs as `mount_program`:
//! `unionfs [-f] [-d] -o lowerdir=a:b,upperdir=u,workdir=w[,...] MOUNTPOINT`.
//!
//! Also the parser of `-o` option strings for `unionfs mount -o ...` and of `a:b:c` layer lists.
//! Option strings are bytes (paths need not be UTF-8); items are separated by commas, a comma
//! inside double quotes (SELinux `context="..."`) or escaped as `\,` does not separate, and empty
//! items (Podman leaves a trailing comma) are skipped.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use fuser::MountOption;

use super::MountSpec;

/// fuse-overlayfs options we accept but do not implement (one warning each).
const IGNORED_FUSE_OVERLAYFS: &[&str] = &[
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "uidmapping",
    "gidmapping",
    "static_nlink",
    "xattr_permissions",
    "threaded",
    "plugins",
    "redirect_dir",
    "noxattrs",
];

/// Whether `args` (without the program name) are the fuse-overlayfs form rather than a
/// subcommand: the first argument is an option other than help/version, or there is no
/// subcommand and an `-o` comes later (mountpoint first).
pub fn is_compat(args: &[OsString]) -> bool {
    let Some(first) = args.first() else {
        return false;
    };
    let f = first.as_bytes();
    if matches!(f, b"-h" | b"--help" | b"-V" | b"--version") {
        return false;
    }
    if f.starts_with(b"-") {
        return true;
    }
    if matches!(f, b"mount" | b"umount" | b"unmount" | b"help") {
        return false;
    }
    args.iter().any(|a| a.as_bytes().starts_with(b"-o"))
}

/// Parses the fuse-overlayfs form. `-o` may be given several times (also as `-oOPTS`), and the
/// mountpoint may come before or after the options.
pub fn parse(args: &[OsString]) -> Result<MountSpec, String> {
    let mut spec = MountSpec::default();
    let mut it = args.iter();
    let mut only_positional = false;
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if only_positional || !b.starts_with(b"-") || b == b"-" {
            if spec.mountpoint.is_some() {
                return Err(format!("more than one mountpoint given ('{}')", a.to_string_lossy()));
            }
            spec.mountpoint = Some(PathBuf::from(a));
            continue;
        }
        match b {
            b"--" => only_positional = true,
            b"-f" => spec.foreground = true,
            // libfuse: -d is debug output and implies -f.
            b"-d" => {
                spec.debug = true;
                spec.foreground = true;
            }
            b"-s" => {} // libfuse single-threaded; we always need several threads.
            b"-o" => {
                let opts = it.next().ok_or("option -o needs a value")?;
                apply_options(&mut spec, opts)?;
            }
            _ if b.starts_with(b"-o") => apply_options(&mut spec, OsStr::from_bytes(&b[2..]))?,
            _ if b.starts_with(b"--") => {
                return Err(format!(
                    "unknown argument '{}' (for the unionfs form use `unionfs mount {} ...`)",
                    a.to_string_lossy(),
                    a.to_string_lossy()
                ));
            }
            _ => return Err(format!("unknown argument '{}'", a.to_string_lossy())),
        }
    }
    if spec.mountpoint.is_none() {
        return Err("no mountpoint given (usage: unionfs [-f] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT)".into());
    }
    Ok(spec)
}

/// Splits an option string into items (see the module documentation).
pub fn split_options(s: &OsStr) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut bytes = s.as_bytes().iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' if bytes.peek() == Some(&b',') => {
                cur.push(b',');
                bytes.next();
            }
            b'"' => {
                quoted = !quoted;
                cur.push(c);
            }
            b',' if !quoted => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.retain(|i| !i.is_empty());
    items
}

/// Splits a layer list `a:b:c` (top first). `\:` is a literal colon and `\\` a backslash; empty
/// items are skipped.
pub fn split_lowers(s: &OsStr) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = s.as_bytes().iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' if matches!(bytes.peek(), Some(b':' | b'\\')) => cur.push(bytes.next().unwrap_or(c)),
            b':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(OsString::from_vec(p)))
        .collect()
}

/// Applies every item of an option string to `spec`. Unknown options only add a warning.
pub fn apply_options(spec: &mut MountSpec, opts: &OsStr) -> Result<(), String> {
    for item in split_options(opts) {
        apply_option(spec, &item)?;
    }
    Ok(())
}

fn apply_option(spec: &mut MountSpec, item: &[u8]) -> Result<(), String> {
    let (key, value) = match item.iter().position(|&c| c == b'=') {
        Some(i) => (&item[..i], Some(&item[i + 1..])),
        None => (item, None),
    };
    let key = String::from_utf8_lossy(key).into_owned();
    let text = || value.map(|v| String::from_utf8_lossy(v).into_owned());
    let need = || value.ok_or_else(|| format!("option '{key}' needs a value"));
    let path = |v: &[u8]| PathBuf::from(OsStr::from_bytes(unquote(v)));
    let flag = |v: bool| match value {
        None => Ok(v),
        Some(_) => Err(format!("option '{key}' takes no value")),
    };
    match key.as_str() {
        "lowerdir" => spec.lowers = split_lowers(OsStr::from_bytes(unquote(need()?))),
        "upperdir" => spec.upper = Some(path(need()?)),
        "workdir" => spec.workdir = Some(path(need()?)),
        "volatile" => spec.volatile = flag(true)?,
        "fsync" => match need()? {
            b"0" => spec.volatile = true,
            b"1" => spec.volatile = false,
            _ => {
                return Err(format!(
                    "option 'fsync' must be 0 or 1, not '{}'",
                    text().unwrap_or_default()
                ));
            }
        },
        "timeout" => spec.ttl = Some(parse_ttl(&text().unwrap_or_default()).map_err(|e| format!("timeout: {e}"))?),
        "debug" => {
            spec.debug = flag(true)?;
            spec.foreground = true;
        }
        "whiteouts" => {
            spec.whiteouts = match need()? {
                b"overlay" => unionfs::WhiteoutStyle::Overlay,
                b"oci" => unionfs::WhiteoutStyle::Oci,
                _ => return Err("option 'whiteouts' must be 'overlay' or 'oci'".into()),
            }
        }
        "noacl" => spec.no_acl = flag(true)?,
        "readdirplus" => {
            spec.readdirplus_always = match need()? {
                b"always" => true,
                b"auto" => false,
                _ => return Err("option 'readdirplus' must be 'auto' or 'always'".into()),
            }
        }
        "acl" => spec.no_acl = !flag(true)?,
        "ro" => spec.read_only = flag(true)?,
        "rw" => spec.read_only = !flag(true)?,
        "allow_other" => spec.mount.allow_other = Some(flag(true)?),
        "allow_root" => spec.mount.allow_root = flag(true)?,
        // Always on: the kernel checks permissions.
        "default_permissions" => {}
        "suid" | "nosuid" => spec.mount.suid = Some(flag(key == "suid")?),
        "dev" | "nodev" => spec.mount.dev = Some(flag(key == "dev")?),
        "exec" | "noexec" => spec.mount.exec = Some(flag(key == "exec")?),
        // The kernel leaves access times of FUSE files to us (see `AtimePolicy`); `noatime`
        // also shows in the mount's options.
        "atime" | "relatime" | "strictatime" | "norelatime" => {
            flag(true)?;
            spec.atime.mode = match key.as_str() {
                "strictatime" | "norelatime" => unionfs::AtimeMode::Strict,
                _ => unionfs::AtimeMode::Relatime,
            };
            spec.mount.extra.retain(|o| *o != MountOption::NoAtime);
        }
        "noatime" => {
            flag(true)?;
            spec.atime.mode = unionfs::AtimeMode::NoAtime;
            spec.mount.extra_flag(MountOption::NoAtime, MountOption::Atime);
        }
        "nodiratime" | "diratime" => spec.atime.nodiratime = flag(key == "nodiratime")?,
        "sync" => spec.mount.extra_flag(MountOption::Sync, MountOption::Async),
        "async" => spec.mount.extra_flag(MountOption::Async, MountOption::Sync),
        "dirsync" => spec.mount.extra_flag(MountOption::DirSync, MountOption::DirSync),
        "fsname" => spec.mount.fsname = Some(text().ok_or("option 'fsname' needs a value")?),
        "subtype" => spec.mount.subtype = Some(text().ok_or("option 'subtype' needs a value")?),
        // SELinux labels: the kernel takes them only when SELinux is on; without it they mean nothing.
        "context" | "fscontext" | "defcontext" | "rootcontext" => {
            if selinux_enabled() {
                let v = String::from_utf8_lossy(item).into_owned();
                spec.mount.extra.push(MountOption::CUSTOM(v));
            }
        }
        // fuse3 always allows non-empty mountpoints.
        "nonempty" => {}
        k if IGNORED_FUSE_OVERLAYFS.contains(&k) => spec.warnings.push(format!(
            "ignoring fuse-overlayfs option '{}'",
            String::from_utf8_lossy(item)
        )),
        _ => spec
            .warnings
            .push(format!("ignoring unknown option '{}'", String::from_utf8_lossy(item))),
    }
    Ok(())
}

/// Strips one pair of surrounding double quotes.
fn unquote(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Parses a cache timeout in seconds (fractions allowed; 0 disables caching).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=1e10).contains(&secs) {
        return Err(format!("'{s}' is not a number of seconds between 0 and 1e10"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(|s| os(s)).collect()
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
    }

    #[test]
    fn detects_compat_form() {
        assert!(is_compat(&args(&["-o", "lowerdir=a", "m"])));
        assert!(is_compat(&args(&["-f", "-o", "lowerdir=a", "m"])));
        assert!(is_compat(&args(&["m", "-o", "lowerdir=a"])));
        assert!(is_compat(&args(&["-olowerdir=a", "m"])));
        assert!(!is_compat(&args(&["mount", "--lower", "a", "m"])));
        assert!(!is_compat(&args(&["mount", "-o", "ro", "m"])));
        assert!(!is_compat(&args(&["umount", "m"])));
        assert!(!is_compat(&args(&["--help"])));
        assert!(!is_compat(&args(&[])));
    }

    #[test]
    fn podman_style_invocation() {
        let s = parse(&args(&[
            "-o",
            "lowerdir=l/A:l/B,upperdir=/u,workdir=/w,volatile,",
            "-o",
            "nodev,squash_to_root,frobnicate=1",
            "/mnt",
        ]))
        .unwrap();
        assert_eq!(s.lowers, vec![PathBuf::from("l/A"), PathBuf::from("l/B")]);
        assert_eq!(s.upper, Some(PathBuf::from("/u")));
        assert_eq!(s.workdir, Some(PathBuf::from("/w")));
        assert_eq!(s.mountpoint, Some(PathBuf::from("/mnt")));
        assert!(s.volatile);
        assert!(!s.foreground);
        assert_eq!(s.mount.dev, Some(false));
        assert_eq!(s.warnings.len(), 2);
        assert!(s.warnings[0].contains("fuse-overlayfs option 'squash_to_root'"));
        assert!(s.warnings[1].contains("unknown option 'frobnicate=1'"));
    }

    #[test]
    fn mountpoint_first_and_flags() {
        let s = parse(&args(&["/mnt", "-f", "-olowerdir=a,fsync=0,ro,timeout=2.5"])).unwrap();
        assert_eq!(s.mountpoint, Some(PathBuf::from("/mnt")));
        assert!(s.foreground && s.volatile && s.read_only);
        assert_eq!(s.ttl, Some(Duration::from_millis(2500)));
        let s = parse(&args(&["-d", "-o", "lowerdir=a", "m"])).unwrap();
        assert!(s.debug && s.foreground);
    }

    #[test]
    fn bad_compat_arguments() {
        assert!(
            parse(&args(&["-o", "lowerdir=a"]))
                .unwrap_err()
                .contains("no mountpoint")
        );
        assert!(
            parse(&args(&["-o", "lowerdir=a", "m", "n"]))
                .unwrap_err()
                .contains("more than one")
        );
        assert!(parse(&args(&["-o"])).unwrap_err().contains("needs a value"));
        assert!(parse(&args(&["-x", "m"])).unwrap_err().contains("unknown argument"));
        assert!(
            parse(&args(&["-o", "upperdir", "m"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse(&args(&["-o", "fsync=2", "m"])).unwrap_err().contains("fsync"));
        assert!(
            parse(&args(&["-o", "noatime=1", "m"]))
                .unwrap_err()
                .contains("no value")
        );
    }

    #[test]
    fn atime_options() {
        use unionfs::AtimeMode::*;
        let atime = |o: &str| parse(&args(&["-o", o, "m"])).unwrap().atime;
        assert_eq!(atime("lowerdir=a").mode, Relatime);
        assert_eq!(atime("noatime").mode, NoAtime);
        assert_eq!(atime("strictatime").mode, Strict);
        assert_eq!(atime("noatime,relatime").mode, Relatime);
        assert_eq!(atime("strictatime,atime").mode, Relatime);
        let p = atime("strictatime,nodiratime");
        assert_eq!((p.mode, p.nodiratime), (Strict, true));
        assert!(!atime("nodiratime,diratime").nodiratime);
        let s = parse(&args(&["-o", "noatime", "m"])).unwrap();
        assert_eq!(s.mount.extra, vec![MountOption::NoAtime]);
        let s = parse(&args(&["-o", "noatime,relatime", "m"])).unwrap();
        assert!(s.mount.extra.is_empty());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_ttl("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_ttl("-1").is_err());
        assert!(parse_ttl("x").is_err());
        assert!(parse_ttl("inf").is_err());
    }
}
