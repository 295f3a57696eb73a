//! The one table of mount options: every `-o` name (in `unionfs mount -o`, the fuse-overlayfs
//! form and the mount.fuse3 form) and every long flag of `unionfs mount`, each row saying what
//! it sets in the [`MountSpec`] (the union's `MountConfig`, the FUSE session's options, or the
//! daemon's own switches) and which kind of option it is. The README's "Mount options" is this
//! table for users; `options/tests.rs` checks that every row parses.
//!
//! Option strings are bytes (paths need not be UTF-8); items are separated by commas, a comma
//! inside double quotes (SELinux `context="..."`) or escaped as `\,` does not separate, and empty
//! items (Podman leaves a trailing comma) are skipped. An item no row names is refused, so a
//! typo never mounts something other than what was asked for.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use super::spec::MountSpec;

/// What kind of option a row is; it decides what happens beyond the row's own action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// unionfs's own.
    Ours,
    /// fuse-overlayfs's, with fuse-overlayfs's meaning (Podman's `mount_program` passes them).
    FuseOverlayfs,
    /// fuse-overlayfs's, for something we do not have or always do: one warning line.
    FuseOverlayfsIgnored,
    /// Kernel overlayfs's tuning of its own on-disk tricks: one warning line (containers'
    /// storage.conf `mountopt` may carry them).
    OverlayIgnored,
    /// A FUSE or generic VFS mount option the kernel's FUSE mount honours: handed to the
    /// kernel's mount (the access-time ones we implement, as the kernel leaves them to us).
    Kernel,
    /// Means nothing for a FUSE mount of directories: one warning line.
    CannotApply,
    /// The kernel's FUSE honours it but we cannot set it (fuser 0.18 has no way to pass the
    /// flag): refused rather than mounted without it.
    Unsupported,
    /// mount(8)'s own (fstab, systemd units), which reach helpers: accepted silently.
    Mount8,
}

/// A long flag of `unionfs mount` that means the same as a row's first `-o` name.
pub(crate) struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    /// Set when the flag takes a value (then it means the row's first `NAME=`).
    pub value_name: Option<&'static str>,
    pub help: &'static str,
}

/// What a row does with an item (already matched by name, value presence checked).
type Apply = fn(&mut MountSpec, &Item<'_>) -> Result<(), String>;

/// One option. `names`: `NAME` takes no value, `NAME=` needs one, `NAME*` matches every name
/// starting with NAME, with or without a value.
pub(crate) struct Row {
    pub names: &'static [&'static str],
    pub flag: Option<Flag>,
    pub class: Class,
    /// An item this row accepts (the table's tests parse each).
    #[cfg_attr(not(test), allow(dead_code))]
    pub example: &'static str,
    /// Why the row is in its class; for the warned and refused classes, the line users see.
    pub why: &'static str,
    pub apply: Apply,
}

/// One `key[=value]` item, from an option string or a long flag.
pub(crate) struct Item<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    /// The long flag it came from (its value is never quoted then).
    pub flag: Option<&'static str>,
}

impl Item<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        let v = self.value.unwrap_or_default();
        if self.flag.is_some() { v } else { unquote(v) }
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    pub(super) fn path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.bytes()))
    }

    /// How users wrote it, for messages.
    pub fn shown(&self) -> String {
        match (self.flag, self.value) {
            (Some(f), Some(_)) => format!("{f} {}", self.text()),
            (Some(f), None) => f.to_string(),
            (None, Some(v)) => format!("{}={}", self.key, String::from_utf8_lossy(v)),
            (None, None) => self.key.to_string(),
        }
    }
}

pub(super) const fn flag(long: &'static str, value_name: Option<&'static str>, help: &'static str) -> Option<Flag> {
    Some(Flag {
        long,
        short: None,
        value_name,
        help,
    })
}

pub(super) fn nothing(_: &mut MountSpec, _: &Item<'_>) -> Result<(), String> {
    Ok(())
}

/// fuse-overlayfs's `0`/`1` switches.
pub(super) fn switch(i: &Item<'_>) -> Result<bool, String> {
    match i.bytes() {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err("must be 0 or 1".into()),
    }
}

/// `on`/`off` (also `1`/`0`, `yes`/`no`), as kernel overlayfs spells its feature switches.
pub(super) fn on_off(i: &Item<'_>) -> Result<bool, String> {
    match i.bytes() {
        b"on" | b"1" | b"yes" => Ok(true),
        b"off" | b"0" | b"no" => Ok(false),
        _ => Err("must be 'on' or 'off'".into()),
    }
}

pub(super) fn number<T: std::str::FromStr>(i: &Item<'_>) -> Result<T, String> {
    i.text()
        .trim()
        .parse()
        .map_err(|_| format!("'{}' is not a number", i.text()))
}

