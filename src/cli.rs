//! Command line: `unionfs mount ...`, `unionfs umount ...`, the offline layer tools (`diff`,
//! `commit`, `import`, `size`, `layers`, `check`: `cli/layers.rs`), and the fuse-overlayfs form
//! `unionfs [-f] -o lowerdir=..,upperdir=..,workdir=.. MOUNTPOINT` (for Podman's `mount_program`).
//!
//! Exit status: 0 success; 2 bad input or a failed mount; 1 a failure at run time.

mod compat;
mod daemon;
mod layers;
mod pidfile;
mod umount;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fuser::MountOption;
use unionfs::{MountConfig, SetupError, WhiteoutStyle};

#[derive(Parser)]
#[command(
    name = "unionfs",
    version,
    about = "A union filesystem in userspace (overlayfs semantics)",
    after_help = "Also accepts the fuse-overlayfs form, for Podman/Buildah `mount_program`:\n  \
                  unionfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,OPTIONS] MOUNTPOINT"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a union of LOWER layers (top first) under UPPER at MOUNTPOINT.
    Mount(MountArgs),
    /// Unmount a union and wait for its daemon to exit.
    #[command(visible_alias = "unmount")]
    Umount(UmountArgs),
    /// What the upper changes relative to the lowers (`docker diff`: A, C, D lines).
    Diff(layers::DiffArgs),
    /// Write the upper as an OCI image layer tar; prints its DiffID last.
    Commit(layers::CommitArgs),
    /// Apply an OCI layer tar as a new layer directory (usable as a lower).
    Import(layers::ImportArgs),
    /// The upper's disk usage and the whole union's (`docker ps -s`).
    Size(layers::SizeArgs),
    /// One line per layer, top first: entries, size, whiteouts, opaque directories.
    Layers(layers::LayersArgs),
    /// Check an upper (and workdir) for what breaks a mount or a commit; --repair fixes it.
    Check(layers::CheckArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Read-only layers, top first, separated by ':' (`\:` is a literal colon).
    #[arg(long, value_name = "DIR:DIR:...")]
    lower: Option<OsString>,
    /// The writable layer; without it the union is read-only.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem [default: .unionfs-work.NAME beside the upper].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Stay attached and log to stderr (default: return once mounted, serve in the background).
    #[arg(short, long)]
    foreground: bool,
    /// How whiteouts and opaque directories are written in the upper.
    #[arg(long, value_enum, default_value_t = Whiteouts::Overlay)]
    whiteouts: Whiteouts,
    /// Skip fsync of copied-up data (faster, not crash-safe).
    #[arg(long)]
    volatile: bool,
    /// Worker threads (at least 2) [default: CPUs, at most 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// How long the kernel may cache names and attributes, in seconds [default: 86400].
    #[arg(long, value_name = "SECONDS", value_parser = compat::parse_ttl)]
    ttl: Option<Duration>,
    /// Serve all file I/O in the daemon, never through FUSE passthrough (which the kernel
    /// otherwise does for upper files when we run with CAP_SYS_ADMIN).
    #[arg(long)]
    no_passthrough: bool,
    /// The lower layers may change while mounted: notice entries added to, removed from or
    /// changed in lower directories, at the cost of short kernel cache times (--ttl defaults to
    /// 1 s) and one stat per lower directory per lookup.
    #[arg(long)]
    revalidate: bool,
    /// How many names of directory listings the daemon keeps in memory; beyond, the least
    /// recently used directories are read from the layers again when needed [default: 250000,
    /// about 25 MiB].
    #[arg(long, value_name = "NAMES")]
    index_cache: Option<usize>,
    /// When listings carry file attributes: `always` sends them with every chunk (walks that
    /// stat every entry, find, du, ls -l, tar, rsync, cost no round trip per entry); `auto`
    /// lets the kernel ask for them with a listing's first chunk only (cheaper cold listings
    /// that stat nothing, such as `find -name`).
    #[arg(long, value_enum, default_value_t = ReaddirPlus::Always)]
    readdirplus: ReaddirPlus,
    /// Without passthrough (rootless mounts, --no-passthrough), do not let the kernel cache
    /// written pages (every write then goes to the daemon at once).
    #[arg(long)]
    no_writeback_cache: bool,
    /// Do not enforce POSIX ACLs (they are stored and copied up, but only modes are checked).
    #[arg(long)]
    no_acl: bool,
    /// Mount options, comma separated: ro, nosuid, nodev, noexec, allow_other, fsname=..,
    /// noatime, relatime (the default), strictatime, nodiratime, and the fuse-overlayfs ones
    /// (lowerdir=.., upperdir=.., workdir=.., volatile, ...).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<OsString>,
    /// Log to FILE instead of stderr (in the background: instead of nowhere).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Log at debug level (UNIONFS_LOG or RUST_LOG override the level).
    #[arg(short, long)]
    debug: bool,
    /// Where to mount: an existing directory, not inside a layer.
    mountpoint: PathBuf,
}

