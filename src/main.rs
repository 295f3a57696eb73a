//! The `unionfs` command: parses, reports, and hands over to the library.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
