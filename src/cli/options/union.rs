//! The option table's rows for the union itself and the daemon that serves it: unionfs's own
//! options and fuse-overlayfs's (those we implement, and those we accept with a warning).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use unionfs::{RedirectDir, WhiteoutStyle, idmap};

use super::{Class, Flag, Row, flag, in_range, nothing, number, on_off, parse_ttl, split_lowers, switch};

pub(super) static ROWS: &[Row] = &[
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
            "Scratch directory on the upper's filesystem [default: a directory beside the upper, \
             named after it].",
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
             device 0/0 and the overlay opaque xattr, as kernel overlayfs) or `oci` (the marker \
             files of the OCI layer format) [default: overlay].",
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
        names: &["redirect_dir="],
        flag: flag(
            "--redirect-dir",
            Some("on|off|follow|nofollow"),
            "Kernel overlayfs's redirect_dir: `on` renames a directory that merges lower \
             directories in O(1), recording in the upper where its lower content is; `follow` \
             (and `off`) reads such records but copies the tree on rename; `nofollow` neither \
             [default: on; follow in the fuse-overlayfs and mount.fuse3 forms, for Podman].",
        ),
        class: Class::Ours,
        example: "redirect_dir=follow",
        why: "kernel overlayfs's `redirect_dir`, with its meanings",
        apply: |s, i| {
            s.config.redirect_dir =
                RedirectDir::parse(i.bytes()).ok_or("must be 'on', 'off', 'follow' or 'nofollow'")?;
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
        names: &["metacopy="],
        flag: flag(
            "--metacopy",
            Some("on|off"),
            "A change of a lower file's metadata only (chown, chmod, touch, xattrs) copies up its \
             metadata and keeps reading its data from the lower until the first write, in kernel \
             overlayfs's metacopy format [default: on; off in the `-o lowerdir=` form].",
        ),
        class: Class::Ours,
        example: "metacopy=on",
        why: "kernel overlayfs's metacopy, same format; off unless asked in the form Podman uses, \
              whose own diff reads the upper",
        apply: |s, i| {
            s.config.metacopy = on_off(i)?;
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
        names: &["image="],
        flag: flag(
            "--image",
            Some("oci:DIR[:TAG]|docker://HOST/REPO[:TAG|@DIGEST]"),
            "An OCI image whose layers lie below the lowers (if any), read in place from its \
             blobs, without unpacking: from an image layout, or fetched from a registry into \
             the cache first.",
        ),
        class: Class::Ours,
        example: "image=oci:/srv/layout:v1",
        why: "images as layers are ours",
        apply: |s, i| {
            s.image = Some(i.text());
            Ok(())
        },
    },
    Row {
        names: &["cache="],
        flag: flag(
            "--cache",
            Some("DIR"),
            "Where the image's layer catalogs and decompressed file contents are kept, shared \
             by every mount [default: $XDG_CACHE_HOME/unionfs, else ~/.cache/unionfs].",
        ),
        class: Class::Ours,
        example: "cache=/var/cache/unionfs",
        why: "images as layers are ours",
        apply: |s, i| {
            s.cache_dir = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["cache_size="],
        flag: flag(
            "--cache-size",
            Some("BYTES"),
            "How much disk the cache of decompressed file content may take, in allocated \
             blocks (suffixes K, M, G, T) [default: 4G].",
        ),
        class: Class::Ours,
        example: "cache_size=512M",
        why: "a bound on the disk the cache uses",
        apply: |s, i| {
            s.cache_size = Some(super::parse_size(&i.text())?);
            Ok(())
        },
    },
    Row {
        names: &["tls_verify="],
        flag: flag(
            "--tls-verify",
            Some("true|false"),
            "false: reach the registry of a docker:// image without verifying its TLS \
             certificate, or over plain HTTP when it does not speak TLS [default: true].",
        ),
        class: Class::Ours,
        example: "tls_verify=false",
        why: "registry images are ours; skopeo and Podman spell it so",
        apply: |s, i| {
            s.tls_verify = Some(match i.bytes() {
                b"true" => true,
                b"false" => false,
                _ => on_off(i).map_err(|_| "must be 'true' or 'false'".to_string())?,
            });
            Ok(())
        },
    },
    Row {
        names: &["cert_dir="],
        flag: flag(
            "--cert-dir",
            Some("DIR"),
            "CA certificates (*.crt, *.pem) trusted for the registry of a docker:// image, \
             besides the system's.",
        ),
        class: Class::Ours,
        example: "cert_dir=/etc/containers/certs.d/reg.example",
        why: "registry images are ours; skopeo and Podman spell it so",
        apply: |s, i| {
            s.cert_dir = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["prefetch="],
        flag: flag(
            "--prefetch",
            Some("FILE"),
            "A list of paths (one per line, as --record writes it) whose data a lazily fetched \
             image fetches first, in the background, several requests at once.",
        ),
        class: Class::Ours,
        example: "prefetch=/srv/ci/app.files",
        why: "registry images are ours; what a job reads next time, fetched before it asks",
        apply: |s, i| {
            s.prefetch = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["record="],
        flag: flag(
            "--record",
            Some("FILE"),
            "List the image files the workload opens in FILE (one path per line, in the order \
             of first open), for --prefetch of a later mount.",
        ),
        class: Class::Ours,
        example: "record=/srv/ci/app.files",
        why: "registry images are ours; makes the list --prefetch reads",
        apply: |s, i| {
            s.record = Some(i.path());
            Ok(())
        },
    },
    Row {
        names: &["fetch_timeout="],
        flag: flag(
            "--fetch-timeout",
            Some("SECONDS"),
            "How long a read of a docker:// image's lazily fetched layer keeps trying to reach \
             the registry before it fails with EIO (files already cached are read without it) \
             [default: 30].",
        ),
        class: Class::Ours,
        example: "fetch_timeout=10",
        why: "registry images are ours; a bound on how long a read waits for a registry gone",
        apply: |s, i| {
            s.fetch_timeout = Some(number(i)?);
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
];
