//! Kernel overlayfs's indirect objects, as the tools follow them (formats in
//! `format::redirect` and `format::metacopy`): a directory whose lower part a redirect moved
//! elsewhere, and a metacopy file whose data is a lower file.
//!
//! Resolution is kernel overlayfs's: a relative redirect names a sibling in the parent's lower
//! directories, an absolute one a path from the roots of the layers (for a redirect found in
//! a lower, of the layers below it). Every step is a lookup of one name in the image
//! (`lowers.rs`), never a path handed to the kernel, so nothing outside the layers is reached.
//! Beyond what the kernel checks, a redirect through a symlink, or onto the root of one of the
//! layers (layers that overlap: the kernel's ELOOP trap), is refused as hostile.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use rustix::fs::{FileType, OFlags, Stat};

use super::lowers::{Found, ImageDir, LowerDir};
use super::place::Place;
use super::stack::{Lower, Stack};
use super::{LayerError, Result, join};
use crate::format::metacopy;
use crate::format::redirect::{self, Redirect};
use crate::sys;

/// How to read one xattr of an object (its value; None: it has none).
pub(crate) type GetXattr<'a> = dyn Fn(&str) -> io::Result<Option<Vec<u8>>> + 'a;

/// A redirect an object carries: where it points and its raw value (for messages).
#[derive(Debug, Clone)]
pub(crate) struct RedirectAt {
    pub to: Redirect,
    pub value: Vec<u8>,
}

/// Where a redirect leads.
pub(crate) enum Resolved {
    /// The lower directories merged there.
    Dir(ImageDir),
    /// No lower directory there (why, for `check`).
    Nothing(String),
    /// A value the layers must not follow (why).
    Hostile(String),
}

/// The error for a hostile redirect `value` on the object at `at`.
pub(crate) fn hostile(at: &Path, value: &[u8], why: &str) -> LayerError {
    LayerError::invalid(
        at,
        format!("kernel overlayfs redirect {} refused: {why}", redirect::shown(value)),
    )
}

