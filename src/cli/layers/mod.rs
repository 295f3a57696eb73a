//! The offline layer tools: `unionfs diff`, `commit` (`commit.rs`), `import`, `size`, `layers`
//! (`history.rs`), `check` (library: `unionfs::layers`). Every tool but `import` reads a stack:
//! `--lower` directories and, with `--image`, an OCI image's layers below them. Exit status: 0
//! success (for `check`: clean, or everything repaired); 1 `check` found problems; 2 bad input,
//! one line naming the path and the cause; 130 interrupted (nothing half-written is left).

mod commit;
mod history;

pub use commit::{CommitArgs, commit};
pub use history::{LayersArgs, layers};

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use unionfs::format::workdir;
use unionfs::layers::{self, Claim, LayerError, Observer, Stack, Use, human_size};

/// The layers every tool reads.
#[derive(clap::Args)]
pub struct StackArgs {
    /// Lower layers, top first, separated by ':' (`\:` is a literal colon); '' for none (an
    /// empty image: every path is new). Optional with --image.
    #[arg(long, value_name = "DIR:DIR:...", required_unless_present = "image")]
    lower: Option<OsString>,
    /// The upper (writable) layer.
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    #[command(flatten)]
    image: ImageArgs,
}

/// An image as the bottom lowers.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// An OCI image whose layers lie below the --lower layers (if any), as `unionfs mount
    /// --image` stacks them.
    #[arg(long, value_name = "oci:DIR[:TAG]|docker://HOST/REPO[:TAG|@DIGEST]")]
    image: Option<String>,
    /// Where the image's layer catalogs (and a registry image's blobs) are kept, shared with
    /// mounts [default: $XDG_CACHE_HOME/unionfs, else ~/.cache/unionfs].
    #[arg(long, value_name = "DIR", requires = "image")]
    cache: Option<PathBuf>,
    /// `false`: reach the registry of a docker:// image without verifying its certificate, or
    /// over plain HTTP.
    #[arg(long, value_name = "true|false", requires = "image", action = clap::ArgAction::Set)]
    tls_verify: Option<bool>,
    /// Extra CA certificates (*.crt, *.pem) for the registry of a docker:// image.
    #[arg(long, value_name = "DIR", requires = "image")]
    cert_dir: Option<PathBuf>,
    /// How long a read of a lazily fetched layer keeps trying to reach the registry.
    #[arg(long, value_name = "SECONDS", requires = "image", default_value_t = unionfs::registry::DEFAULT_FETCH_TIMEOUT)]
    fetch_timeout: u64,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// The workdir the union is mounted with [default: .unionfs-work.NAME beside the upper, or
    /// `work` beside an upper named `diff` (Podman's layout), if there].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Print a JSON array of {"kind": "A"|"C"|"D", "path": ...}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// An OCI layer tar (plain, gzip or zstd).
    file: PathBuf,
    /// The new layer directory (created; it must not exist, or be empty).
    dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SizeArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// Print {"upper_bytes", "virtual_bytes", "size", "virtual"} as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// The workdir the upper was mounted with (checked for leftovers too).
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Make the upper canonical without changing the merged view (the union must not be
    /// mounted meanwhile).
    #[arg(long)]
    repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Progress on a terminal (nothing on a pipe), and Ctrl-C turned into a clean stop.
struct Progress {
    bar: Option<ProgressBar>,
    bytes: AtomicU64,
    cancel: Arc<AtomicBool>,
}

impl Progress {
    /// `interruptible`: SIGINT/SIGTERM set a flag the tool polls (it then removes what it was
    /// writing) instead of killing the process.
    fn new(what: &str, interruptible: bool) -> Progress {
        let cancel = Arc::new(AtomicBool::new(false));
        if interruptible {
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let _ = signal_hook::flag::register(sig, Arc::clone(&cancel));
            }
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix}: {human_pos} entries {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(what.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress {
            bar,
            bytes: AtomicU64::new(0),
            cancel,
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn entry(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
    fn bytes(&self, n: u64) {
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            if (before + n) >> 22 != before >> 22 {
                b.set_message(human_size(before + n));
            }
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// The workdir a mount of `upper` uses: the one given, else the mount's default
/// (`.unionfs-work.NAME` beside the upper), else `work` beside an upper named `diff`
/// (containers/storage's layout), if it exists. Its hard-link index says what lower files with
/// several names show once one name was copied up.
fn workdir_of(given: Option<PathBuf>, upper: &Path) -> Result<Option<PathBuf>, LayerError> {
    if let Some(w) = given {
        if !w.is_dir() {
            return Err(LayerError::Invalid {
                path: w,
                reason: "workdir is not a directory".into(),
            });
        }
        return Ok(Some(w));
    }
    let candidates = [Some(workdir::default_for(upper)), workdir::podman_for(upper)];
    Ok(candidates.into_iter().flatten().find(|c| c.is_dir()))
}

/// Takes the locks a tool needs on an upper and its workdir (see `layers::claim`) and prints
/// the warnings.
fn claim(upper: Option<&Path>, workdir: Option<&Path>, how: Use) -> Result<Claim, LayerError> {
    let dirs: Vec<(&str, &Path)> = [("upper", upper), ("workdir", workdir)]
        .into_iter()
        .filter_map(|(r, p)| Some((r, p?)))
        .collect();
    let c = layers::claim(&dirs, how)?;
    for w in &c.warnings {
        eprintln!("unionfs: warning: {w}");
    }
    Ok(c)
}

/// The stack of the `--lower` directories and `upper`, without the image yet (see
/// [`with_image`]).
fn open_dirs(lower: Option<&OsString>, upper: Option<&Path>) -> Result<Stack, LayerError> {
    let lowers = lower.map(|l| super::options::split_lowers(l)).unwrap_or_default();
    Stack::open(&lowers, upper)
}

/// `stack` over the image `--image` names, if any (its catalogs made first where missing).
fn with_image(stack: Stack, a: &ImageArgs) -> Result<Stack, LayerError> {
    let Some(reference) = &a.image else {
        return Ok(stack);
    };
    let cache = a.cache.clone().unwrap_or_else(unionfs::config::default_cache_dir);
    let registry = unionfs::registry::Options {
        tls_verify: a.tls_verify.unwrap_or(true),
        cert_dir: a.cert_dir.clone(),
        fetch_timeout: a.fetch_timeout,
    };
    let (image, layers) = super::image::open(reference, &cache, &registry, unionfs::config::DEFAULT_CACHE_SIZE)?;
    stack.with_image(image, layers)
}

/// The whole stack `a` names.
fn open_stack(a: &StackArgs) -> Result<Stack, LayerError> {
    with_image(open_dirs(a.lower.as_ref(), Some(&a.upper))?, &a.image)
}

/// Prints a tool's error and gives its exit status.
fn fail(e: LayerError) -> ExitCode {
    eprintln!("unionfs: {e}");
    match e {
        LayerError::Interrupted => ExitCode::from(130),
        _ => ExitCode::from(2),
    }
}

fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unionfs: JSON output: {e}");
            ExitCode::from(1)
        }
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

pub fn diff(a: DiffArgs) -> ExitCode {
    let stack = match open_stack(&a.stack).and_then(|s| Ok(s.with_workdir(workdir_of(a.workdir, &a.stack.upper)?))) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let _claim = match claim(Some(&a.stack.upper), stack.workdir.as_deref(), Use::Read) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let p = Progress::new("diff", false);
    let r = layers::diff::diff(&stack, &p);
    p.done();
    let changes = match r {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if a.json {
        let v: Vec<serde_json::Value> = changes
            .iter()
            .map(|(path, c)| serde_json::json!({"kind": c, "path": lossy(path)}))
            .collect();
        return print_json(&v);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (path, c) in &changes {
        let mut line = vec![c.letter() as u8, b' '];
        line.extend_from_slice(path);
        line.push(b'\n');
        if out.write_all(&line).is_err() {
            return ExitCode::from(1);
        }
    }
    if out.flush().is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

pub fn import(a: ImportArgs) -> ExitCode {
    let _claim = match claim(Some(&a.dir), None, Use::Write) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let p = Progress::new("import", true);
    let r = layers::import::import(&a.file, &a.dir, &p);
    p.done();
    let s = match r {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if a.json {
        return print_json(&s);
    }
    println!(
        "{}: {} entries, {} whiteouts, {} opaque directories",
        a.dir.display(),
        s.entries,
        s.whiteouts,
        s.opaque_dirs
    );
    ExitCode::SUCCESS
}

pub fn size(a: SizeArgs) -> ExitCode {
    let stack = match open_stack(&a.stack) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let _claim = match claim(Some(&a.stack.upper), None, Use::Read) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let p = Progress::new("size", false);
    let r = layers::size::usage(&stack, &p);
    p.done();
    let u = match r {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    if a.json {
        return print_json(&serde_json::json!({
            "upper_bytes": u.upper_bytes,
            "virtual_bytes": u.virtual_bytes,
            "size": human_size(u.upper_bytes),
            "virtual": human_size(u.virtual_bytes),
        }));
    }
    println!(
        "{} (virtual {})",
        human_size(u.upper_bytes),
        human_size(u.virtual_bytes)
    );
    ExitCode::SUCCESS
}

pub fn check(a: CheckArgs) -> ExitCode {
    let stack = match open_stack(&a.stack) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let workdir = match workdir_of(a.workdir, &a.stack.upper) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let how = if a.repair { Use::Write } else { Use::Read };
    let _claim = match claim(Some(&a.stack.upper), workdir.as_deref(), how) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let opts = layers::check::CheckOptions {
        workdir,
        repair: a.repair,
    };
    let p = Progress::new("check", false);
    let r = layers::check::check(&stack, &opts, &p);
    p.done();
    let report = match r {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let code = if report.remaining() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if a.json {
        print_json(&report);
        return code;
    }
    for pr in &report.problems {
        let tag = if pr.repaired { " (repaired)" } else { "" };
        println!("{}: {}{tag}", pr.path.display(), pr.problem);
    }
    if report.problems.is_empty() {
        eprintln!("unionfs: check: no problems; upper format: {}", report.format);
    } else {
        eprintln!(
            "unionfs: check: {} problem(s), {} repaired; upper format: {}",
            report.problems.len(),
            report.problems.len() - report.remaining(),
            report.format
        );
    }
    code
}
