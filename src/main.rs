use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    r2m::malloc::keep_freed_memory();
    match r2m::cli::run(r2m::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
