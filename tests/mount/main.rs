//! The tests that mount unionfs for real, one module a section of docs/semantics.md (each
//! module's header names its section; `image_tools` is README's layer tools over an image,
//! here to share `images`' image, built once per run), in one binary: one link instead of one a
//! file, and one process whose tests run side by side.
//!
//! Sharing a process is safe for these tests because none of them changes what the process
//! shares: no test sets an environment variable, the umask, a resource limit or the working
//! directory of the test process (daemons get their own environment and limits through the
//! commands that start them); every mount, tmpfs, loop device and daemon a test makes is its
//! own, under its own temporary directory, torn down by a guard, and killed by its PID only.
//! What they do share is handled where it happens: a sibling's fork may briefly hold a copy of
//! a test's file descriptors (a just-written program is started with a retry on ETXTBSY, and
//! mount(8) runs our binary through a symlink, never a fresh copy; an unmount retries while the
//! mount is busy), and `deep` drops the kernel's dentry and inode caches where the open-file
//! limit makes it fail (`echo 2 > drop_caches`, system-wide: other tests then look names up
//! again, which no test here depends on not happening). `data::errors`' failing filesystem is
//! served by threads of this process (fuser changes nothing else the process shares, and its
//! /dev/fuse descriptor is close-on-exec, so no sibling's child keeps it). Tests that
//! re-execute this binary as another user (`as_user::helper`) name the helper by its full
//! path, so only it runs.

use unionfs_testkit as common;

mod as_user;
mod caching;
mod chunked_commit;
mod copy_up;
mod data;
mod deep;
mod estargz;
mod formats;
mod hard_links;
mod identity;
mod image_errors;
mod image_offsets;
mod image_tools;
mod images;
mod lookup;
mod metacopy;
mod oci;
mod one_upper;
mod options;
mod permissions;
mod pitfalls;
mod push;
mod readdir;
mod redirect;
mod reference;
mod registry;
mod registry_lazy;
mod rename;
mod round_trips;
mod terms;
mod unlink;
