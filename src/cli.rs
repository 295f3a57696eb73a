//! Command line: `unionfs mount ...`, `unionfs umount ...`, and the fuse-overlayfs form
//! `unionfs [-f] -o lowerdir=..,upperdir=..,workdir=.. MOUNTPOINT`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use unionfs::fuse::session::{self, SessionOptions};
use unionfs::{MountConfig, Union, WhiteoutStyle};

#[derive(Parser)]
#[command(name = "unionfs", version, about = "A union filesystem in userspace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a union of LOWER layers (top first) under UPPER at MOUNTPOINT.
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Lower layers, top first, separated by ':'.
    #[arg(long)]
    lower: String,
    #[arg(long)]
    upper: Option<PathBuf>,
    #[arg(long)]
    workdir: Option<PathBuf>,
    #[arg(short, long)]
    foreground: bool,
    mountpoint: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mount(a) => {
            let mut cfg = MountConfig::new(a.lower.split(':').map(PathBuf::from).collect(), a.upper);
            cfg.workdir = a.workdir;
            cfg.whiteouts = WhiteoutStyle::Overlay;
            rustix::process::umask(rustix::fs::Mode::empty());
            let cfg = match cfg.validate(Some(&a.mountpoint)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("unionfs: {e}");
                    return ExitCode::from(2);
                }
            };
            let union = match Union::new(&cfg) {
                Ok(u) => Arc::new(u),
                Err(e) => {
                    eprintln!("unionfs: {e}");
                    return ExitCode::from(2);
                }
            };
            let m = match session::mount(union, &a.mountpoint, &SessionOptions::for_current_user()) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("unionfs: mount {}: {e}", a.mountpoint.display());
                    return ExitCode::from(2);
                }
            };
            let mp = a.mountpoint.clone();
            std::thread::spawn(move || {
                if let Ok(mut s) = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
                    if s.forever().next().is_some() {
                        let _ = session::unmount(&mp, true);
                    }
                }
            });
            match m.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unionfs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
