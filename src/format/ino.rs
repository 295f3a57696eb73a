//! Inode numbers of the view. On one filesystem an object's own number is unique already and is
//! kept (as kernel overlayfs does), so tools that remember inode numbers see the same ones after
//! a remount; across filesystems the high bits carry the position of the layer's filesystem. A
//! copied-up object keeps its origin's number (recorded in `xattrs::origin`). The daemon and
//! `unionfs check` number objects through this one function.

/// The root's number in every FUSE mount.
pub const ROOT: u64 = 1;

/// Numbers objects of a stack of layers by their raw inode numbers.
#[derive(Debug, Clone)]
pub struct Numbering {
    /// Each layer's device, upper first when there is one.
    devs: Vec<u64>,
    single: bool,
}

impl Numbering {
    /// For layers on the devices `devs` (in `Union`'s layer order: upper first if any).
    pub fn new(devs: Vec<u64>) -> Numbering {
        let single = devs.iter().all(|d| Some(d) == devs.first());
        Numbering { devs, single }
    }

    /// Whether every layer is on one filesystem (then numbers are the raw ones).
    pub fn single_dev(&self) -> bool {
        self.single
    }

    /// The view number of the object with raw number `raw` in layer `layer`.
    pub fn view(&self, layer: usize, raw: u64) -> u64 {
        let ino = if self.single {
            raw
        } else {
            let dev = self.devs.get(layer).copied().unwrap_or(0);
            let tag = self.devs.iter().position(|d| *d == dev).unwrap_or(layer) as u64 + 1;
            (tag << 48) | (raw & ((1 << 48) - 1))
        };
        // Number 1 is the root's.
        if ino == ROOT { 1 << 62 } else { ino }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filesystem_keeps_raw_numbers_and_several_are_tagged() {
        let one = Numbering::new(vec![5, 5, 5]);
        assert_eq!(one.view(2, 42), 42);
        assert_eq!(one.view(0, ROOT), 1 << 62);
        let two = Numbering::new(vec![5, 7, 5]);
        assert_eq!(two.view(0, 42), (1 << 48) | 42);
        assert_eq!(two.view(1, 42), (2 << 48) | 42);
        assert_eq!(two.view(2, 42), (1 << 48) | 42, "layers on one device share a tag");
    }
}
