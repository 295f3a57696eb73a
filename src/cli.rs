//! Command line: `unionfs mount ...`, `unionfs umount ...`, the offline layer tools (`diff`,
//! `commit`, `import`, `size`, `layers`, `check`: `cli/layers.rs`), `push` (`cli/push.rs`), and
//! the fuse-overlayfs form `unionfs [-f] -o lowerdir=..,upperdir=..,workdir=.. MOUNTPOINT` (for
//! Podman's `mount_program`).
//!
//! Exit status: 0 success; 2 bad input or a failed mount; 1 a failure at run time.

mod cache;
mod compat;
mod daemon;
mod image;
mod layers;
mod options;
mod pidfile;
mod push;
mod remount;
mod spec;
mod umount;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use unionfs::SetupError;

use spec::{MountArgs, MountSpec};

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
    /// Switch a mounted union read-only (--ro) or writable again (--rw).
    Remount(RemountArgs),
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
    /// The image cache: `ls` what it holds, `prune` what no mount uses.
    Cache(cache::CacheArgs),
    /// Upload an image of an OCI layout to a registry; prints its manifest digest.
    Push(push::PushArgs),
}

#[derive(clap::Args)]
struct UmountArgs {
    /// If the mount is busy, detach it now; it goes away when the last open file is closed.
    #[arg(short, long)]
    lazy: bool,
    /// The union's mountpoint.
    mountpoint: PathBuf,
}

#[derive(clap::Args)]
struct RemountArgs {
    /// Read-only: the kernel refuses every write with EROFS (refused while a file is open for
    /// writing).
    #[arg(long, conflicts_with = "rw", required_unless_present = "rw")]
    ro: bool,
    /// Writable again.
    #[arg(long)]
    rw: bool,
    /// The union's mountpoint.
    mountpoint: PathBuf,
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
        if let Some((mnt, items)) = remount::request(rest) {
            return remount::from_options(&mnt, &items);
        }
        let mut spec = match compat::parse(rest) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("unionfs: {e}");
                return ExitCode::from(2);
            }
        };
        // Run by mount.fuse3 by path (`-t fuse./PATH/unionfs`): the mount's type names that
        // path, so that mount(8) runs this program again for a remount.
        if let Some(argv0) = args.first().filter(|a| a.as_bytes().starts_with(b"/")) {
            if compat::has_source(rest) && spec.session.subtype == "unionfs" {
                spec.session.subtype = argv0.to_string_lossy().into_owned();
            }
        }
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
        Cmd::Remount(a) => remount::run(&a.mountpoint, a.ro),
        Cmd::Diff(a) => layers::diff(a),
        Cmd::Commit(a) => layers::commit(a),
        Cmd::Import(a) => layers::import(a),
        Cmd::Size(a) => layers::size(a),
        Cmd::Layers(a) => layers::layers(a),
        Cmd::Check(a) => layers::check(a),
        Cmd::Cache(a) => cache::run(a),
        Cmd::Push(a) => push::run(a),
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
    // The daemon checks again; here, bad input is reported before anything starts.
    let prepared = match spec.prepare() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(2);
        }
    };
    // An image's layers are indexed here, where the terminal is, before the daemon starts.
    let pinned = match image::index(&prepared.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(2);
        }
    };
    let env: Vec<(&str, String)> = pinned.map(|p| (image::PINNED_ENV, p)).into_iter().collect();
    daemon::spawn_background(child_args, &env, spec.log.as_deref())
}
