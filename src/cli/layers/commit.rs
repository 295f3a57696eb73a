//! `unionfs commit`: the upper as an OCI layer, into a file (`--output`), or into the image it
//! was mounted over as a new tagged image (`--image oci:DIR:TAG --tag NEWTAG`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use unionfs::layers::commit::{BlobFormat, CommitOptions, CommitSummary, Compression, HistoryEntry};
use unionfs::layers::{self, LayerError, Stack, Use};

use super::{Progress, StackArgs, claim, fail, lossy, open_dirs, print_json, with_image, workdir_of};

#[derive(Clone, Copy, ValueEnum)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
    /// gzip as eStargz: one gzip member per file (and per 4 MiB chunk of a big file) and a
    /// table of contents, so `mount --image` reads the layer without a pass over it.
    Estargz,
    /// zstd as zstd:chunked (containers/storage): one zstd frame per file (and per 4 MiB chunk
    /// of a big file), a table of contents and a tar-split, so `mount --image` and Podman's
    /// partial pulls read the layer file by file.
    #[value(name = "zstd:chunked")]
    ZstdChunked,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// The workdir the union is mounted with [default: as for `diff`].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Where to write the layer blob (written under a temporary name, renamed at the end).
    #[arg(long, value_name = "FILE", required_unless_present = "tag", conflicts_with = "tag")]
    output: Option<PathBuf>,
    /// Store the layer in the --image's layout and tag the image it makes (the image plus the
    /// layer) NEWTAG; an existing NEWTAG is replaced.
    #[arg(long, value_name = "NEWTAG", requires = "image", conflicts_with = "lower")]
    tag: Option<String>,
    /// With --tag: the new history entry's "created by" [default: unionfs commit].
    #[arg(long, value_name = "TEXT", requires = "tag")]
    message: Option<String>,
    /// Compression of the blob [default: none with --output, gzip with --tag]. With estargz or
    /// zstd:chunked and --output, the descriptor's annotations (where the table of contents is,
    /// its digest) are printed as `annotation KEY VALUE` lines.
    #[arg(long, value_enum)]
    compress: Option<Compress>,
    /// Clamp every mtime to SECONDS since the epoch [default: $SOURCE_DATE_EPOCH if set]; with
    /// --tag also the new image's creation time.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timestamp: Option<i64>,
    /// Print the result as JSON instead of digest lines.
    #[arg(long)]
    json: bool,
}

/// `--timestamp`, else `SOURCE_DATE_EPOCH`; an unreadable `SOURCE_DATE_EPOCH` is one line.
fn clamp_of(given: Option<i64>) -> Result<Option<i64>, String> {
    if given.is_some() {
        return Ok(given);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<i64>() {
            Ok(t) => Ok(Some(t)),
            Err(_) => Err(format!("SOURCE_DATE_EPOCH: '{v}' is not a number of seconds")),
        },
        _ => Ok(None),
    }
}

pub fn commit(a: CommitArgs) -> ExitCode {
    let clamp = match clamp_of(a.timestamp) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(2);
        }
    };
    let default = if a.tag.is_some() {
        Compress::Gzip
    } else {
        Compress::None
    };
    let opts = CommitOptions {
        compression: match a.compress.unwrap_or(default) {
            Compress::None => Compression::None,
            Compress::Gzip | Compress::Estargz => Compression::Gzip,
            Compress::Zstd | Compress::ZstdChunked => Compression::Zstd,
        },
        format: match a.compress {
            Some(Compress::Estargz) => BlobFormat::Estargz,
            Some(Compress::ZstdChunked) => BlobFormat::ZstdChunked,
            _ => BlobFormat::Plain,
        },
        clamp_mtime: clamp,
    };
    if let Some(t) = &a.tag {
        if let Err(why) = layers::commit::valid_tag(t) {
            eprintln!("unionfs: --tag {t:?}: {why}");
            return ExitCode::from(2);
        }
    }
    if a.tag.is_some()
        && a.stack
            .image
            .image
            .as_deref()
            .is_some_and(unionfs::registry::is_registry)
    {
        eprintln!(
            "unionfs: --tag commits into an image layout (oci:DIR); a registry image is read-only here: use --output FILE"
        );
        return ExitCode::from(2);
    }
    let upper = a.stack.upper.clone();
    let stack = match open_dirs(a.stack.lower.as_ref(), Some(&upper))
        .and_then(|s| Ok(s.with_workdir(workdir_of(a.workdir.clone(), &upper)?)))
    {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Before the image's catalogs are made (which can take a while): a busy upper is refused at once.
    let _claim = match claim(Some(&upper), stack.workdir.as_deref(), Use::ReadStill) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let stack = match with_image(stack, &a.stack.image) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let p = Progress::new("commit", true);
    let r = run(&stack, &a, &opts, &p);
    p.done();
    match r {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// Commits into the file or the image `a` names, and prints what was written.
fn run(stack: &Stack, a: &CommitArgs, opts: &CommitOptions, p: &Progress) -> Result<ExitCode, LayerError> {
    let mut annotations = Vec::new();
    let (summary, image) = match (&a.tag, &a.output) {
        (Some(tag), _) => {
            let history = HistoryEntry {
                created_by: Some(a.message.clone().unwrap_or_else(|| "unionfs commit".into())),
                comment: None,
                created: opts.clamp_mtime.map(unionfs::image::write::rfc3339),
            };
            let c = layers::commit::commit_to_image(stack, opts, tag, &history, p)?;
            (c.layer.clone(), Some(c))
        }
        (None, Some(out)) => {
            let (summary, notes) = layers::commit::commit_to_file(stack, opts, out, p)?;
            annotations = notes;
            (summary, None)
        }
        (None, None) => {
            return Err(LayerError::Invalid {
                path: "--output".into(),
                reason: "give --output FILE, or --image and --tag".into(),
            });
        }
    };
    warn_sockets(&a.stack.upper, &summary);
    if a.json {
        return Ok(match &image {
            Some(c) => print_json(c),
            None => print_json(&summary),
        });
    }
    if summary.digest != summary.diff_id {
        println!("blob {} {} {}", summary.digest, summary.size, summary.media_type);
    }
    for (k, v) in &annotations {
        println!("annotation {k} {v}");
    }
    if let Some(c) = &image {
        println!("manifest {} {}", c.manifest, c.image);
    }
    println!("{}", summary.diff_id);
    Ok(ExitCode::SUCCESS)
}

fn warn_sockets(upper: &std::path::Path, s: &CommitSummary) {
    for sock in &s.skipped_sockets {
        eprintln!(
            "unionfs: warning: {}: socket not committed (a tar cannot carry sockets)",
            upper.join(std::ffi::OsStr::new(&lossy(sock))).display()
        );
    }
}
