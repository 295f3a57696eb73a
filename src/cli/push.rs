//! `unionfs push oci:DIR[:TAG] docker://HOST/REPO[:TAG]`: parses, shows a progress line on a
//! terminal, prints the manifest digest (the work is in `unionfs::registry::push`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use unionfs::layers::human_size;
use unionfs::registry::push::{self, Report};

#[derive(clap::Args)]
pub struct PushArgs {
    /// The image to push: a tag of an OCI layout.
    #[arg(value_name = "oci:DIR[:TAG]")]
    source: String,
    /// Where to: the registry, repository and tag (latest if none).
    #[arg(value_name = "docker://HOST[:PORT]/REPO[:TAG]")]
    dest: String,
    /// `false`: reach the registry without verifying its certificate, or over plain HTTP.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, default_value_t = true)]
    tls_verify: bool,
    /// Extra CA certificates (*.crt, *.pem) for the registry.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<std::path::PathBuf>,
    /// A repository of the same registry that may have some of the blobs: they are mounted
    /// from it instead of uploaded (repeatable).
    #[arg(long, value_name = "REPO")]
    mount_from: Vec<String>,
}

/// A progress line on stderr when it is a terminal.
struct Line(Option<ProgressBar>);

impl Report for Line {
    // Several blobs go at once: the line names the last one started and counts all bytes.
    fn blob(&self, n: usize, count: usize, digest: &str, size: u64) {
        if let Some(b) = &self.0 {
            let short = digest.get(..19).unwrap_or(digest);
            b.set_prefix(format!("blob {n}/{count} {short} ({})", human_size(size)));
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
            b.set_message(format!("{} sent", human_size(b.position())));
        }
    }
}

pub fn run(a: PushArgs) -> ExitCode {
    let opts = unionfs::registry::Options {
        tls_verify: a.tls_verify,
        cert_dir: a.cert_dir,
        ..Default::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} pushing {prefix}: {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let line = Line(bar);
    let r = push::push(&a.source, &a.dest, &opts, &a.mount_from, &line);
    if let Some(b) = &line.0 {
        b.finish_and_clear();
    }
    match r {
        Ok(p) => {
            println!("{}", p.manifest_digest);
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "{} blobs uploaded ({}), {} mounted, {} already there",
                    p.uploaded,
                    human_size(p.bytes),
                    p.mounted,
                    p.present
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unionfs: push: {e}");
            ExitCode::from(2)
        }
    }
}
