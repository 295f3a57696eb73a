//! The one table of mount options: every `-o` name (in `unionfs mount -o`, the fuse-overlayfs
//! form and the mount.fuse3 form) and every long flag of `unionfs mount`, each row saying what
//! it sets in the [`MountSpec`] (the union's `MountConfig`, the FUSE session's options, or the
//! daemon's own switches) and which kind of option it is. The README's "Mount options" is this
//! table for users; `options/tests.rs` checks that every row parses.
//!
//! Option strings are bytes (paths need not be UTF-8); items are separated by commas, a comma
//! inside double quotes (SELinux `context="..."`) or escaped as `\,` does not separate, and empty
//! items (Podman leaves a trailing comma) are skipped. An item no row names is refused, so a
//! typo never mounts something other than what was asked for.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use fuser::MountOption;
use unionfs::{AtimeMode, WhiteoutStyle, idmap};

use super::spec::MountSpec;

/// What kind of option a row is; it decides what happens beyond the row's own action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// unionfs's own.
    Ours,
    /// fuse-overlayfs's, with fuse-overlayfs's meaning (Podman's `mount_program` passes them).
    FuseOverlayfs,
    /// fuse-overlayfs's, for something we do not have or always do: one warning line.
    FuseOverlayfsIgnored,
    /// Kernel overlayfs's tuning of its own on-disk tricks: one warning line (containers'
    /// storage.conf `mountopt` may carry them).
    OverlayIgnored,
    /// A FUSE or generic VFS mount option the kernel's FUSE mount honours: handed to the
    /// kernel's mount (the access-time ones we implement, as the kernel leaves them to us).
    Kernel,
    /// Means nothing for a FUSE mount of directories: one warning line.
    CannotApply,
    /// The kernel's FUSE honours it but we cannot set it (fuser 0.18 has no way to pass the
    /// flag): refused rather than mounted without it.
    Unsupported,
    /// mount(8)'s own (fstab, systemd units), which reach helpers: accepted silently.
    Mount8,
}

/// A long flag of `unionfs mount` that means the same as a row's first `-o` name.
pub(crate) struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    /// Set when the flag takes a value (then it means the row's first `NAME=`).
    pub value_name: Option<&'static str>,
    pub help: &'static str,
}

/// What a row does with an item (already matched by name, value presence checked).
type Apply = fn(&mut MountSpec, &Item<'_>) -> Result<(), String>;

/// One option. `names`: `NAME` takes no value, `NAME=` needs one, `NAME*` matches every name
/// starting with NAME, with or without a value.
pub(crate) struct Row {
    pub names: &'static [&'static str],
    pub flag: Option<Flag>,
    pub class: Class,
    /// An item this row accepts (the table's tests parse each).
    #[cfg_attr(not(test), allow(dead_code))]
    pub example: &'static str,
    /// Why the row is in its class; for the warned and refused classes, the line users see.
    pub why: &'static str,
    pub apply: Apply,
}

/// One `key[=value]` item, from an option string or a long flag.
pub(crate) struct Item<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    /// The long flag it came from (its value is never quoted then).
    pub flag: Option<&'static str>,
}

impl Item<'_> {
    fn bytes(&self) -> &[u8] {
        let v = self.value.unwrap_or_default();
        if self.flag.is_some() { v } else { unquote(v) }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.bytes()))
    }

    /// How users wrote it, for messages.
    pub fn shown(&self) -> String {
        match (self.flag, self.value) {
            (Some(f), Some(_)) => format!("{f} {}", self.text()),
            (Some(f), None) => f.to_string(),
            (None, Some(v)) => format!("{}={}", self.key, String::from_utf8_lossy(v)),
            (None, None) => self.key.to_string(),
        }
    }
}

const fn flag(long: &'static str, value_name: Option<&'static str>, help: &'static str) -> Option<Flag> {
    Some(Flag {
        long,
        short: None,
        value_name,
        help,
    })
}

fn nothing(_: &mut MountSpec, _: &Item<'_>) -> Result<(), String> {
    Ok(())
}

/// fuse-overlayfs's `0`/`1` switches.
fn switch(i: &Item<'_>) -> Result<bool, String> {
    match i.bytes() {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err("must be 0 or 1".into()),
    }
}

