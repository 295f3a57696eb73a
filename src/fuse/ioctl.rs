//! The ioctl requests we serve: inode flags, which the kernel asks for itself when a program
//! calls FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (`lsattr`, `chattr`) or FS_IOC_FSGETXATTR /
//! FS_IOC_FSSETXATTR (`chattr` reads these too) on a file of the mount. The kernel opens the
//! file privately, checks ownership and CAP_LINUX_IMMUTABLE, and sends us a fixed-size
//! request. Everything else is refused.
//!
//! The `fsxattr` form is translated to and from the flags (the kernel's own mapping,
//! `fileattr_fill_flags`): its project id and extent size hints read as 0 and cannot be set.

use crate::error::Errno;

/// `struct fsxattr`: xflags, extsize, nextents, projid, cowextsize, 8 bytes of padding.
const FSXATTR_SIZE: usize = 28;
/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// FS_*_FL inode flags and the FS_XFLAG_* bits they map to.
const FLAG_MAP: [(u32, u32); 7] = [
    (0x0000_0008, 0x0000_0020), // SYNC
    (0x0000_0010, 0x0000_0008), // IMMUTABLE
    (0x0000_0020, 0x0000_0010), // APPEND
    (0x0000_0040, 0x0000_0080), // NODUMP
    (0x0000_0080, 0x0000_0040), // NOATIME
    (0x0200_0000, 0x0000_8000), // DAX
    (0x2000_0000, 0x0000_0200), // PROJINHERIT
];

/// One request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagsRequest {
    /// FS_IOC_GETFLAGS: the flags, as an `int`.
    Get,
    /// FS_IOC_SETFLAGS with these flags.
    Set(u32),
    /// FS_IOC_FSGETXATTR: a `struct fsxattr`.
    GetX,
    /// FS_IOC_FSSETXATTR with these xflags.
    SetX(u32),
}

impl FlagsRequest {
    /// Decodes `cmd` with its input; anything else is no flags request (None). Flags are an
    /// `int`, whatever size the command encodes.
    pub(crate) fn decode(cmd: u32, input: &[u8]) -> Result<Option<FlagsRequest>, Errno> {
        let word = |i: usize| -> Result<u32, Errno> {
            let b = input.get(i * 4..i * 4 + 4).ok_or(Errno::EINVAL)?;
            Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        Ok(Some(match cmd {
            c if c == libc::FS_IOC_GETFLAGS as u32 || c == libc::FS_IOC32_GETFLAGS as u32 => FlagsRequest::Get,
            c if c == libc::FS_IOC_SETFLAGS as u32 || c == libc::FS_IOC32_SETFLAGS as u32 => {
                FlagsRequest::Set(word(0)?)
            }
            FS_IOC_FSGETXATTR => FlagsRequest::GetX,
            FS_IOC_FSSETXATTR => {
                // Extent size hints and project ids are not ours to change (read as 0).
                if (1..5).map(word).any(|w| !matches!(w, Ok(0))) {
                    return Err(Errno::ENOTSUP);
                }
                FlagsRequest::SetX(word(0)?)
            }
            _ => return Ok(None),
        }))
    }
}

/// The reply to a GETFLAGS request of `out_size` bytes.
pub(crate) fn flags_reply(flags: u32, out_size: u32) -> Vec<u8> {
    let mut out = flags.to_ne_bytes().to_vec();
    out.resize((out_size as usize).min(8), 0);
    out
}

/// The `struct fsxattr` for `flags`.
pub(crate) fn fsxattr_reply(flags: u32) -> Vec<u8> {
    let xflags = FLAG_MAP
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .fold(0, |x, (_, xf)| x | xf);
    let mut out = vec![0u8; FSXATTR_SIZE];
    out[..4].copy_from_slice(&xflags.to_ne_bytes());
    out
}

/// The flags `current` becomes when set through `xflags` (flags without an xflag stay).
pub(crate) fn flags_from_xflags(current: u32, xflags: u32) -> u32 {
    FLAG_MAP
        .iter()
        .fold(current, |f, (fl, xf)| if xflags & xf != 0 { f | fl } else { f & !fl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xflags_round_trip() {
        // immutable | append | noatime | extents (no xflag: kept)
        let flags = 0x10 | 0x20 | 0x80 | 0x0008_0000;
        let x = fsxattr_reply(flags);
        assert_eq!(x.len(), FSXATTR_SIZE);
        let xflags = u32::from_ne_bytes([x[0], x[1], x[2], x[3]]);
        assert_eq!(xflags, 0x8 | 0x10 | 0x40);
        assert_eq!(flags_from_xflags(0x0008_0000, xflags), flags);
        assert_eq!(flags_from_xflags(flags, 0), 0x0008_0000);
    }

    #[test]
    fn decoding() {
        let set = (libc::FS_IOC_SETFLAGS as u32, 0x10u32.to_ne_bytes());
        assert_eq!(FlagsRequest::decode(set.0, &set.1), Ok(Some(FlagsRequest::Set(0x10))));
        assert_eq!(FlagsRequest::decode(set.0, &[]), Err(Errno::EINVAL));
        assert_eq!(
            FlagsRequest::decode(libc::FS_IOC_GETFLAGS as u32, &[]),
            Ok(Some(FlagsRequest::Get))
        );
        assert_eq!(FlagsRequest::decode(0x5401, &[]), Ok(None));
        let mut fsx = [0u8; FSXATTR_SIZE];
        fsx[..4].copy_from_slice(&8u32.to_ne_bytes());
        let setx = FS_IOC_FSSETXATTR;
        assert_eq!(FlagsRequest::decode(setx, &fsx), Ok(Some(FlagsRequest::SetX(8))));
        fsx[12] = 7; // a project id
        assert_eq!(FlagsRequest::decode(setx, &fsx), Err(Errno::ENOTSUP));
    }
}
