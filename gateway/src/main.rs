//! `icbt-gateway`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = icbt_gateway::cli::Cli::parse();
    match icbt_gateway::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole cause chain, no backtrace.
            let line = format!("{error:#}").replace('\n', " ");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("icbt-gateway: error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
