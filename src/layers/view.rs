//! The image a stack of lower layers makes, as the layer tools read it: what shows at a path,
//! and what a directory lists. The union core reads the same layers through its own indexes;
//! both follow `format::markers` (tests/format_shapes.rs drives both through one table).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::Result;
use super::lowers::ImageDir;
use super::stack::Stack;
use crate::attr::Kind;

/// The image directory at `path` (components separated by `/`), if the image has a
/// directory there.
fn dir_at(stack: &Stack, path: &[u8]) -> Result<Option<ImageDir>> {
    let mut dir = stack.image_root()?;
    let mut rel: Vec<u8> = Vec::new();
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let Some(found) = dir.lookup(stack, &rel, OsStr::from_bytes(c), true)? else {
            return Ok(None);
        };
        let Some(d) = found.dir else { return Ok(None) };
        rel = super::join(&rel, OsStr::from_bytes(c));
        dir = d;
    }
    Ok(Some(dir))
}

/// What the image shows at `path`: its kind, or nothing.
pub fn kind_at(stack: &Stack, path: &[u8]) -> Result<Option<Kind>> {
    let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    if name.is_empty() {
        return Ok(Some(Kind::Dir));
    }
    let Some(dir) = dir_at(stack, parent)? else {
        return Ok(None);
    };
    Ok(dir
        .lookup(stack, parent, OsStr::from_bytes(name), false)?
        .map(|f| Kind::from_mode(f.st.st_mode)))
}

/// The names the image lists in the directory at `path`, sorted; nothing if no directory shows
/// there.
pub fn names_at(stack: &Stack, path: &[u8]) -> Result<Option<Vec<OsString>>> {
    let Some(dir) = dir_at(stack, path)? else {
        return Ok(None);
    };
    Ok(Some(dir.list(stack, path)?.into_keys().collect()))
}
