//! What we ask the kernel for at INIT.

use fuser::{InitFlags, KernelConfig};

/// Requests the capabilities that let the kernel cache and parallelise (see FUSER-NOTES A5).
pub(crate) fn negotiate(cfg: &mut KernelConfig) {
    // Not ATOMIC_O_TRUNC: with it we would truncate inside OPEN, before the kernel's ETXTBSY
    // check, and kill a program running from the file (pjdfstest open::etxtbsy).
    let want = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_AUTO_INVAL_DATA
        | InitFlags::FUSE_NO_EXPORT_SUPPORT
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_ASYNC_READ;
    let _ = cfg.add_capabilities(want & cfg.capabilities());
    let _ = cfg.set_max_write(1 << 20);
    let _ = cfg.set_max_background(64);
    let _ = cfg.set_congestion_threshold(48);
}
