//! `warren-bench`: parse flags, run the scenarios, print the table.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let options = warren_bench::Options::parse();
    match warren_bench::run(&options) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
