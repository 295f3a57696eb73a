//! The `unionfs` command: parses, reports, and hands over to the library.

#![forbid(unsafe_code)]
// No function over 80 lines (clippy.toml): long ones get split into named steps.
#![deny(clippy::too_many_lines)]

mod cli;

use std::process::ExitCode;

/// jemalloc with its background thread gives freed memory back to the system (glibc's
/// allocator kept a daemon that had cached 300,000 entries at 230 MiB after the kernel forgot
/// them all), and its small-object size classes carry no per-allocation header.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Purges freed pages after jemalloc's decay time even while every request thread is idle.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    cli::main()
}
