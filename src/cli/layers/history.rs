//! `unionfs layers`: one row per layer, top first (`docker history`); with `--image`, the
//! image's layers too, with what its config says made each one.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use unionfs::layers::history::LayerRow;
use unionfs::layers::{self, Use, human_size};

use super::{ImageArgs, Progress, claim, fail, open_dirs, print_json, with_image};

#[derive(clap::Args)]
pub struct LayersArgs {
    /// Lower layers, top first, separated by ':'.
    #[arg(long, value_name = "DIR:DIR:...")]
    lower: Option<OsString>,
    /// The upper layer, if any.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    #[command(flatten)]
    image: ImageArgs,
    /// Print a JSON array, one object per layer.
    #[arg(long)]
    json: bool,
}

pub fn layers(a: LayersArgs) -> ExitCode {
    let stack = match open_dirs(a.lower.as_ref(), a.upper.as_deref()).and_then(|s| with_image(s, &a.image)) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let _claim = match claim(a.upper.as_deref(), None, Use::Read) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let p = Progress::new("layers", false);
    let r = layers::history::layers(&stack, &p);
    p.done();
    let rows = match r {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if a.json {
        return print_json(&rows);
    }
    if stack.image.is_some() {
        print_with_image(&rows);
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<9} {:>9} {:>8} {:>12} {:>9} {:>6}  PATH",
        "LAYER", "ENTRIES", "SIZE", "BYTES", "WHITEOUTS", "OPAQUE"
    );
    for r in rows {
        let f = r.figures;
        println!(
            "{:<9} {:>9} {:>8} {:>12} {:>9} {:>6}  {}",
            r.role,
            f.entries,
            human_size(f.bytes),
            f.bytes,
            f.whiteouts,
            f.opaque_dirs,
            r.path.display()
        );
    }
    ExitCode::SUCCESS
}

/// The table with the image's columns: the blob's size, when the layer was made, its digest
/// (short), and what made it (for a directory: its path).
fn print_with_image(rows: &[LayerRow]) {
    println!(
        "{:<9} {:>9} {:>8} {:>12} {:>9} {:>6} {:>8}  {:<30}  {:<19}  CREATED BY (or PATH)",
        "LAYER", "ENTRIES", "SIZE", "BYTES", "WHITEOUTS", "OPAQUE", "BLOB", "CREATED", "DIGEST"
    );
    for r in rows {
        let f = r.figures;
        let (blob, created, digest, what) = match &r.image {
            Some(i) => (
                human_size(i.blob_bytes),
                i.created.clone().unwrap_or_else(|| "-".into()),
                i.digest.get(..19).unwrap_or(&i.digest).to_string(),
                i.created_by.clone().unwrap_or_default().replace(['\n', '\r'], " "),
            ),
            None => ("-".into(), "-".into(), "-".into(), r.path.display().to_string()),
        };
        println!(
            "{:<9} {:>9} {:>8} {:>12} {:>9} {:>6} {:>8}  {:<30}  {:<19}  {}",
            r.role,
            f.entries,
            human_size(f.bytes),
            f.bytes,
            f.whiteouts,
            f.opaque_dirs,
            blob,
            created,
            digest,
            what
        );
    }
}
