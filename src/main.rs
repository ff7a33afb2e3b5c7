//! The `pkn` binary: parse arguments, run, print errors with their whole chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match pkn::cli::run(pkn::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
