//! `unionfs cache ls|prune`: what an image cache directory holds, and trimming it (the work is
//! in `unionfs::image::cache_dir`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use unionfs::image::cache_dir::{self, Kind};
use unionfs::layers::human_size;

#[derive(clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    cmd: CacheCmd,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List the cache's registry blobs, layer catalogs and pieces of file content, least
    /// recently used first, with the bytes they take and whether a running mount uses them.
    Ls {
        /// The cache directory [default: $XDG_CACHE_HOME/unionfs, else ~/.cache/unionfs].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// One JSON array of entries instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Remove what no running mount uses (and was not used in the last minute), least
    /// recently used first, until the rest takes at most --keep.
    Prune {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// How much to keep (suffixes K, M, G, T) [default: 0, everything unused goes].
        #[arg(long, value_name = "SIZE", default_value = "0")]
        keep: String,
    },
}

pub fn run(a: CacheArgs) -> ExitCode {
    match a.cmd {
        CacheCmd::Ls { cache, json } => ls(&dir(cache), json),
        CacheCmd::Prune { cache, keep } => match super::options::parse_size(&keep) {
            Ok(keep) => prune(&dir(cache), keep),
            Err(e) => {
                eprintln!("unionfs: --keep {keep}: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn dir(cache: Option<PathBuf>) -> PathBuf {
    cache.unwrap_or_else(unionfs::config::default_cache_dir)
}

fn ls(cache: &std::path::Path, json: bool) -> ExitCode {
    if !cache.is_dir() {
        eprintln!("unionfs: {}: no such cache directory", cache.display());
        return ExitCode::from(2);
    }
    let items = cache_dir::list(cache);
    if json {
        match serde_json::to_string_pretty(&items) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("unionfs: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<8} {:<19} {:>10} {:>20} IN USE",
        "KIND", "DIGEST", "SIZE", "LAST USED"
    );
    for i in items.iter().filter(|i| i.kind != Kind::Piece) {
        let kind = match i.kind {
            Kind::Blob => "blob",
            Kind::Partial => "partial",
            _ => "catalog",
        };
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        let used = unionfs::image::write::rfc3339(i.used);
        let busy = if i.in_use { "yes" } else { "" };
        println!("{kind:<8} {short:<19} {:>10} {used:>20} {busy}", human_size(i.bytes));
    }
    let pieces: Vec<_> = items.iter().filter(|i| i.kind == Kind::Piece).collect();
    let bytes: u64 = pieces.iter().map(|i| i.bytes).sum();
    println!("{} pieces of file content: {}", pieces.len(), human_size(bytes));
    let total: u64 = items.iter().map(|i| i.bytes).sum();
    println!("total: {} in {}", human_size(total), cache.display());
    ExitCode::SUCCESS
}

fn prune(cache: &std::path::Path, keep: u64) -> ExitCode {
    if !cache.is_dir() {
        eprintln!("unionfs: {}: no such cache directory", cache.display());
        return ExitCode::from(2);
    }
    match cache_dir::prune(cache, keep) {
        Ok(p) => {
            println!(
                "removed {} entries ({}); kept {} in use or used in the last minute; {} left",
                p.removed,
                human_size(p.freed),
                p.busy,
                human_size(p.left)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unionfs: cache prune: {e}");
            ExitCode::from(1)
        }
    }
}
