//! `import`: an entry's path. Absolute paths and `..` are refused; what is left is a path of
//! normal names, relative to the layer's root.

/// Splits an archive path into normal components; refuses absolute paths and `..`.
pub(super) fn components(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The normal names of the archive path `raw` joined by '/' (what [`components`] gives,
/// joined). `known` is a path of normal names (the directory the importer is in): where `raw`
/// starts with it, only the rest is looked at, as paths of deep archives are long.
pub(super) fn normalize(raw: &[u8], known: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let body = raw.strip_prefix(b"./").unwrap_or(raw);
    let k = match body.strip_prefix(known) {
        Some([b'/', ..]) if !known.is_empty() => known.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..k]);
    for c in body[k..].split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// `rel` split at its last '/': (parent, name).
pub(super) fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

#[cfg(test)]
mod tests {
    use super::{components, normalize};

    #[test]
    fn paths_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], &b"b"[..]]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn normalize_joins_what_components_gives_with_or_without_a_known_start() {
        for raw in [
            &b"./a//b/"[..],
            b"a/b/c",
            b"a/./b/",
            b"./",
            b".",
            b"a/b/./c//d/",
            b"a/bc/d",
            b"a/b",
            b"./a/b/c",
        ] {
            let want = components(raw).unwrap().join(&b'/');
            for known in [&b""[..], b"a", b"a/b", b"a/bc", b"x"] {
                assert_eq!(normalize(raw, known).unwrap(), want, "{raw:?} from {known:?}");
            }
        }
        for raw in [&b"/etc/passwd"[..], b"a/../../x", b"..", b"a/b/.."] {
            assert!(components(raw).is_err());
            for known in [&b""[..], b"a", b"a/b"] {
                assert!(normalize(raw, known).is_err(), "{raw:?} from {known:?}");
            }
        }
    }
}
