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
use unionfs::idmap;

/// fuse-overlayfs options we accept but do not implement (one warning each).
const IGNORED_FUSE_OVERLAYFS: &[&str] = &[
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
    if matches!(
        f,
        b"mount" | b"umount" | b"unmount" | b"help" | b"diff" | b"commit" | b"import" | b"size" | b"layers" | b"check"
    ) {
        return false;
    }
    args.iter().any(|a| a.as_bytes().starts_with(b"-o"))
}

/// Parses the fuse-overlayfs form. `-o` may be given several times (also as `-oOPTS`), and the
/// mountpoint may come before or after the options. Two positional arguments are the form
/// mount(8) uses through mount.fuse3 (`unionfs SOURCE MOUNTPOINT -o OPTIONS`): the source is
/// any string, shown as the mount's source unless `fsname=` says otherwise.
pub fn parse(args: &[OsString]) -> Result<MountSpec, String> {
    let mut spec = MountSpec::default();
    let mut it = args.iter();
    let mut only_positional = false;
    let mut positional = Vec::new();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if only_positional || !b.starts_with(b"-") || b == b"-" {
            positional.push(a.clone());
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
    match positional.len() {
        0 => {}
        1 => spec.mountpoint = positional.pop().map(PathBuf::from),
        2 => {
            spec.mountpoint = positional.pop().map(PathBuf::from);
            let source = positional.pop().unwrap_or_default();
            if spec.mount.fsname.is_none() && !source.is_empty() {
                spec.mount.fsname = Some(source.to_string_lossy().into_owned());
            }
        }
        _ => {
            return Err(format!(
                "too many arguments ('{}'): give [SOURCE] MOUNTPOINT",
                positional.last().map(|p| p.to_string_lossy()).unwrap_or_default()
            ));
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

/// One `key[=value]` item of an option string.
struct Opt<'a> {
    item: &'a [u8],
    key: String,
    value: Option<&'a [u8]>,
}

impl<'a> Opt<'a> {
    fn parse(item: &'a [u8]) -> Opt<'a> {
        let (key, value) = match item.iter().position(|&c| c == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        Opt {
            item,
            key: String::from_utf8_lossy(key).into_owned(),
            value,
        }
    }

    fn text(&self) -> String {
        self.value
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    fn need(&self) -> Result<&'a [u8], String> {
        self.value.ok_or_else(|| format!("option '{}' needs a value", self.key))
    }

    fn path(&self) -> Result<PathBuf, String> {
        Ok(PathBuf::from(OsStr::from_bytes(unquote(self.need()?))))
    }

    /// A flag option: `on` when given without a value.
    fn flag(&self, on: bool) -> Result<bool, String> {
        match self.value {
            None => Ok(on),
            Some(_) => Err(format!("option '{}' takes no value", self.key)),
        }
    }
}

fn apply_option(spec: &mut MountSpec, item: &[u8]) -> Result<(), String> {
    let o = Opt::parse(item);
    if union_option(spec, &o)? || mount_option(spec, &o)? || atime_option(spec, &o)? {
        return Ok(());
    }
    let k = o.key.as_str();
    let for_mount8 = matches!(
        k,
        "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev" | "nofail" | "comment"
    ) || k.starts_with("x-");
    if for_mount8 {
        // For mount(8) and fstab, not for the filesystem.
    } else if IGNORED_FUSE_OVERLAYFS.contains(&k) {
        spec.warnings.push(format!(
            "ignoring fuse-overlayfs option '{}'",
            String::from_utf8_lossy(item)
        ));
    } else {
        spec.warnings
            .push(format!("ignoring unknown option '{}'", String::from_utf8_lossy(item)));
    }
    Ok(())
}

/// Options of the union itself (layers and how it behaves); whether `o` was one.
fn union_option(spec: &mut MountSpec, o: &Opt<'_>) -> Result<bool, String> {
    match o.key.as_str() {
        "lowerdir" => spec.lowers = split_lowers(OsStr::from_bytes(unquote(o.need()?))),
        "upperdir" => spec.upper = Some(o.path()?),
        "workdir" => spec.workdir = Some(o.path()?),
        "volatile" => spec.volatile = o.flag(true)?,
        "fsync" => {
            spec.volatile = match o.need()? {
                b"0" => true,
                b"1" => false,
                _ => return Err(format!("option 'fsync' must be 0 or 1, not '{}'", o.text())),
            }
        }
        "timeout" => spec.ttl = Some(parse_ttl(&o.text()).map_err(|e| format!("timeout: {e}"))?),
        "debug" => {
            spec.debug = o.flag(true)?;
            spec.foreground = true;
        }
        "whiteouts" => {
            spec.whiteouts = match o.need()? {
                b"overlay" => unionfs::WhiteoutStyle::Overlay,
                b"oci" => unionfs::WhiteoutStyle::Oci,
                _ => return Err("option 'whiteouts' must be 'overlay' or 'oci'".into()),
            }
        }
        "uidmapping" => spec.idmap.uids = idmap::parse_ranges(&o.text()).map_err(|e| format!("uidmapping: {e}"))?,
        "gidmapping" => spec.idmap.gids = idmap::parse_ranges(&o.text()).map_err(|e| format!("gidmapping: {e}"))?,
        "squash_to_root" => {
            o.flag(true)?;
            spec.idmap.squash_uid.get_or_insert(0);
            spec.idmap.squash_gid.get_or_insert(0);
        }
        // Stronger than squash_to_root, in whatever order they come.
        "squash_to_uid" => spec.idmap.squash_uid = Some(parse_id(o)?),
        "squash_to_gid" => spec.idmap.squash_gid = Some(parse_id(o)?),
        "noacl" => spec.no_acl = o.flag(true)?,
        "acl" => spec.no_acl = !o.flag(true)?,
        "writeback" => spec.no_writeback_cache = !o.flag(true)?,
        "nowriteback" | "no_writeback" => spec.no_writeback_cache = o.flag(true)?,
        "readdirplus" => {
            spec.readdirplus_auto = match o.need()? {
                b"always" => false,
                b"auto" => true,
                _ => return Err("option 'readdirplus' must be 'auto' or 'always'".into()),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Options of the mount as the kernel sees it; whether `o` was one.
fn mount_option(spec: &mut MountSpec, o: &Opt<'_>) -> Result<bool, String> {
    let key = o.key.as_str();
    match key {
        "ro" => spec.read_only = o.flag(true)?,
        "rw" => spec.read_only = !o.flag(true)?,
        "allow_other" => spec.mount.allow_other = Some(o.flag(true)?),
        "allow_root" => spec.mount.allow_root = o.flag(true)?,
        // Always on: the kernel checks permissions. fuse3 always allows non-empty mountpoints.
        "default_permissions" | "nonempty" => {}
        "suid" | "nosuid" => spec.mount.suid = Some(o.flag(key == "suid")?),
        "dev" | "nodev" => spec.mount.dev = Some(o.flag(key == "dev")?),
        "exec" | "noexec" => spec.mount.exec = Some(o.flag(key == "exec")?),
        "sync" => spec.mount.extra_flag(MountOption::Sync, MountOption::Async),
        "async" => spec.mount.extra_flag(MountOption::Async, MountOption::Sync),
        "dirsync" => spec.mount.extra_flag(MountOption::DirSync, MountOption::DirSync),
        "fsname" => spec.mount.fsname = Some(o.value.map(|_| o.text()).ok_or("option 'fsname' needs a value")?),
        "subtype" => spec.mount.subtype = Some(o.value.map(|_| o.text()).ok_or("option 'subtype' needs a value")?),
        // SELinux labels: the kernel takes them only when SELinux is on; without it they mean nothing.
        "context" | "fscontext" | "defcontext" | "rootcontext" => {
            if selinux_enabled() {
                let v = String::from_utf8_lossy(o.item).into_owned();
                spec.mount.extra.push(MountOption::CUSTOM(v));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The access-time options (see `AtimePolicy`: the kernel leaves access times of FUSE files to
/// us); whether `o` was one. `noatime` also shows in the mount's options.
fn atime_option(spec: &mut MountSpec, o: &Opt<'_>) -> Result<bool, String> {
    let key = o.key.as_str();
    match key {
        "atime" | "relatime" | "strictatime" | "norelatime" => {
            o.flag(true)?;
            spec.atime.mode = match key {
                "strictatime" | "norelatime" => unionfs::AtimeMode::Strict,
                _ => unionfs::AtimeMode::Relatime,
            };
            spec.mount.extra.retain(|x| *x != MountOption::NoAtime);
        }
        "noatime" => {
            o.flag(true)?;
            spec.atime.mode = unionfs::AtimeMode::NoAtime;
            spec.mount.extra_flag(MountOption::NoAtime, MountOption::Atime);
        }
        "nodiratime" | "diratime" => spec.atime.nodiratime = o.flag(key == "nodiratime")?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_id(o: &Opt<'_>) -> Result<u32, String> {
    o.text()
        .parse()
        .map_err(|_| format!("option '{}' needs a numeric id, not '{}'", o.key, o.text()))
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
            "nodev,squash_to_root,frobnicate=1,static_nlink,uidmapping=:0:100000:65536,gidmapping=0:5:1",
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
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("unknown option 'frobnicate=1'"));
        assert!(s.warnings[1].contains("fuse-overlayfs option 'static_nlink'"));
        assert_eq!((s.idmap.squash_uid, s.idmap.squash_gid), (Some(0), Some(0)));
        assert_eq!(s.idmap.uids.len(), 1);
        assert_eq!((s.idmap.gids[0].host, s.idmap.gids[0].view), (0, 5));
        assert!(parse(&args(&["-o", "lowerdir=a,uidmapping=1:2", "m"])).is_err());
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
    fn mount_helper_form_source_first() {
        let s = parse(&args(&[
            "my-union",
            "/mnt",
            "-o",
            "lowerdir=a,noauto,x-systemd.after=b,defaults",
        ]))
        .unwrap();
        assert_eq!(s.mountpoint, Some(PathBuf::from("/mnt")));
        assert_eq!(s.mount.fsname.as_deref(), Some("my-union"));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = parse(&args(&["src", "/mnt", "-o", "lowerdir=a,fsname=named"])).unwrap();
        assert_eq!(s.mount.fsname.as_deref(), Some("named"));
    }

    #[test]
    fn bad_compat_arguments() {
        assert!(
            parse(&args(&["-o", "lowerdir=a"]))
                .unwrap_err()
                .contains("no mountpoint")
        );
        assert!(
            parse(&args(&["-o", "lowerdir=a", "s", "m", "n"]))
                .unwrap_err()
                .contains("too many arguments")
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
        assert!(s.warnings.is_empty());
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
