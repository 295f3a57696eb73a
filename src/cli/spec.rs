//! A mount request, from either command-line form, built only through the option table
//! (`options.rs`), and its one conversion and validation into what the library mounts with.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use fuser::MountOption;
use unionfs::MountConfig;
use unionfs::fuse::session::SessionOptions;

use super::options::{self, table};

/// Everything a mount request says. Rows of the option table write here; nothing else does.
#[derive(Debug, Clone)]
pub(crate) struct MountSpec {
    /// The union's configuration, not yet validated (see [`MountSpec::prepare`]).
    pub config: MountConfig,
    /// The FUSE session's options, starting from the current user's defaults.
    pub session: SessionOptions,
    /// `ro`: the upper is read as the top layer (applied by `prepare`).
    pub read_only: bool,
    /// `--ttl`/`timeout=`; without it `--revalidate` shortens the kernel's cache times.
    pub ttl: Option<Duration>,
    /// `fsname=`, else the mount.fuse3 form's source, else the session's default.
    pub fsname: Option<String>,
    pub foreground: bool,
    pub debug: bool,
    pub log: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    /// One line each, printed as `unionfs: warning: ...`.
    pub warnings: Vec<String>,
    /// `--image`: an image whose layers lie below the lowers.
    pub image: Option<String>,
    /// `--cache`, `--cache-size`: where and how much of the image's data is kept.
    pub cache_dir: Option<PathBuf>,
    pub cache_size: Option<u64>,
    /// `--tls-verify`, `--cert-dir`: how to reach a `docker://` image's registry.
    pub tls_verify: Option<bool>,
    pub cert_dir: Option<PathBuf>,
    /// `--fetch-timeout`: how long a lazy read waits for the registry.
    pub fetch_timeout: Option<u64>,
    /// `--prefetch`, `--record`: prefetch lists of an image mount.
    pub prefetch: Option<PathBuf>,
    pub record: Option<PathBuf>,
}

/// What the library mounts with: the checked configuration (canonical paths), the session's
/// options and the mountpoint.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub config: MountConfig,
    pub session: SessionOptions,
    pub mountpoint: PathBuf,
}

impl MountSpec {
    pub fn new() -> MountSpec {
        MountSpec {
            config: MountConfig::new(Vec::new(), None),
            session: SessionOptions::for_current_user(),
            read_only: false,
            ttl: None,
            fsname: None,
            foreground: false,
            debug: false,
            log: None,
            mountpoint: None,
            warnings: Vec::new(),
            image: None,
            cache_dir: None,
            cache_size: None,
            tls_verify: None,
            cert_dir: None,
            fetch_timeout: None,
            prefetch: None,
            record: None,
        }
    }

    /// Adds the kernel mount option `on` (if any) after dropping `off` and any earlier `on`:
    /// the last of a conflicting pair wins, as in mount(8).
    pub fn extra(&mut self, on: Option<MountOption>, off: &[MountOption]) {
        self.session
            .extra
            .retain(|o| !off.contains(o) && Some(o) != on.as_ref());
        self.session.extra.extend(on);
    }

    /// The one conversion and validation: what the options say, checked against the disk
    /// (layers exist and lie apart, the workdir shares the upper's filesystem, the mountpoint
    /// is free). Changes nothing on disk.
    pub fn prepare(&self) -> Result<Prepared, String> {
        let mountpoint = self.mountpoint.clone().ok_or("no mountpoint given")?;
        let mut config = self.config.clone();
        if self.read_only {
            // A read-only view of the whole union: the upper is read as the top layer.
            config.lowers.splice(0..0, config.upper.take());
            config.workdir = None;
        }
        config.image = self.image_source()?;
        let mut session = self.session.clone();
        if let Some(ttl) = self.ttl {
            session.adapter.ttl = ttl;
        } else if config.revalidate {
            session.adapter.ttl = Duration::from_secs(1);
        }
        if let Some(name) = &self.fsname {
            session.fsname = name.clone();
        }
        let config = config
            .validate(Some(&mountpoint))
            .map_err(|e| super::setup_message(&e))?;
        Ok(Prepared {
            config,
            session,
            mountpoint,
        })
    }
}

