//! The option table's rows for the mount as the kernel sees it: FUSE's and the VFS's options
//! (passed to the kernel's mount, or implemented by us where the kernel leaves them to the
//! filesystem), kernel overlayfs's own, those that cannot apply to a FUSE union, and mount(8)'s.

use fuser::MountOption;
use unionfs::AtimeMode;

use super::{Class, Item, Row, in_range, nothing};
use crate::cli::spec::MountSpec;

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

pub(super) static ROWS: &[Row] = &[
    // ---- Kernel overlayfs's own tuning ----
    Row {
        names: &["index=", "xino=", "nfs_export=", "uuid=", "verity="],
        flag: None,
        class: Class::OverlayIgnored,
        example: "index=on",
        why: "kernel overlayfs's on-disk features: we keep hard links and give lower inode \
              numbers without them",
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