#[derive(clap::Args)]
struct UmountArgs {
    /// If the mount is busy, detach it now; it goes away when the last open file is closed.
    #[arg(short, long)]
    lazy: bool,
    /// The union's mountpoint.
    mountpoint: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReaddirPlus {
    Auto,
    Always,
}

#[derive(Clone, Copy, ValueEnum)]
enum Whiteouts {
    /// Character device 0/0 and `trusted.overlay.opaque` (as kernel overlayfs).
    Overlay,
    /// `.wh.NAME` and `.wh..wh..opq` files (OCI layer format).
    Oci,
}

/// Everything a mount request says, from either command-line form.
#[derive(Debug, Default)]
pub(crate) struct MountSpec {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub whiteouts: WhiteoutStyle,
    pub volatile: bool,
    /// `-o ro`: a read-only union even when an upper is given.
    pub read_only: bool,
    pub threads: Option<usize>,
    pub ttl: Option<Duration>,
    pub no_passthrough: bool,
    pub revalidate: bool,
    /// `-o noacl`: the kernel checks modes only.
    pub no_acl: bool,
    pub index_cache: Option<usize>,
    /// Owner mappings (fuse-overlayfs's uidmapping=, gidmapping=, squash_*).
    pub idmap: unionfs::idmap::IdMap,
    /// `--readdirplus auto`.
    pub readdirplus_auto: bool,
    /// `-o noatime`, `relatime`, `strictatime`, `nodiratime`.
    pub atime: unionfs::AtimePolicy,
    pub no_writeback_cache: bool,
    pub foreground: bool,
    pub debug: bool,
    pub log: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    pub mount: MountFlags,
    /// One line each, printed as `unionfs: warning: ...`.
    pub warnings: Vec<String>,
}

/// Standard mount options; `None` keeps the default for the current user.
#[derive(Debug, Default)]
pub(crate) struct MountFlags {
    pub allow_other: Option<bool>,
    pub allow_root: bool,
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    pub exec: Option<bool>,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    pub extra: Vec<MountOption>,
}

impl MountFlags {
    /// Adds `on`, dropping an earlier `off` (the last of a conflicting pair wins).
    fn extra_flag(&mut self, on: MountOption, off: MountOption) {
        self.extra.retain(|o| *o != off && *o != on);
        self.extra.push(on);
    }
}

impl MountSpec {
    /// The union's configuration (not yet validated).
    pub fn config(&self) -> MountConfig {
        let mut c = if self.read_only {
            // A read-only view of the whole union: the upper is read as the top layer.
            let lowers = self.upper.iter().chain(&self.lowers).cloned().collect();
            MountConfig::new(lowers, None)
        } else {
            let mut c = MountConfig::new(self.lowers.clone(), self.upper.clone());
            c.workdir = self.workdir.clone();
            c
        };
        c.whiteouts = self.whiteouts;
        c.volatile = self.volatile;
        c.revalidate = self.revalidate;
        c.acl = !self.no_acl;
        c.idmap = self.idmap.clone();
        if let Some(n) = self.index_cache {
            c.index_cache = n;
        }
        c.atime = self.atime;
        c
    }
}

impl MountArgs {
    fn into_spec(self) -> Result<MountSpec, String> {
        let mut spec = MountSpec::default();
        for o in &self.options {
            compat::apply_options(&mut spec, o)?;
        }
        if let Some(l) = &self.lower {
            spec.lowers = compat::split_lowers(l);
        }
        spec.upper = self.upper.or(spec.upper);
        spec.workdir = self.workdir.or(spec.workdir);
        spec.foreground |= self.foreground;
        spec.debug |= self.debug;
        if matches!(self.whiteouts, Whiteouts::Oci) {
            spec.whiteouts = WhiteoutStyle::Oci;
        }
        spec.volatile |= self.volatile;
        spec.threads = self.threads.map(usize::from);
        spec.ttl = self.ttl.or(spec.ttl);
        spec.no_passthrough |= self.no_passthrough;
        spec.revalidate |= self.revalidate;
        spec.no_acl |= self.no_acl;
        spec.index_cache = self.index_cache.or(spec.index_cache);
        spec.readdirplus_auto |= self.readdirplus == ReaddirPlus::Auto;
        spec.no_writeback_cache |= self.no_writeback_cache;
        spec.log = self.log;
        spec.mountpoint = Some(self.mountpoint);
        Ok(spec)
    }
}

/// One line for a setup error; a stale FUSE mount (ENOTCONN) gets advice.
pub(crate) fn setup_message(e: &SetupError) -> String {
    if let SetupError::Io { role, path, source } = e {
        if source.raw_os_error() == Some(libc::ENOTCONN) {
            let p = path.display();
            return format!(
                "{role} {p}: stale FUSE mount (transport endpoint is not connected; its daemon is gone); \
                 clean it up with `unionfs umount {p}` or `fusermount3 -u {p}`"
            );
        }
    }
    e.to_string()
}

pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let rest = args.get(1..).unwrap_or_default();
    if compat::is_compat(rest) {
        let spec = match compat::parse(rest) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("unionfs: {e}");
                return ExitCode::from(2);
            }
        };
        // The daemon child gets `-f` first (still the compat form).
        let child_args = std::iter::once(OsString::from("-f"))
            .chain(rest.iter().cloned())
            .collect();
        return mount(spec, child_args);
    }
    match Cli::parse().cmd {
        Cmd::Mount(a) => {
            let spec = match a.into_spec() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("unionfs: {e}");
                    return ExitCode::from(2);
                }
            };
            // `mount --foreground REST...` for the daemon child.
            let child_args = [OsString::from("mount"), OsString::from("--foreground")]
                .into_iter()
                .chain(rest.iter().skip(1).cloned())
                .collect();
            mount(spec, child_args)
        }
        Cmd::Umount(a) => umount::run(&a.mountpoint, a.lazy),
        Cmd::Diff(a) => layers::diff(a),
        Cmd::Commit(a) => layers::commit(a),
        Cmd::Import(a) => layers::import(a),
        Cmd::Size(a) => layers::size(a),
        Cmd::Layers(a) => layers::layers(a),
        Cmd::Check(a) => layers::check(a),
    }
}

/// Mounts in the foreground, or starts a background daemon (re-running us with `child_args`).
fn mount(spec: MountSpec, child_args: Vec<OsString>) -> ExitCode {
    let ready = daemon::ReadyPipe::from_env();
    if spec.foreground || ready.is_some() {
        return daemon::serve(spec, ready);
    }
    for w in &spec.warnings {
        eprintln!("unionfs: warning: {w}");
    }
    // Check here too, so bad input is reported without starting anything.
    let Some(mp) = spec.mountpoint.as_deref() else {
        eprintln!("unionfs: no mountpoint given");
        return ExitCode::from(2);
    };
    if let Err(e) = spec.config().validate(Some(mp)) {
        eprintln!("unionfs: {}", setup_message(&e));
        return ExitCode::from(2);
    }
    daemon::spawn_background(child_args, spec.log.as_deref())
}