fn number<T: std::str::FromStr>(i: &Item<'_>) -> Result<T, String> {
    i.text()
        .trim()
        .parse()
        .map_err(|_| format!("'{}' is not a number", i.text()))
}

fn in_range(i: &Item<'_>, lo: u64, hi: u64) -> Result<u64, String> {
    let n: u64 = number(i)?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between {lo} and {hi}"))
    }
}

/// The access-time rows: the kernel leaves access times of FUSE files to us (`AtimePolicy`);
/// `noatime` also shows in the mount's options, as on any mount.
fn atime(s: &mut MountSpec, i: &Item<'_>) -> Result<(), String> {
    match i.key {
        "noatime" => {
            s.config.atime.mode = AtimeMode::NoAtime;
            s.extra(Some(MountOption::NoAtime), &[MountOption::Atime]);
        }
        "nodiratime" | "diratime" => s.config.atime.nodiratime = i.key == "nodiratime",
        k => {
            s.config.atime.mode = match k {
                "strictatime" | "norelatime" => AtimeMode::Strict,
                _ => AtimeMode::Relatime,
            };
            s.extra(None, &[MountOption::NoAtime]);
        }
    }
    Ok(())
}

/// SELinux labels: handed to the kernel where SELinux is on (the kernel refuses them
/// otherwise, and mount(8) drops them then: they mean nothing without SELinux).
fn selinux_label(s: &mut MountSpec, i: &Item<'_>) -> Result<(), String> {
    if std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        s.extra(Some(MountOption::CUSTOM(i.shown())), &[]);
    } else {
        s.warnings
            .push(format!("ignoring option '{}': SELinux is not enabled", i.shown()));
    }
    Ok(())
}

