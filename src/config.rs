//! Mount configuration: which layers, where the workdir is, and the on-disk style to write.
//! `validate` checks everything that can be checked before anything is touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SetupError;

/// How whiteouts and opaque markers are written in the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WhiteoutStyle {
    /// Overlayfs format: char device 0/0 and `overlay.opaque` xattrs (falls back to OCI files
    /// where the upper refuses mknod).
    #[default]
    Overlay,
    /// OCI layer format: `.wh.NAME` files and `.wh..wh..opq`.
    Oci,
}

/// Kernel overlayfs's `redirect_dir`: whether renaming a directory that merges lower
/// directories records where its lower content is (an O(1) rename) and whether such records
/// are followed (see docs/semantics.md, "Directory renames").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedirectDir {
    /// Write redirects on rename, follow them on lookup.
    On,
    /// Follow redirects, never write one: a rename copies the tree (what Podman, which reads
    /// uppers itself and knows nothing of redirects, can use). The serde default: a config
    /// that does not say writes nothing new.
    #[default]
    Follow,
    /// Neither: a redirected upper directory shows its own entries only.
    NoFollow,
    /// The kernel's `off`: `follow` (its default `redirect_always_follow`).
    Off,
}

impl RedirectDir {
    /// Whether a rename writes redirects.
    pub fn writes(self) -> bool {
        self == RedirectDir::On
    }

    /// Whether lookups follow redirects.
    pub fn follows(self) -> bool {
        self != RedirectDir::NoFollow
    }

    /// The option's value (`on`, `off`, `follow`, `nofollow`).
    pub fn parse(v: &[u8]) -> Option<RedirectDir> {
        Some(match v {
            b"on" => RedirectDir::On,
            b"off" => RedirectDir::Off,
            b"follow" => RedirectDir::Follow,
            b"nofollow" => RedirectDir::NoFollow,
            _ => return None,
        })
    }
}

/// When an access (reading a file, listing a directory) updates its access time, as the
/// kernel's mount options of that name say. Only the upper's objects are ever touched: the
/// lower layers keep their times whatever the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AtimeMode {
    /// `relatime`: when the atime is not newer than the mtime or ctime, or a day old.
    #[default]
    Relatime,
    /// `strictatime`: every access.
    Strict,
    /// `noatime`: never.
    NoAtime,
}

/// The atime mount options: [`AtimeMode`] and `nodiratime` (never for directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AtimePolicy {
    pub mode: AtimeMode,
    pub nodiratime: bool,
}

impl AtimePolicy {
    /// Whether an access to an object (a directory: `dir`) with these times updates its atime.
    /// Times are (seconds, nanoseconds); `now` in seconds.
    pub fn updates(&self, dir: bool, atime: (i64, i64), mtime: (i64, i64), ctime: (i64, i64), now: i64) -> bool {
        match self.mode {
            AtimeMode::NoAtime => false,
            _ if dir && self.nodiratime => false,
            AtimeMode::Strict => true,
            AtimeMode::Relatime => atime <= mtime || atime <= ctime || now - atime.0 >= 24 * 3600,
        }
    }
}

/// The most lower layers one union stacks. Layer numbers are kept in 16 bits in the per-entry
/// structures (memory per cached entry); kernel overlayfs stops at 500.
pub const MAX_LOWERS: usize = 4096;

/// Everything the union needs to open its layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountConfig {
    /// Read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; `None` gives a read-only union.
    pub upper: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem. Defaults to a sibling of the upper.
    pub workdir: Option<PathBuf>,
    pub whiteouts: WhiteoutStyle,
    /// Skip fsync of copied-up data (faster, not crash-safe).
    pub volatile: bool,
    /// Lower layers may change while mounted: re-read a directory's lower entries when a lower
    /// directory changed (see the README's caching section).
    pub revalidate: bool,
    /// Enforce POSIX ACLs (where the upper's filesystem stores them); `noacl` turns them off.
    #[serde(default = "yes")]
    pub acl: bool,
    /// How many names the directory indexes of the mount may hold in memory in total (indexes
    /// beyond are dropped, least recently used first, and rebuilt from the layers when needed).
    #[serde(default = "default_index_cache")]
    pub index_cache: usize,
    /// Owner mappings between the layers and the view (see `idmap.rs`).
    #[serde(default)]
    pub idmap: crate::idmap::IdMap,
    /// When accesses update access times (`noatime`, `relatime`, `strictatime`, `nodiratime`).
    #[serde(default)]
    pub atime: AtimePolicy,
    /// An OCI image whose layers lie below `lowers`, read in place from its blobs.
    #[serde(default)]
    pub image: Option<ImageSource>,
    /// Directory renames by redirect (`redirect_dir=`); `new` gives `on`.
    #[serde(default)]
    pub redirect_dir: RedirectDir,
    /// A metadata change of a lower regular file copies up metadata only (see
    /// `union/metacopy.rs`); its data stays in the lower until the first write.
    #[serde(default)]
    pub metacopy: bool,
}

