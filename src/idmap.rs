//! Owner mappings between the layers and the view: fuse-overlayfs's `uidmapping=`,
//! `gidmapping=`, `squash_to_root`, `squash_to_uid=` and `squash_to_gid=`, with its meaning.
//!
//! A mapping `HOST:VIEW:LEN` shows an owner `HOST + k` on disk as `VIEW + k` in the view (stat)
//! and stores an owner `VIEW + k` given through the view (chown, new objects) as `HOST + k`.
//! Several mappings are joined with `:` (`0:1000:1:1:110000:65536`, the form of a user
//! namespace's `uid_map` on one line; a leading `:` is allowed, as Podman writes it). Owners no
//! mapping covers are shown as they are (fuse-overlayfs shows 65534, the overflow id; but
//! Podman mounts layers whose owners it has already shifted and still passes the mapping, and
//! 65534 there breaks every container, while showing them as they are gives what the kernel
//! driver shows). The squash options show every owner as the given id and leave what is stored
//! alone.

use serde::{Deserialize, Serialize};

/// One range of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The first owner as stored in the layers.
    pub host: u32,
    /// The first owner as the view shows it.
    pub view: u32,
    pub len: u32,
}

/// The owner mappings of a mount (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Every owner shown as this uid / gid.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

/// Parses `HOST:VIEW:LEN[:HOST:VIEW:LEN...]` (a leading `:` allowed).
pub fn parse_ranges(s: &str) -> Result<Vec<IdRange>, String> {
    let nums = s
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().map_err(|_| format!("'{p}' is not an id")))
        .collect::<Result<Vec<u32>, String>>()?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(format!("'{s}' is not a list of HOST:VIEW:LEN triples"));
    }
    nums.chunks_exact(3)
        .map(|c| {
            if c[2] == 0 || c[0].checked_add(c[2] - 1).is_none() || c[1].checked_add(c[2] - 1).is_none() {
                return Err(format!(
                    "'{s}': the range {}:{}:{} is empty or too long",
                    c[0], c[1], c[2]
                ));
            }
            Ok(IdRange {
                host: c[0],
                view: c[1],
                len: c[2],
            })
        })
        .collect()
}

fn shift(id: u32, ranges: &[IdRange], to_view: bool) -> u32 {
    for r in ranges {
        let (from, to) = if to_view { (r.host, r.view) } else { (r.view, r.host) };
        if id >= from && id - from < r.len {
            return to + (id - from);
        }
    }
    id
}

impl IdMap {
    /// Whether the mount maps nothing (the common case: no work per request).
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty() && self.squash_uid.is_none() && self.squash_gid.is_none()
    }

    /// The owner the view shows for an object stored with `uid`/`gid`.
    pub fn to_view(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.squash_uid.unwrap_or_else(|| shift(uid, &self.uids, true)),
            self.squash_gid.unwrap_or_else(|| shift(gid, &self.gids, true)),
        )
    }

    /// The owner stored for `uid`/`gid` given through the view.
    pub fn to_host(&self, uid: u32, gid: u32) -> (u32, u32) {
        (shift(uid, &self.uids, false), shift(gid, &self.gids, false))
    }

    pub fn uid_to_host(&self, uid: u32) -> u32 {
        shift(uid, &self.uids, false)
    }

    pub fn gid_to_host(&self, gid: u32) -> u32 {
        shift(gid, &self.gids, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_and_man_page_forms() {
        assert_eq!(
            parse_ranges(":0:100000:65536").unwrap(),
            vec![IdRange {
                host: 0,
                view: 100000,
                len: 65536
            }]
        );
        assert_eq!(parse_ranges("0:1000:1:1:110000:65536").unwrap().len(), 2);
        assert!(parse_ranges("0:1000").is_err());
        assert!(parse_ranges("a:b:c").is_err());
        assert!(parse_ranges("0:0:0").is_err());
        assert!(parse_ranges("4294967295:0:2").is_err());
    }

    #[test]
    fn maps_both_ways_and_leaves_the_rest() {
        let m = IdMap {
            uids: parse_ranges("0:1000:1:1:110000:65536").unwrap(),
            gids: parse_ranges("0:1000:1").unwrap(),
            ..IdMap::default()
        };
        // The man page's example: on-disk 0:0 and 1:1 shown as 1000 and 110000.
        assert_eq!(m.to_view(0, 0), (1000, 1000));
        assert_eq!(m.to_view(1, 5), (110000, 5));
        assert_eq!(m.to_host(110000, 1000), (1, 0));
        // Already shifted (Podman's mapped layers): shown as they are.
        assert_eq!(m.to_view(200000, 200000), (200000, 200000));
        let sq = IdMap {
            squash_uid: Some(0),
            squash_gid: Some(7),
            ..m
        };
        assert_eq!(sq.to_view(1, 1), (0, 7));
    }
}