/// The raw redirect value of an object, if any.
pub(crate) fn raw_redirect(get: &GetXattr<'_>, at: &Path) -> Result<Option<Vec<u8>>> {
    for x in redirect::XATTRS {
        if let Some(v) = get(x).map_err(|e| LayerError::io(at, e))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The redirect an object carries; a value kernel overlayfs refuses is an error naming `at`.
pub(crate) fn redirect_at(get: &GetXattr<'_>, at: &Path) -> Result<Option<RedirectAt>> {
    let Some(value) = raw_redirect(get, at)? else {
        return Ok(None);
    };
    match redirect::parse(&value) {
        Ok(to) => Ok(Some(RedirectAt { to, value })),
        Err(e) => Err(hostile(at, &value, &e.to_string())),
    }
}

/// Whether an object is a metacopy file (any value of the xattr counts).
pub(crate) fn is_metacopy(get: &GetXattr<'_>, at: &Path) -> Result<bool> {
    for x in metacopy::XATTRS {
        if get(x).map_err(|e| LayerError::io(at, e))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How to read the xattrs of the entry `name` of the upper directory `dir`.
pub(crate) fn upper_xattr<'a>(
    dir: std::os::fd::BorrowedFd<'a>,
    name: &'a OsStr,
) -> impl Fn(&str) -> io::Result<Option<Vec<u8>>> + 'a {
    move |x| Ok(sys::get_xattr(dir, name, x)?)
}

fn is_symlink(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Symlink
}

fn shown_path(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

/// What a redirect whose last step looked up `rel` (and found `found`) leads to.
pub(crate) fn target_dir(stack: &Stack, found: Option<Found>, rel: &[u8]) -> Result<Resolved> {
    let Some(f) = found else {
        return Ok(Resolved::Nothing(format!("no lower has {}", shown_path(rel))));
    };
    if is_symlink(&f.st) {
        return Ok(Resolved::Hostile(format!(
            "{} is a symlink in a lower, which a redirect never follows",
            shown_path(rel)
        )));
    }
    let Some(dir) = f.dir else {
        return Ok(Resolved::Nothing(format!(
            "{} is not a directory in the lowers",
            shown_path(rel)
        )));
    };
    if let Some(root) = layer_root_among(stack, &dir)? {
        return Ok(Resolved::Hostile(format!(
            "{} is the root of the layer {} (the layers overlap: a loop)",
            shown_path(rel),
            root.display()
        )));
    }
    Ok(Resolved::Dir(dir))
}

/// The layer (or workdir) whose root one of the directories of `dir` is, if any.
fn layer_root_among<'s>(stack: &'s Stack, dir: &ImageDir) -> Result<Option<&'s Path>> {
    let mut roots: Vec<(u64, u64, &Path)> = Vec::new();
    if let Some(u) = &stack.upper {
        roots.push((u.dev, u.ino, &u.path));
    }
    for l in &stack.lowers {
        if let Lower::Dir(d) = l {
            roots.push((d.dev, d.ino, &d.path));
        }
    }
    if let Some(w) = &stack.workdir {
        if let Ok(st) = rustix::fs::stat(w) {
            roots.push((st.st_dev, st.st_ino, w));
        }
    }
    for d in &dir.dirs {
        let Place::Fs(fd) = &d.place else { continue };
        let st = rustix::fs::fstat(fd).map_err(|e| LayerError::io(stack.lowers[d.layer].path(), e))?;
        if let Some(&(_, _, p)) = roots.iter().find(|r| (r.0, r.1) == (st.st_dev, st.st_ino)) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The lower directories at the absolute path `comps` of the image the lowers from `first`
/// on make (where an absolute redirect of lower `first - 1`, or of the upper, points).
pub(crate) fn dir_at_from(stack: &Stack, comps: &[OsString], first: usize) -> Result<Resolved> {
    let mut dir = stack.image_root_from(first)?;
    let mut rel: Vec<u8> = Vec::new();
    for c in comps {
        let f = dir.lookup(stack, &rel, c, true)?;
        rel = join(&rel, c);
        match target_dir(stack, f, &rel)? {
            Resolved::Dir(d) => dir = d,
            other => return Ok(other),
        }
    }
    // Not below the directory one level up a walk's path: a walk must not reopen that as `..`.
    for d in &mut dir.dirs {
        d.jumped = true;
    }
    Ok(Resolved::Dir(dir))
}

/// Where the redirect `r` of an upper directory points: `parent` is the lower part of its
/// parent (the upper directory `rel`).
pub(crate) fn upper_target(stack: &Stack, parent: Option<&ImageDir>, rel: &[u8], r: &Redirect) -> Result<Resolved> {
    match r {
        Redirect::Relative(n) => match parent {
            None => Ok(Resolved::Nothing(format!(
                "{} has no lower directory to look {} up in",
                shown_path(rel),
                n.to_string_lossy()
            ))),
            Some(p) => {
                let f = p.lookup(stack, rel, n, true)?;
                target_dir(stack, f, &join(rel, n))
            }
        },
        Redirect::Absolute(c) => dir_at_from(stack, c, 0),
    }
}

/// [`upper_target`] for a tool that shows the view: a hostile value is an error naming the
/// upper directory `at`; nothing there means the directory shows its upper content only.
pub(crate) fn upper_target_dir(
    stack: &Stack,
    parent: Option<&ImageDir>,
    rel: &[u8],
    r: &RedirectAt,
    at: &Path,
) -> Result<Option<ImageDir>> {
    match upper_target(stack, parent, rel, &r.to)? {
        Resolved::Dir(d) => Ok(Some(d)),
        Resolved::Nothing(_) => Ok(None),
        Resolved::Hostile(why) => Err(hostile(at, &r.value, &why)),
    }
}

/// Where the entry `name` of the lower directory `d` is, for messages: its view path is not
/// its path in the layer when a redirect led there.
fn lower_path(d: &LowerDir, name: &OsStr) -> Option<std::path::PathBuf> {
    let fd = d.place.fd()?;
    let dir = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(dir.join(name))
}

/// Where a metacopy file's data is.
pub(crate) enum Data {
    /// The lower file, open for reading, and its stat.
    File(File, Stat),
    /// Nowhere usable (why).
    Missing(String),
}

/// A name to look a metacopy file's data up by: its directory (None: the caller's lower part
/// of the file's own directory), that directory's path and the name.
type DataName = (Option<ImageDir>, Vec<u8>, OsString);

/// Where an absolute data redirect `c` (found on `at`) points, in the lowers from `first` on.
fn absolute_data_name(
    stack: &Stack,
    c: &[OsString],
    first: usize,
    at: &Path,
    value: &[u8],
) -> Result<std::result::Result<DataName, String>> {
    let Some((last, parent)) = c.split_last() else {
        return Err(hostile(at, value, "empty"));
    };
    let parent_dir = if parent.is_empty() {
        Resolved::Dir(stack.image_root_from(first)?)
    } else {
        dir_at_from(stack, parent, first)?
    };
    match parent_dir {
        Resolved::Dir(d) => Ok(Ok((
            Some(d),
            parent.iter().fold(Vec::new(), |p, c| join(&p, c)),
            last.clone(),
        ))),
        Resolved::Nothing(why) => Ok(Err(why)),
        Resolved::Hostile(why) => Err(hostile(at, value, &why)),
    }
}

/// The data of the metacopy file `name` of the view directory `rel`, whose lower part is `src`,
/// carrying the redirect `r` (if any); `at` names it in errors. A lower metacopy file found on
/// the way passes on to the layers below it, as in the kernel.
pub(crate) fn metacopy_data(
    stack: &Stack,
    src: Option<&ImageDir>,
    rel: &[u8],
    name: &OsStr,
    r: Option<&RedirectAt>,
    at: &Path,
) -> Result<Data> {
    let (mut owned, mut prel, mut name) = match r {
        Some(RedirectAt {
            to: Redirect::Absolute(c),
            value,
        }) => match absolute_data_name(stack, c, 0, at, value)? {
            Ok(n) => n,
            Err(why) => return Ok(Data::Missing(why)),
        },
        Some(RedirectAt {
            to: Redirect::Relative(n),
            ..
        }) => (None, rel.to_vec(), n.clone()),
        None => (None, rel.to_vec(), name.to_os_string()),
    };
    let mut start = 0;
    // Each pass goes down at least one layer.
    for _ in 0..=stack.lowers.len() {
        let lower_rel = join(&prel, &name);
        let missing = || Ok(Data::Missing(format!("no lower has {}", shown_path(&lower_rel))));
        let Some(dir) = owned.as_ref().or(src) else {
            return missing();
        };
        let Some(f) = dir.lookup_from(stack, &prel, &name, false, start)? else {
            return missing();
        };
        let Some(d) = dir.dirs.get(f.pos) else {
            return missing();
        };
        let lat = lower_path(d, &name).unwrap_or_else(|| stack.lowers[d.layer].at(&lower_rel));
        if FileType::from_raw_mode(f.st.st_mode) != FileType::RegularFile {
            return Ok(Data::Missing(format!("{} is not a regular file", lat.display())));
        }
        let get = |x: &str| d.place.get_xattr(&name, x);
        if d.layer + 1 < stack.lowers.len() && is_metacopy(&get, &lat)? {
            match redirect_at(&get, &lat)? {
                Some(RedirectAt {
                    to: Redirect::Absolute(c),
                    value,
                }) => match absolute_data_name(stack, &c, d.layer + 1, &lat, &value)? {
                    Ok(n) => (owned, prel, name, start) = (n.0, n.1, n.2, 0),
                    Err(why) => return Ok(Data::Missing(why)),
                },
                _ => start = f.pos + 1,
            }
            continue;
        }
        let Some(fd) = d.place.fd() else {
            return Err(LayerError::invalid(
                &lat,
                "metacopy data in an OCI image layer cannot be read offline",
            ));
        };
        let file =
            sys::open_at(fd.as_fd(), &name, OFlags::RDONLY | OFlags::NOATIME).map_err(|e| LayerError::io(&lat, e))?;
        return Ok(Data::File(File::from(file), f.st));
    }
    Err(LayerError::invalid(
        at,
        "metacopy chain longer than the layers (a loop)",
    ))
}