pub(super) fn in_range(i: &Item<'_>, lo: u64, hi: u64) -> Result<u64, String> {
    let n: u64 = number(i)?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between {lo} and {hi}"))
    }
}

/// Every option: the union's and the daemon's own (and
/// fuse-overlayfs's), then those of the mount as the kernel sees it.
pub(crate) fn table() -> impl Iterator<Item = &'static Row> {
    union::ROWS.iter().chain(mount::ROWS)
}

/// The row that names `key` (with or without a value), or why there is none.
fn find(key: &str, has_value: bool, shown: &str) -> Result<&'static Row, String> {
    let mut wrong_arity = None;
    for row in table() {
        for &name in row.names {
            if let Some(prefix) = name.strip_suffix('*') {
                if key.starts_with(prefix) {
                    return Ok(row);
                }
            } else if let Some(n) = name.strip_suffix('=') {
                if n == key && has_value {
                    return Ok(row);
                }
                wrong_arity = wrong_arity.or((n == key).then_some("needs a value"));
            } else if name == key {
                if !has_value {
                    return Ok(row);
                }
                wrong_arity = wrong_arity.or(Some("takes no value"));
            }
        }
    }
    Err(match wrong_arity {
        Some(why) => format!("option '{key}' {why}"),
        None => format!("unknown mount option '{shown}' (the README's \"Mount options\" lists what unionfs takes)"),
    })
}

/// Applies one item through its row: the row's action, and its class's warning or refusal.
pub(crate) fn apply_item(spec: &mut MountSpec, row: &Row, item: &Item<'_>) -> Result<(), String> {
    match row.class {
        Class::FuseOverlayfsIgnored => {
            spec.warnings.push(format!(
                "ignoring fuse-overlayfs option '{}': {}",
                item.shown(),
                row.why
            ));
        }
        Class::OverlayIgnored => {
            spec.warnings
                .push(format!("ignoring overlayfs option '{}': {}", item.shown(), row.why));
        }
        Class::CannotApply => spec
            .warnings
            .push(format!("ignoring option '{}': {}", item.shown(), row.why)),
        Class::Unsupported => return Err(format!("option '{}' is not supported: {}", item.shown(), row.why)),
        Class::Ours | Class::FuseOverlayfs | Class::Kernel | Class::Mount8 => {}
    }
    (row.apply)(spec, item).map_err(|e| format!("option '{}': {e}", item.shown()))
}

/// Applies every item of an option string to `spec`; the first bad one is the error.
pub(crate) fn apply_options(spec: &mut MountSpec, opts: &OsStr) -> Result<(), String> {
    for raw in split_options(opts) {
        let (key, value) = match raw.iter().position(|&c| c == b'=') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (&raw[..], None),
        };
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let key = std::str::from_utf8(key).map_err(|_| format!("unknown mount option '{shown}'"))?;
        let row = find(key, value.is_some(), &shown)?;
        apply_item(spec, row, &Item { key, value, flag: None })?;
    }
    Ok(())
}

/// The item a long flag stands for: the row's first `NAME=` with the flag's value, or its
/// first `NAME` (rows without names, such as `--foreground`, get an empty key).
pub(crate) fn flag_item<'a>(row: &'a Row, value: Option<&'a [u8]>) -> Item<'a> {
    let long = row.flag.as_ref().map(|f| f.long);
    let name = match value {
        Some(_) => row.names.iter().find_map(|n| n.strip_suffix('=')),
        None => row.names.iter().find(|n| !n.ends_with('=')).copied(),
    };
    Item {
        key: name.unwrap_or_default(),
        value,
        flag: long,
    }
}

/// Splits an option string into items (see the module documentation).
pub fn split_options(s: &OsStr) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut bytes = s.as_bytes().iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' if bytes.peek() == Some(&b',') => {
                cur.push(b',');
                bytes.next();
            }
            b'"' => {
                quoted = !quoted;
                cur.push(c);
            }
            b',' if !quoted => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.retain(|i| !i.is_empty());
    items
}

/// Splits a layer list `a:b:c` (top first). `\:` is a literal colon and `\\` a backslash; empty
/// items are skipped.
pub fn split_lowers(s: &OsStr) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = s.as_bytes().iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' if matches!(bytes.peek(), Some(b':' | b'\\')) => cur.push(bytes.next().unwrap_or(c)),
            b':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(OsString::from_vec(p)))
        .collect()
}

/// Strips one pair of surrounding double quotes.
fn unquote(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Parses a cache timeout in seconds (fractions allowed; 0 disables caching).
/// `512M`, `4G`, `1000` → bytes (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (like 512M or 4G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=1e10).contains(&secs) {
        return Err(format!("'{s}' is not a number of seconds between 0 and 1e10"));
    }
    Ok(Duration::from_secs_f64(secs))
}

mod mount;
#[cfg(test)]
mod tests;
mod union;
