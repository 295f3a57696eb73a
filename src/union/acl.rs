//! POSIX ACLs: what a new object inherits from its directory's default ACL.
//!
//! With ACLs on, the kernel enforces them (it reads `system.posix_acl_access` through us) and
//! leaves the file-creation mask to us (`FUSE_DONT_MASK`), because a default ACL replaces the
//! umask. The upper's filesystem would apply a default ACL itself only to objects created in the
//! directory that holds it, but we build many objects in the workdir first, so the inheritance
//! is computed here, exactly as the kernel's `posix_acl_create` does, and written with the
//! object before it becomes visible.
//!
//! Xattr format (`include/uapi/linux/posix_acl_xattr.h`): a little-endian `u32` version (2),
//! then 8-byte entries `{ tag: u16, perm: u16, id: u32 }`.

/// The access ACL of an object.
pub(crate) const ACCESS: &str = "system.posix_acl_access";
/// The default ACL of a directory: what objects created in it inherit.
pub(crate) const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acl(Vec<Entry>);

impl Acl {
    /// Parses the xattr form; `None` for anything malformed (treated as no ACL, as the kernel
    /// refuses to store such a value anyway).
    pub fn parse(b: &[u8]) -> Option<Acl> {
        let (head, rest) = b.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*head) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries = rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect::<Vec<_>>();
        let has = |t| entries.iter().any(|e| e.tag == t);
        (has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER)).then_some(Acl(entries))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }
}

/// What a new object gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inherited {
    /// Its permission bits (set-id and sticky bits as asked).
    pub mode: u32,
    /// Its access ACL, when the mode alone cannot express it.
    pub access: Option<Acl>,
    /// Its default ACL (directories only): the parent's.
    pub default: Option<Acl>,
}

/// The mode and ACLs of an object created with `mode` (permission bits, 0o7777) in a directory
/// whose default ACL is `parent_default`, by a caller whose umask is `umask`. Without a default
/// ACL the umask applies; with one it does not (`posix_acl_create`).
pub(crate) fn inherit(parent_default: Option<&Acl>, mode: u32, umask: u32, is_dir: bool) -> Inherited {
    let Some(def) = parent_default else {
        return Inherited {
            mode: mode & !(umask & 0o777),
            access: None,
            default: None,
        };
    };
    let mut acl = def.clone();
    let (mode, extended) = create_masq(&mut acl, mode);
    Inherited {
        mode,
        access: extended.then_some(acl),
        default: is_dir.then(|| def.clone()),
    }
}

/// `posix_acl_create_masq`: narrows the inherited entries by the requested mode and the mode by
/// them. Returns the new mode and whether the ACL says more than the mode can.
fn create_masq(acl: &mut Acl, mode: u32) -> (u32, bool) {
    let mut m = mode & 0o777;
    let mut extended = false;
    let mut group_obj = None;
    let mut mask = None;
    for (i, e) in acl.0.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((m >> 6) & 7) as u16;
                m &= (u32::from(e.perm) << 6) | 0o077;
            }
            USER | GROUP => extended = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                e.perm &= (m & 7) as u16;
                m &= u32::from(e.perm) | 0o770;
            }
            MASK => {
                mask = Some(i);
                extended = true;
            }
            _ => {}
        }
    }
    if let Some(i) = mask.or(group_obj) {
        let e = &mut acl.0[i];
        e.perm &= ((m >> 3) & 7) as u16;
        m &= (u32::from(e.perm) << 3) | 0o707;
    }
    ((mode & 0o7000) | m, extended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect())
    }

    #[test]
    fn round_trips_the_xattr_form() {
        let a = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        assert_eq!(Acl::parse(&a.to_bytes()), Some(a));
        assert_eq!(Acl::parse(b"\x02\0\0\0\x01\0"), None);
        assert_eq!(Acl::parse(b"\x01\0\0\0"), None);
    }

    #[test]
    fn without_a_default_acl_the_umask_applies() {
        let i = inherit(None, 0o666, 0o022, false);
        assert_eq!(i.mode, 0o644);
        assert_eq!(i.access, None);
    }

    #[test]
    fn a_default_acl_replaces_the_umask_and_masks_the_mode() {
        // setfacl -d -m u::rwx,u:1000:rwx,g::r-x,m::rwx,o::--- on the parent.
        let def = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        // A file created 0666 with umask 077: the group class keeps rw- (the mask), no umask.
        let f = inherit(Some(&def), 0o666, 0o077, false);
        assert_eq!(f.mode, 0o660);
        let access = f.access.expect("extended entries need an access ACL");
        assert!(access.0.contains(&Entry {
            tag: MASK,
            perm: 6,
            id: u32::MAX
        }));
        assert!(access.0.contains(&Entry {
            tag: USER,
            perm: 7,
            id: 1000
        }));
        assert_eq!(f.default, None);
        // A directory also takes the default ACL itself.
        let d = inherit(Some(&def), 0o777, 0o022, true);
        assert_eq!(d.mode, 0o770);
        assert_eq!(d.default, Some(def.clone()));
    }

    #[test]
    fn a_minimal_default_acl_only_narrows_the_mode() {
        let def = acl(&[(USER_OBJ, 6, u32::MAX), (GROUP_OBJ, 4, u32::MAX), (OTHER, 0, u32::MAX)]);
        let f = inherit(Some(&def), 0o4777, 0o000, false);
        assert_eq!(f.mode, 0o4640);
        assert_eq!(f.access, None);
    }
}