/// An image as lower layers (see `crate::image`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSource {
    /// `oci:DIR[:TAG]`, as given.
    pub reference: String,
    /// Where layer catalogs and the content cache live.
    pub cache_dir: PathBuf,
    /// How many bytes of file contents the content cache may hold.
    pub cache_size: u64,
    /// How to reach the registry of a `docker://` image.
    #[serde(default)]
    pub registry: crate::registry::Options,
    /// `--prefetch FILE`: paths whose data a mount fetches first, in the background.
    #[serde(default)]
    pub prefetch: Option<PathBuf>,
    /// `--record FILE`: where a mount lists the image files opened, in order (a prefetch list).
    #[serde(default)]
    pub record: Option<PathBuf>,
}

/// 4 GiB of file contents decompressed from layers.
pub const DEFAULT_CACHE_SIZE: u64 = 4 << 30;

impl ImageSource {
    /// `reference` with the default cache: `$XDG_CACHE_HOME/unionfs`, else `~/.cache/unionfs`.
    pub fn new(reference: &str) -> ImageSource {
        ImageSource {
            reference: reference.to_string(),
            cache_dir: default_cache_dir(),
            cache_size: DEFAULT_CACHE_SIZE,
            registry: crate::registry::Options::default(),
            prefetch: None,
            record: None,
        }
    }

    /// The same image with absolute paths (the layout `dir` found at `tag`, if a layout, and
    /// the cache): the daemon serves from `/` once in the background, where relative paths mean
    /// other things.
    fn absolute(&self, layout: Option<(&Path, Option<&str>)>) -> Result<ImageSource, SetupError> {
        let abs = |role: &'static str, p: &Path| {
            std::path::absolute(p).map_err(|source| SetupError::Io {
                role,
                path: p.to_path_buf(),
                source,
            })
        };
        let reference = match layout {
            Some((dir, tag)) => {
                let dir = abs("image layout", dir)?;
                match tag {
                    Some(t) => format!("oci:{}:{t}", dir.display()),
                    None => format!("oci:{}", dir.display()),
                }
            }
            None => self.reference.clone(),
        };
        let cert_dir = self
            .registry
            .cert_dir
            .as_deref()
            .map(|d| abs("--cert-dir", d))
            .transpose()?;
        Ok(ImageSource {
            reference,
            cache_dir: abs("image cache", &self.cache_dir)?,
            cache_size: self.cache_size,
            registry: crate::registry::Options {
                cert_dir,
                ..self.registry.clone()
            },
            prefetch: self.prefetch.as_deref().map(|p| abs("--prefetch", p)).transpose()?,
            record: self.record.as_deref().map(|p| abs("--record", p)).transpose()?,
        })
    }
}

/// The cache directory shared by every mount of the user: `$XDG_CACHE_HOME/unionfs`, else
/// `$HOME/.cache/unionfs`, else `/var/cache/unionfs`.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("unionfs")
}

/// About 25 MiB of directory indexes.
pub const DEFAULT_INDEX_CACHE: usize = 250_000;

fn default_index_cache() -> usize {
    DEFAULT_INDEX_CACHE
}

fn yes() -> bool {
    true
}