/// Every option, in the order the README lists them.
pub(crate) static TABLE: &[Row] = &[
    // ---- The layers and how the union behaves ----
    Row {
        names: &["lowerdir="],
        flag: flag(
            "--lower",
            Some("DIR:DIR:..."),
            "Read-only layers, top first, separated by ':' (`\\:` is a literal colon).",
        ),
        class: Class::FuseOverlayfs,
        example: "lowerdir=/a:/b",
        why: "the layers, as in kernel overlayfs and fuse-overlayfs",
        apply: |s, i| {
            s.config.lowers = split_lowers(OsStr::from_bytes(i.bytes()));
            Ok(())
        },
    },
    Row {
        names: &["upperdir="],
        flag: flag(
            "--upper",
            Some("DIR"),
            "The writable layer; without it the union is read-only.",
        ),
        class: Class::FuseOverlayfs,
        example: "upperdir=/u",
        why: "as in kernel overlayfs and fuse-overlayfs",
        apply: |s, i| {
            s.config.upper = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["workdir="],
        flag: flag(
            "--workdir",
            Some("DIR"),
            "Scratch directory on the upper's filesystem [default: .unionfs-work.NAME beside the upper].",
        ),
        class: Class::FuseOverlayfs,
        example: "workdir=/w",
        why: "as in kernel overlayfs and fuse-overlayfs",
        apply: |s, i| {
            s.config.workdir = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["whiteouts="],
        flag: flag(
            "--whiteouts",
            Some("overlay|oci"),
            "How whiteouts and opaque directories are written in the upper: `overlay` (character \
             device 0/0 and `trusted.overlay.opaque`, as kernel overlayfs) or `oci` (`.wh.NAME` \
             and `.wh..wh..opq` files, the OCI layer format) [default: overlay].",
        ),
        class: Class::Ours,
        example: "whiteouts=oci",
        why: "the upper's format is ours to choose",
        apply: |s, i| {
            s.config.whiteouts = match i.bytes() {
                b"overlay" => WhiteoutStyle::Overlay,
                b"oci" => WhiteoutStyle::Oci,
                _ => return Err("must be 'overlay' or 'oci'".into()),
            };
            Ok(())
        },
    },
    Row {
        names: &["volatile"],
        flag: flag(
            "--volatile",
            None,
            "Skip fsync of copied-up data (faster, not crash-safe).",
        ),
        class: Class::FuseOverlayfs,
        example: "volatile",
        why: "kernel overlayfs's and fuse-overlayfs's `volatile`",
        apply: |s, _| {
            s.config.volatile = true;
            Ok(())
        },
    },
    Row {
        names: &["fsync="],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "fsync=0",
        why: "fuse-overlayfs's: fsync=0 is volatile",
        apply: |s, i| {
            s.config.volatile = !switch(i)?;
            Ok(())
        },
    },
    Row {
        names: &["revalidate"],
        flag: flag(
            "--revalidate",
            None,
            "The lower layers may change while mounted: notice entries added to, removed from or \
             changed in lower directories, at the cost of short kernel cache times (--ttl defaults \
             to 1 s) and one stat per lower directory per lookup.",
        ),
        class: Class::Ours,
        example: "revalidate",
        why: "kernel overlayfs has no such mode (its lowers must not change)",
        apply: |s, _| {
            s.config.revalidate = true;
            Ok(())
        },
    },
    Row {
        names: &["timeout=", "ttl="],
        flag: flag(
            "--ttl",
            Some("SECONDS"),
            "How long the kernel may cache names and attributes, in seconds [default: 86400].",
        ),
        class: Class::FuseOverlayfs,
        example: "timeout=2.5",
        why: "fuse-overlayfs's `timeout=`",
        apply: |s, i| {
            s.ttl = Some(parse_ttl(&i.text())?);
            Ok(())
        },
    },
    Row {
        names: &["index_cache="],
        flag: flag(
            "--index-cache",
            Some("NAMES"),
            "How many names of directory listings the daemon keeps in memory; beyond, the least \
             recently used directories are read from the layers again when needed [default: \
             250000, about 25 MiB].",
        ),
        class: Class::Ours,
        example: "index_cache=1000",
        why: "a bound on the daemon's memory",
        apply: |s, i| {
            s.config.index_cache = number(i)?;
            Ok(())
        },
    },
    Row {
        names: &["noacl", "acl"],
        flag: flag(
            "--no-acl",
            None,
            "Do not enforce POSIX ACLs (they are stored and copied up, but only modes are checked).",
        ),
        class: Class::FuseOverlayfs,
        example: "noacl",
        why: "fuse-overlayfs's `noacl`; `acl` is the default",
        apply: |s, i| {
            s.config.acl = i.key == "acl";
            Ok(())
        },
    },
    Row {
        names: &["uidmapping="],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "uidmapping=0:100000:65536",
        why: "fuse-overlayfs's owner mapping (Podman's --uidmap)",
        apply: |s, i| {
            s.config.idmap.uids = idmap::parse_ranges(&i.text())?;
            Ok(())
        },
    },
    Row {
        names: &["gidmapping="],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "gidmapping=0:100000:65536",
        why: "fuse-overlayfs's owner mapping (Podman's --gidmap)",
        apply: |s, i| {
            s.config.idmap.gids = idmap::parse_ranges(&i.text())?;
            Ok(())
        },
    },
    Row {
        names: &["squash_to_root"],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "squash_to_root",
        why: "fuse-overlayfs's: every owner shown as root",
        // squash_to_uid=/gid= are stronger, in whatever order they come.
        apply: |s, _| {
            s.config.idmap.squash_uid.get_or_insert(0);
            s.config.idmap.squash_gid.get_or_insert(0);
            Ok(())
        },
    },
    Row {
        names: &["squash_to_uid="],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "squash_to_uid=1000",
        why: "fuse-overlayfs's: every owner shown as this uid",
        apply: |s, i| {
            s.config.idmap.squash_uid = Some(number(i)?);
            Ok(())
        },
    },
    Row {
        names: &["squash_to_gid="],
        flag: None,
        class: Class::FuseOverlayfs,
        example: "squash_to_gid=1000",
        why: "fuse-overlayfs's: every group shown as this gid",
        apply: |s, i| {
            s.config.idmap.squash_gid = Some(number(i)?);
            Ok(())
        },
    },
    // ---- How the daemon serves ----
    Row {
        names: &[],
        flag: Some(Flag {
            long: "--foreground",
            short: Some('f'),
            value_name: None,
            help: "Stay attached and log to stderr (default: return once mounted, serve in the background).",
        }),
        class: Class::Ours,
        example: "",
        why: "libfuse's -f, which the fuse-overlayfs form takes as such",
        apply: |s, _| {
            s.foreground = true;
            Ok(())
        },
    },
    Row {
        names: &["debug"],
        flag: Some(Flag {
            long: "--debug",
            short: Some('d'),
            value_name: None,
            help: "Log at debug level (UNIONFS_LOG or RUST_LOG override the level).",
        }),
        class: Class::FuseOverlayfs,
        example: "debug",
        why: "libfuse's `-o debug` (and -d), which also stay in the foreground; `--debug` does not",
        apply: |s, i| {
            s.debug = true;
            s.foreground |= i.flag.is_none();
            Ok(())
        },
    },
    Row {
        names: &["log="],
        flag: flag(
            "--log",
            Some("FILE"),
            "Log to FILE instead of stderr (in the background: instead of nowhere).",
        ),
        class: Class::Ours,
        example: "log=/tmp/unionfs.log",
        why: "where a background daemon's messages go (fstab lines have no other way to say it)",
        apply: |s, i| {
            s.log = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["threads="],
        flag: flag(
            "--threads",
            Some("N"),
            "Worker threads (at least 2) [default: CPUs, at most 16].",
        ),
        class: Class::Ours,
        example: "threads=4",
        why: "requests are served by a fixed pool",
        apply: |s, i| {
            s.session.threads = in_range(i, 1, 1024)? as usize;
            Ok(())
        },
    },
    Row {
        names: &["nopassthrough", "passthrough"],
        flag: flag(
            "--no-passthrough",
            None,
            "Serve all file I/O in the daemon, never through FUSE passthrough (which the kernel \
             otherwise does for upper files when we run with CAP_SYS_ADMIN).",
        ),
        class: Class::Ours,
        example: "nopassthrough",
        why: "FUSE passthrough is on where the kernel and our privileges allow it",
        apply: |s, i| {
            s.session.adapter.passthrough = i.key == "passthrough";
            Ok(())
        },
    },
    Row {
        names: &["nowriteback", "no_writeback", "writeback", "writeback="],
        flag: flag(
            "--no-writeback-cache",
            None,
            "Without passthrough (rootless mounts, --no-passthrough), do not let the kernel cache \
             written pages (every write then goes to the daemon at once).",
        ),
        class: Class::FuseOverlayfs,
        example: "writeback=0",
        why: "fuse-overlayfs's `writeback=0|1`",
        apply: |s, i| {
            s.session.adapter.writeback_cache = match i.key {
                "writeback" if i.value.is_some() => switch(i)?,
                k => k == "writeback",
            };
            Ok(())
        },
    },
    Row {
        names: &["readdirplus="],
        flag: flag(
            "--readdirplus",
            Some("always|auto"),
            "When listings carry file attributes: `always` sends them with every chunk (walks that \
             stat every entry, find, du, ls -l, tar, rsync, cost no round trip per entry); `auto` \
             lets the kernel ask for them with a listing's first chunk only (cheaper cold listings \
             that stat nothing, such as `find -name`) [default: always].",
        ),
        class: Class::Ours,
        example: "readdirplus=auto",
        why: "a trade-off between cold walks with and without stat",
        apply: |s, i| {
            s.session.adapter.readdirplus_always = match i.bytes() {
                b"always" => true,
                b"auto" => false,
                _ => return Err("must be 'auto' or 'always'".into()),
            };
            Ok(())
        },
    },
    // ---- fuse-overlayfs's options we do not implement ----
    Row {
        names: &["static_nlink"],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "static_nlink",
        why: "directories' link counts are always the real ones",
        apply: nothing,
    },
    Row {
        names: &["xattr_permissions="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "xattr_permissions=2",
        why: "xattrs are stored as themselves; permissions are the real ones",
        apply: nothing,
    },
    Row {
        names: &["threaded", "threaded="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "threaded=1",
        why: "we always serve with several threads (--threads)",
        apply: nothing,
    },
    Row {
        names: &["plugins="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "plugins=/p.so",
        why: "no plugins: layers are directories",
        apply: nothing,
    },
    Row {
        names: &["noxattrs", "noxattrs="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "noxattrs=1",
        why: "xattrs are always served",
        apply: nothing,
    },
    Row {
        names: &["fast_ino="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "fast_ino=1",
        why: "inode numbers are always the lower objects' own, without a scan",
        apply: nothing,
    },
    Row {
        names: &["redirect_dir="],
        flag: None,
        class: Class::FuseOverlayfsIgnored,
        example: "redirect_dir=off",
        why: "renamed directories are copied, never redirected",
        apply: nothing,
    },
    // ---- Kernel overlayfs's own tuning ----
    Row {
        names: &["metacopy=", "index=", "xino=", "nfs_export=", "uuid=", "verity="],
        flag: None,
        class: Class::OverlayIgnored,
        example: "metacopy=on",
        why: "kernel overlayfs's on-disk features: we copy data up, keep hard links and give \
              lower inode numbers without them",
        apply: nothing,
    },
    Row {
        names: &["userxattr"],
        flag: None,
        class: Class::OverlayIgnored,
        example: "userxattr",
        why: "we read trusted.overlay.* and user.overlay.* markers alike, and write user.* ones \
              when unprivileged",
        apply: nothing,
    },
    Row {
        names: &["default_permissions"],
        flag: None,
        class: Class::Kernel,
        example: "default_permissions",
        why: "always on: the kernel checks permissions (FUSE's and overlayfs's option)",
        apply: nothing,
    },
    // ---- FUSE and generic VFS mount options ----
    Row {
        names: &["ro", "rw"],
        flag: None,
        class: Class::Kernel,
        example: "ro",
        why: "`ro` makes the whole union read-only, upper included, and the mount MS_RDONLY",
        apply: |s, i| {
            s.read_only = i.key == "ro";
            Ok(())
        },
    },
    Row {
        names: &["nosuid", "suid"],
        flag: None,
        class: Class::Kernel,
        example: "nosuid",
        why: "MS_NOSUID, as on any mount (root's default is suid, as a kernel overlay mount)",
        apply: |s, i| {
            s.session.suid = i.key == "suid";
            Ok(())
        },
    },
    Row {
        names: &["nodev", "dev"],
        flag: None,
        class: Class::Kernel,
        example: "nodev",
        why: "MS_NODEV, as on any mount (root's default is dev, as a kernel overlay mount)",
        apply: |s, i| {
            s.session.dev = i.key == "dev";
            Ok(())
        },
    },
    Row {
        names: &["noexec", "exec"],
        flag: None,
        class: Class::Kernel,
        example: "noexec",
        why: "MS_NOEXEC, as on any mount",
        apply: |s, i| {
            s.session.exec = i.key == "exec";
            Ok(())
        },
    },
    Row {
        names: &["sync", "async"],
        flag: None,
        class: Class::Kernel,
        example: "sync",
        why: "MS_SYNCHRONOUS: the kernel's FUSE then writes through and waits for each write",
        apply: |s, i| {
            match i.key {
                "sync" => s.extra(Some(MountOption::Sync), &[MountOption::Async]),
                _ => s.extra(None, &[MountOption::Sync]),
            }
            Ok(())
        },
    },
    Row {
        names: &["dirsync"],
        flag: None,
        class: Class::Kernel,
        example: "dirsync",
        why: "MS_DIRSYNC, a flag of the superblock the kernel's FUSE keeps",
        apply: |s, _| {
            s.extra(Some(MountOption::DirSync), &[]);
            Ok(())
        },
    },
    Row {
        names: &["lazytime", "nolazytime"],
        flag: None,
        class: Class::Kernel,
        example: "lazytime",
        why: "SB_LAZYTIME, passed in the mount's data, which the kernel's FUSE takes",
        apply: |s, i| {
            let lazy = MountOption::CUSTOM("lazytime".into());
            match i.key {
                "lazytime" => s.extra(Some(lazy), &[]),
                _ => s.extra(None, &[lazy]),
            }
            Ok(())
        },
    },
    Row {
        names: &[
            "atime",
            "noatime",
            "relatime",
            "norelatime",
            "strictatime",
            "nostrictatime",
        ],
        flag: None,
        class: Class::Kernel,
        example: "strictatime",
        why: "the kernel leaves FUSE files' access times to the daemon: implemented by us, \
              applied to the upper's objects (README, Access times)",
        apply: atime,
    },
    Row {
        names: &["nodiratime", "diratime"],
        flag: None,
        class: Class::Kernel,
        example: "nodiratime",
        why: "as the other access-time options",
        apply: atime,
    },
    Row {
        names: &["noiversion", "nomand", "symfollow"],
        flag: None,
        class: Class::Kernel,
        example: "noiversion",
        why: "the kernel's default for FUSE mounts: nothing to do",
        apply: nothing,
    },
    Row {
        names: &["context=", "fscontext=", "defcontext=", "rootcontext="],
        flag: None,
        class: Class::Kernel,
        example: "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
        why: "SELinux labels, passed to the kernel where SELinux is on",
        apply: selinux_label,
    },
    Row {
        names: &["allow_other"],
        flag: None,
        class: Class::Kernel,
        example: "allow_other",
        why: "FUSE's: every user may reach the mount (root's default)",
        apply: |s, _| {
            s.session.allow_other = true;
            Ok(())
        },
    },
    Row {
        names: &["allow_root"],
        flag: None,
        class: Class::Kernel,
        example: "allow_root",
        why: "libfuse's: root and the owner may reach the mount",
        apply: |s, _| {
            s.session.allow_root = true;
            Ok(())
        },
    },
    Row {
        names: &["fsname="],
        flag: None,
        class: Class::Kernel,
        example: "fsname=my-union",
        why: "libfuse's: the mount's source in /proc/self/mountinfo",
        apply: |s, i| {
            s.fsname = Some(i.text());
            Ok(())
        },
    },
    Row {
        names: &["subtype="],
        flag: None,
        class: Class::Kernel,
        example: "subtype=unionfs",
        why: "libfuse's: the mount's type fuse.SUBTYPE",
        apply: |s, i| {
            s.session.subtype = i.text();
            Ok(())
        },
    },
    Row {
        names: &["max_read="],
        flag: None,
        class: Class::Kernel,
        example: "max_read=131072",
        why: "FUSE's: the largest read request the kernel sends",
        apply: |s, i| {
            let n = in_range(i, 1, u64::from(u32::MAX))?;
            s.extra(Some(MountOption::CUSTOM(format!("max_read={n}"))), &[]);
            Ok(())
        },
    },
    Row {
        names: &["nonempty"],
        flag: None,
        class: Class::Kernel,
        example: "nonempty",
        why: "libfuse 2's; mounting on a non-empty directory is always allowed",
        apply: nothing,
    },
    // ---- Options that cannot apply to a FUSE union ----
    Row {
        names: &["dax", "dax="],
        flag: None,
        class: Class::CannotApply,
        example: "dax=never",
        why: "DAX maps a virtio-fs host's memory window; a union of directories has none",
        apply: nothing,
    },
    Row {
        names: &["iversion"],
        flag: None,
        class: Class::CannotApply,
        example: "iversion",
        why: "FUSE keeps no inode change counter (the kernel ignores MS_I_VERSION on FUSE mounts)",
        apply: nothing,
    },
    Row {
        names: &["mand"],
        flag: None,
        class: Class::CannotApply,
        example: "mand",
        why: "mandatory locking was removed from Linux (5.15)",
        apply: nothing,
    },
    Row {
        names: &["discard", "nodiscard"],
        flag: None,
        class: Class::CannotApply,
        example: "discard",
        why: "a block device option; the union has no device (the layers' filesystems discard)",
        apply: nothing,
    },
    Row {
        names: &["blksize=", "blkdev"],
        flag: None,
        class: Class::CannotApply,
        example: "blksize=4096",
        why: "fuseblk's, for filesystems on a block device",
        apply: nothing,
    },
    Row {
        names: &["auto_unmount"],
        flag: None,
        class: Class::CannotApply,
        example: "auto_unmount",
        why: "the daemon unmounts on every signal it can catch (kill -9 leaves a stale mount \
              that `unionfs umount` removes)",
        apply: nothing,
    },
    Row {
        names: &["nosymfollow"],
        flag: None,
        class: Class::Unsupported,
        example: "nosymfollow",
        why: "the kernel's FUSE honours MS_NOSYMFOLLOW, but fuser 0.18 cannot pass that flag; \
              refused rather than mounted without it",
        apply: nothing,
    },
    // ---- mount(8)'s own ----
    Row {
        names: &[
            "defaults", "auto", "noauto", "user", "user=", "nouser", "users", "owner", "group", "_netdev", "nofail",
            "comment=", "x-*", "X-*",
        ],
        flag: None,
        class: Class::Mount8,
        example: "x-systemd.requires=local-fs.target",
        why: "for mount(8), fstab and systemd, not for the filesystem",
        apply: nothing,
    },
];

/// The row that names `key` (with or without a value), or why there is none.
fn find(key: &str, has_value: bool, shown: &str) -> Result<&'static Row, String> {
    let mut wrong_arity = None;
    for row in TABLE {
        for &name in row.names {
            if let Some(prefix) = name.strip_suffix('*') {
                if key.starts_with(prefix) {
                    return Ok(row);
                }
            } else if let Some(n) = name.strip_suffix('=') {
                if n == key && has_value {
                    return Ok(row);
                }
                wrong_arity = wrong_arity.or((n == key).then_some("needs a value"));
            } else if name == key {
                if !has_value {
                    return Ok(row);
                }
                wrong_arity = wrong_arity.or(Some("takes no value"));
            }
        }
    }
    Err(match wrong_arity {
        Some(why) => format!("option '{key}' {why}"),
        None => format!("unknown mount option '{shown}' (the README's \"Mount options\" lists what unionfs takes)"),
    })
}

/// Applies one item through its row: the row's action, and its class's warning or refusal.
pub(crate) fn apply_item(spec: &mut MountSpec, row: &Row, item: &Item<'_>) -> Result<(), String> {
    match row.class {
        Class::FuseOverlayfsIgnored => {
            spec.warnings.push(format!(
                "ignoring fuse-overlayfs option '{}': {}",
                item.shown(),
                row.why
            ));
        }
        Class::OverlayIgnored => {
            spec.warnings
                .push(format!("ignoring overlayfs option '{}': {}", item.shown(), row.why));
        }
        Class::CannotApply => spec
            .warnings
            .push(format!("ignoring option '{}': {}", item.shown(), row.why)),
        Class::Unsupported => return Err(format!("option '{}' is not supported: {}", item.shown(), row.why)),
        Class::Ours | Class::FuseOverlayfs | Class::Kernel | Class::Mount8 => {}
    }
    (row.apply)(spec, item).map_err(|e| format!("option '{}': {e}", item.shown()))
}

/// Applies every item of an option string to `spec`; the first bad one is the error.
pub(crate) fn apply_options(spec: &mut MountSpec, opts: &OsStr) -> Result<(), String> {
    for raw in split_options(opts) {
        let (key, value) = match raw.iter().position(|&c| c == b'=') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (&raw[..], None),
        };
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let key = std::str::from_utf8(key).map_err(|_| format!("unknown mount option '{shown}'"))?;
        let row = find(key, value.is_some(), &shown)?;
        apply_item(spec, row, &Item { key, value, flag: None })?;
    }
    Ok(())
}

/// The item a long flag stands for: the row's first `NAME=` with the flag's value, or its
/// first `NAME` (rows without names, such as `--foreground`, get an empty key).
pub(crate) fn flag_item<'a>(row: &'a Row, value: Option<&'a [u8]>) -> Item<'a> {
    let long = row.flag.as_ref().map(|f| f.long);
    let name = match value {
        Some(_) => row.names.iter().find_map(|n| n.strip_suffix('=')),
        None => row.names.iter().find(|n| !n.ends_with('=')).copied(),
    };
    Item {
        key: name.unwrap_or_default(),
        value,
        flag: long,
    }
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

/// Strips one pair of surrounding double quotes.
fn unquote(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    }
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
mod tests;
