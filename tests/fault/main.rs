//! Faults, one kind a module: the daemon killed in the middle of copy-ups, renames and fsynced
//! writes (`crash`), a full upper (`enospc`), and threads racing on overlapping paths
//! (`concurrency`). One binary: each test works on layers, tmpfs mounts and daemons of its own,
//! kills only the daemons it started (by PID), and changes nothing its process shares.

use unionfs_testkit as common;

mod concurrency;
mod crash;
mod enospc;