impl MountConfig {
    /// A union of `lowers` (top first) under `upper`, with defaults for the rest.
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>) -> Self {
        MountConfig {
            lowers,
            upper,
            workdir: None,
            whiteouts: WhiteoutStyle::Overlay,
            volatile: false,
            revalidate: false,
            acl: true,
            index_cache: DEFAULT_INDEX_CACHE,
            idmap: crate::idmap::IdMap::default(),
            atime: AtimePolicy::default(),
            image: None,
            redirect_dir: RedirectDir::On,
            metacopy: false,
        }
    }

    /// The workdir actually used: the configured one, or `.unionfs-work.<upper name>` beside the upper.
    pub fn effective_workdir(&self) -> Option<PathBuf> {
        if let Some(w) = &self.workdir {
            return Some(w.clone());
        }
        Some(crate::format::workdir::default_for(self.upper.as_ref()?))
    }

    /// Checks the layers exist, are directories and do not contain each other, that the workdir
    /// shares the upper's filesystem and that `mountpoint` (if given) is not inside a layer and
    /// not already a mount. Changes nothing on disk. Returns the canonical paths.
    pub fn validate(&self, mountpoint: Option<&Path>) -> Result<MountConfig, SetupError> {
        if self.lowers.is_empty() && self.image.is_none() {
            return Err(SetupError::NoLower);
        }
        let image = match &self.image {
            // Only the reference's form is checked here: the registry is asked once, where the
            // image is opened (before the daemon starts, with a progress line).
            Some(img) if crate::registry::is_registry(&img.reference) => {
                crate::registry::reference::Reference::parse(&img.reference).map_err(SetupError::Invalid)?;
                Some(img.absolute(None)?)
            }
            Some(img) => {
                let (dir, tag) = crate::image::layout::parse_reference(&img.reference)
                    .map_err(|e| SetupError::Invalid(e.to_string()))?;
                crate::image::layout::open(&dir, tag.as_deref()).map_err(|e| SetupError::Invalid(e.to_string()))?;
                Some(img.absolute(Some((&dir, tag.as_deref())))?)
            }
            None => None,
        };
        if self.lowers.len() > MAX_LOWERS {
            return Err(SetupError::TooManyLayers {
                given: self.lowers.len(),
                max: MAX_LOWERS,
            });
        }
        let lowers = self
            .lowers
            .iter()
            .map(|l| canonical_dir("lower layer", l))
            .collect::<Result<Vec<_>, _>>()?;
        let upper = self.upper.as_ref().map(|u| canonical_dir("upper", u)).transpose()?;
        let mut roles: Vec<(&'static str, PathBuf)> = lowers.iter().map(|l| ("lower layer", l.clone())).collect();
        if let Some(u) = &upper {
            roles.push(("upper", u.clone()));
        }
        check_layers_apart(&roles, upper.as_deref())?;
        let workdir = match (&upper, self.effective_workdir()) {
            (Some(u), Some(w)) => Some(check_workdir(&w, u, &roles)?),
            _ => None,
        };
        if let Some(m) = mountpoint {
            let mc = canonical_dir("mountpoint", m)?;
            apart("mountpoint", &mc, &roles)?;
            if is_mount_point(&mc) {
                return Err(SetupError::AlreadyMounted { path: mc });
            }
        }
        Ok(MountConfig {
            lowers,
            upper,
            workdir,
            image,
            ..self.clone()
        })
    }
}

/// No layer may lie inside another, and the upper may not be a lower.
fn check_layers_apart(roles: &[(&'static str, PathBuf)], upper: Option<&Path>) -> Result<(), SetupError> {
    for (i, (ra, a)) in roles.iter().enumerate() {
        for (j, (rb, b)) in roles.iter().enumerate() {
            let same_upper = upper == Some(a.as_path()) && *rb != "upper";
            if i != j && a.starts_with(b) && (a != b || same_upper) {
                return Err(nested(ra, a, rb, b));
            }
        }
    }
    Ok(())
}

/// The canonical workdir `w` (which may not exist yet: its parent must), checked to lie apart
/// from every layer and on the upper's filesystem.
fn check_workdir(w: &Path, upper: &Path, roles: &[(&'static str, PathBuf)]) -> Result<PathBuf, SetupError> {
    let wc = match std::fs::canonicalize(w) {
        Ok(p) if !p.is_dir() => {
            return Err(SetupError::NotADirectory {
                role: "workdir",
                path: w.to_path_buf(),
            });
        }
        Ok(p) => p,
        Err(_) => {
            let parent = w
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            canonical_dir("workdir parent", parent)?.join(w.file_name().unwrap_or_default())
        }
    };
    apart("workdir", &wc, roles)?;
    if dev_of(wc.parent().unwrap_or(Path::new("/")), "workdir")? != dev_of(upper, "upper")? {
        return Err(SetupError::WorkdirOtherFs {
            work: wc,
            upper: upper.to_path_buf(),
        });
    }
    Ok(wc)
}

/// `path` (in `role`) neither contains nor lies inside any of `roles`.
fn apart(role: &'static str, path: &Path, roles: &[(&'static str, PathBuf)]) -> Result<(), SetupError> {
    match roles.iter().find(|(_, p)| path.starts_with(p) || p.starts_with(path)) {
        Some((r, p)) => Err(nested(role, path, r, p)),
        None => Ok(()),
    }
}

fn nested(inner_role: &'static str, inner: &Path, outer_role: &'static str, outer: &Path) -> SetupError {
    SetupError::Nested {
        inner_role,
        inner: inner.to_path_buf(),
        outer_role,
        outer: outer.to_path_buf(),
    }
}

fn canonical_dir(role: &'static str, p: &Path) -> Result<PathBuf, SetupError> {
    let c = std::fs::canonicalize(p).map_err(|source| SetupError::Io {
        role,
        path: p.to_path_buf(),
        source,
    })?;
    let md = std::fs::metadata(&c).map_err(|source| SetupError::Io {
        role,
        path: p.to_path_buf(),
        source,
    })?;
    if !md.is_dir() {
        return Err(SetupError::NotADirectory {
            role,
            path: p.to_path_buf(),
        });
    }
    Ok(c)
}

fn dev_of(p: &Path, role: &'static str) -> Result<u64, SetupError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.dev()).map_err(|source| SetupError::Io {
        role,
        path: p.to_path_buf(),
        source,
    })
}

/// Whether `p` (canonical) is listed as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(p: &Path) -> bool {
    crate::mountinfo::topmost_at(p).is_some()
}
