//! The hard-link index's records on disk: entry names (the lower object's identity) and what
//! each copy records of the lower file it was copied from and of its names in the view.

use std::ffi::{OsStr, OsString};

use rustix::fs::Stat;

/// A lower object's identity: its filesystem and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub fsid: u64,
    pub ino: u64,
}

impl Key {
    pub fn name(&self) -> OsString {
        OsString::from(format!("{:016x}-{:x}", self.fsid, self.ino))
    }

    pub fn parse(name: &OsStr) -> Option<Key> {
        let (fsid, ino) = name.to_str()?.split_once('-')?;
        Some(Key {
            fsid: u64::from_str_radix(fsid, 16).ok()?,
            ino: u64::from_str_radix(ino, 16).ok()?,
        })
    }
}

/// The lower file an index entry was copied from: its identity, and what tells a file that
/// later got the same inode number (a layer rebuilt, a new image version unpacked in its
/// place) from it. The ctime is the strong part: unpacking or copying a file gives it a new
/// one, and nobody can set it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Origin {
    pub fsid: u64,
    pub ino: u64,
    pub size: i64,
    pub mtime: (i64, u64),
    pub ctime: (i64, u64),
}

impl Origin {
    pub fn of(key: Key, st: &Stat) -> Origin {
        Origin {
            fsid: key.fsid,
            ino: key.ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Option<Origin> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(o, _)| o)
    }
}

/// A copy's count of its names in the view, as stored.
pub fn encode_count(n: u32) -> [u8; 4] {
    n.to_le_bytes()
}

pub fn decode_count(v: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_names() {
        let k = Key {
            fsid: 0xdead_beef_0123_4567,
            ino: 42,
        };
        assert_eq!(Key::parse(&k.name()), Some(k));
        assert_eq!(Key::parse(OsStr::new("not-a-key")), None);
        assert_eq!(Key::parse(OsStr::new("#1")), None);
    }

    #[test]
    fn origins_round_trip_and_differ_by_history() {
        let o = Origin {
            fsid: 7,
            ino: 42,
            size: 10,
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 6),
        };
        assert_eq!(Origin::decode(&o.encode()), Some(o));
        // The same inode number, size and mtime, but made again: another file.
        let remade = Origin {
            ctime: (1_800_000_000, 0),
            ..o
        };
        assert_ne!(Origin::decode(&remade.encode()), Some(o));
    }
}