impl MountSpec {
    /// The image the options name, with its cache.
    fn image_source(&self) -> Result<Option<unionfs::config::ImageSource>, String> {
        let registry_opts = self.tls_verify.is_some() || self.cert_dir.is_some() || self.fetch_timeout.is_some();
        let Some(reference) = &self.image else {
            let image_opts = self.cache_dir.is_some()
                || self.cache_size.is_some()
                || self.prefetch.is_some()
                || self.record.is_some();
            if image_opts || registry_opts {
                return Err(
                    "--cache, --cache-size, --tls-verify, --cert-dir, --fetch-timeout, --prefetch and \
                     --record are for --image"
                        .into(),
                );
            }
            return Ok(None);
        };
        if registry_opts && !unionfs::registry::is_registry(reference) {
            return Err(
                "--tls-verify, --cert-dir and --fetch-timeout are for a registry image (--image docker://...)".into(),
            );
        }
        let mut src = unionfs::config::ImageSource::new(reference);
        if let Some(d) = &self.cache_dir {
            src.cache_dir = d.clone();
        }
        if let Some(n) = self.cache_size {
            src.cache_size = n;
        }
        src.registry = unionfs::registry::Options {
            tls_verify: self.tls_verify.unwrap_or(true),
            cert_dir: self.cert_dir.clone(),
            fetch_timeout: self.fetch_timeout.unwrap_or(unionfs::registry::DEFAULT_FETCH_TIMEOUT),
        };
        src.prefetch = self.prefetch.clone();
        src.record = self.record.clone();
        Ok(Some(src))
    }
}

/// The arguments of `unionfs mount`, as clap matched them; read through the option table.
#[derive(Debug, Clone)]
pub(crate) struct MountArgs(ArgMatches);

impl clap::FromArgMatches for MountArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(MountArgs(m.clone()))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = m.clone();
        Ok(())
    }
}

/// clap's id of a row's long flag: its name (`--no-acl` is `no-acl`).
fn flag_id(long: &'static str) -> &'static str {
    long.trim_start_matches('-')
}

impl clap::Args for MountArgs {
    /// The flags are the table's; `-o` and the mountpoint are the only others.
    fn augment_args(cmd: Command) -> Command {
        let flags = table().filter_map(|r| r.flag.as_ref()).map(|f| {
            let mut a = Arg::new(flag_id(f.long)).long(flag_id(f.long)).help(f.help);
            if let Some(c) = f.short {
                a = a.short(c);
            }
            match f.value_name {
                Some(v) => a
                    .value_name(v)
                    .value_parser(clap::value_parser!(OsString))
                    .action(ArgAction::Set),
                None => a.action(ArgAction::SetTrue),
            }
        });
        cmd.args(flags)
            .arg(
                Arg::new("options")
                    .short('o')
                    .value_name("OPTIONS")
                    .value_parser(clap::value_parser!(OsString))
                    .action(ArgAction::Append)
                    .help(
                        "Mount options, comma separated: the fuse-overlayfs ones (lowerdir=.., \
                         upperdir=.., workdir=.., uidmapping=.., ...), ro, nosuid, nodev, noexec, \
                         sync, dirsync, lazytime, noatime, relatime (the default), strictatime, \
                         fsname=.., and a `-o NAME` for each flag here; the README's \"Mount \
                         options\" lists them all.",
                    ),
            )
            .arg(
                Arg::new("mountpoint")
                    .value_name("MOUNTPOINT")
                    .value_parser(clap::value_parser!(PathBuf))
                    .required(true)
                    .help("Where to mount: an existing directory, not inside a layer."),
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl MountArgs {
    /// The request: `-o` items first, then the flags, which win.
    pub fn into_spec(self) -> Result<MountSpec, String> {
        let m = &self.0;
        let mut spec = MountSpec::new();
        // Our own layer tools read what `unionfs mount` writes, metacopy files included.
        spec.config.metacopy = true;
        for o in m.get_many::<OsString>("options").into_iter().flatten() {
            options::apply_options(&mut spec, o)?;
        }
        for row in table() {
            let Some(f) = &row.flag else { continue };
            let id = flag_id(f.long);
            if f.value_name.is_some() {
                if let Some(v) = m.get_one::<OsString>(id) {
                    options::apply_item(&mut spec, row, &options::flag_item(row, Some(v.as_bytes())))?;
                }
            } else if m.get_flag(id) {
                options::apply_item(&mut spec, row, &options::flag_item(row, None))?;
            }
        }
        spec.mountpoint = m.get_one::<PathBuf>("mountpoint").cloned();
        Ok(spec)
    }
}
