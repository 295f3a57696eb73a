//! The fuse-overlayfs command line, so Podman and Buildah can use unionfs as `mount_program`:
//! `unionfs [-f] [-d] -o lowerdir=a:b,upperdir=u,workdir=w[,...] MOUNTPOINT`, and the form
//! mount.fuse3 runs for mount(8): `unionfs SOURCE MOUNTPOINT -o OPTIONS`. The options
//! themselves are the table's (`options.rs`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::CommandFactory;

use super::options::apply_options;
use super::spec::MountSpec;

/// Whether `args` (without the program name) are the fuse-overlayfs form rather than a
/// subcommand: the first argument is an option other than help/version, or it is not one of
/// our subcommands (nor `help`) and an `-o` comes later (mountpoint first).
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
    let cli = super::Cli::command();
    let subcommand = f == b"help"
        || cli.get_subcommands().any(|c| {
            std::iter::once(c.get_name())
                .chain(c.get_all_aliases())
                .any(|n| n.as_bytes() == f)
        });
    !subcommand && args.iter().any(|a| a.as_bytes().starts_with(b"-o"))
}

/// Whether `args` (the compat form) give a source before the mountpoint: the form mount.fuse3
/// runs for mount(8).
pub fn has_source(args: &[OsString]) -> bool {
    let mut n = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_bytes() {
            b"-o" => {
                it.next();
            }
            b if !b.starts_with(b"-") => n += 1,
            _ => {}
        }
    }
    n == 2
}

/// Parses the fuse-overlayfs form. `-o` may be given several times (also as `-oOPTS`), and the
/// mountpoint may come before or after the options. Two positional arguments are the form
/// mount(8) uses through mount.fuse3 (`unionfs SOURCE MOUNTPOINT -o OPTIONS`): the source is
/// any string, shown as the mount's source unless `fsname=` says otherwise.
pub fn parse(args: &[OsString]) -> Result<MountSpec, String> {
    let mut spec = MountSpec::new();
    // Podman reads the upper itself (to commit and diff containers) and knows nothing of
    // redirects: this form writes none unless asked (`redirect_dir=on`).
    spec.config.redirect_dir = unionfs::RedirectDir::Follow;
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
            if spec.fsname.is_none() && !source.is_empty() {
                spec.fsname = Some(source.to_string_lossy().into_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
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

    /// Every subcommand clap knows, and its aliases, is a subcommand even with an `-o` later:
    /// the list is clap's, not a copy.
    #[test]
    fn every_subcommand_is_not_the_compat_form() {
        let cli = super::super::Cli::command();
        let mut names = vec!["help".to_string()];
        for c in cli.get_subcommands() {
            names.push(c.get_name().to_string());
            names.extend(c.get_all_aliases().map(str::to_string));
        }
        assert!(names.iter().any(|n| n == "unmount") && names.iter().any(|n| n == "check"));
        for n in &names {
            assert!(!is_compat(&args(&[n, "-o", "x", "m"])), "{n}");
        }
        assert!(is_compat(&args(&["src", "m", "-o", "lowerdir=a"])));
    }

    #[test]
    fn podman_style_invocation() {
        let s = parse(&args(&[
            "-o",
            "lowerdir=l/A:l/B,upperdir=/u,workdir=/w,volatile,",
            "-o",
            "nodev,squash_to_root,static_nlink,uidmapping=:0:100000:65536,gidmapping=0:5:1",
            "/mnt",
        ]))
        .unwrap();
        let c = &s.config;
        assert_eq!(c.lowers, vec![PathBuf::from("l/A"), PathBuf::from("l/B")]);
        assert_eq!(c.upper, Some(PathBuf::from("/u")));
        assert_eq!(c.workdir, Some(PathBuf::from("/w")));
        assert_eq!(s.mountpoint, Some(PathBuf::from("/mnt")));
        assert!(c.volatile);
        assert!(!s.foreground);
        assert!(!s.session.dev);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("fuse-overlayfs option 'static_nlink'"));
        assert_eq!((c.idmap.squash_uid, c.idmap.squash_gid), (Some(0), Some(0)));
        assert_eq!(c.idmap.uids.len(), 1);
        assert_eq!((c.idmap.gids[0].host, c.idmap.gids[0].view), (0, 5));
        assert!(parse(&args(&["-o", "lowerdir=a,uidmapping=1:2", "m"])).is_err());
        // A made-up option is refused, naming it.
        let e = parse(&args(&["-o", "lowerdir=a,frobnicate=1", "m"])).unwrap_err();
        assert!(e.contains("unknown mount option 'frobnicate=1'"), "{e}");
    }

    #[test]
    fn mountpoint_first_and_flags() {
        let s = parse(&args(&["/mnt", "-f", "-olowerdir=a,fsync=0,ro,timeout=2.5"])).unwrap();
        assert_eq!(s.mountpoint, Some(PathBuf::from("/mnt")));
        assert!(s.foreground && s.config.volatile && s.read_only);
        assert_eq!(s.ttl, Some(std::time::Duration::from_millis(2500)));
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
        assert_eq!(s.fsname.as_deref(), Some("my-union"));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = parse(&args(&["src", "/mnt", "-o", "lowerdir=a,fsname=named"])).unwrap();
        assert_eq!(s.fsname.as_deref(), Some("named"));
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
}
