//! What we ask the kernel for at INIT.

use fuser::{InitFlags, KernelConfig};

/// Requests the capabilities that let the kernel cache and parallelise (docs/architecture.md, "FUSE facts"),
/// and FUSE passthrough when `passthrough` says we may use it (`stacked`: the upper is itself
/// on a stacking filesystem). `rdplus_always`: every listing chunk carries attributes, instead
/// of the kernel's choice. Returns whether passthrough was negotiated.
pub(crate) fn negotiate(cfg: &mut KernelConfig, passthrough: bool, stacked: bool, rdplus_always: bool) -> bool {
    // Not ATOMIC_O_TRUNC: with it we would truncate inside OPEN, before the kernel's ETXTBSY
    // check, and kill a program running from the file (pjdfstest open::etxtbsy).
    let want = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        // Always-plus (the default): every listing chunk carries attributes, so a walk that
        // stats every entry costs no LOOKUP round trip per entry (a cold `find` with stat of
        // 300,000 entries: 1.2x kernel overlayfs, against 3.4x with AUTO), but a listing that
        // needs no attributes stats every entry too (a cold `find -name` of them: 13x against
        // 4.3x). AUTO gives attributes with the first chunk only (and after lookups in that
        // directory). README: Caching and speed.
        | if rdplus_always {
            InitFlags::empty()
        } else {
            InitFlags::FUSE_READDIRPLUS_AUTO
        }
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_AUTO_INVAL_DATA
        | InitFlags::FUSE_NO_EXPORT_SUPPORT
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_HANDLE_KILLPRIV_V2
        // Shared mmap of a FOPEN_DIRECT_IO file (see `Passthrough::served_flags`).
        | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
    let _ = cfg.add_capabilities(want & cfg.capabilities());
    let _ = cfg.set_max_write(1 << 20);
    let _ = cfg.set_max_background(64);
    let _ = cfg.set_congestion_threshold(48);
    // The depth is what our mount counts as; 1 keeps it usable as a lower of kernel overlayfs.
    passthrough
        && cfg.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && cfg.set_max_stack_depth(if stacked { 2 } else { 1 }).is_ok()
}

/// The writeback cache, for mounts without passthrough (the two exclude each other): the kernel
/// keeps written pages and sends them in big batches, so small writes cost no round trip each.
/// It also owns the file's size and times while pages are dirty, reads through write-only opens
/// (so our fds are read-write), and turns O_APPEND into explicit offsets itself. Returns whether
/// the kernel agreed.
pub(crate) fn negotiate_writeback(cfg: &mut KernelConfig) -> bool {
    let want = InitFlags::FUSE_WRITEBACK_CACHE;
    cfg.capabilities().contains(want) && cfg.add_capabilities(want).is_ok()
}

/// POSIX ACLs: the kernel enforces them (reading `system.posix_acl_access` through us) and,
/// with FUSE_DONT_MASK, passes the caller's umask for us to apply where no default ACL
/// replaces it. Returns whether the kernel agreed to both.
pub(crate) fn negotiate_acl(cfg: &mut KernelConfig) -> bool {
    let want = InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
    cfg.capabilities().contains(want) && cfg.add_capabilities(want).is_ok()
}
