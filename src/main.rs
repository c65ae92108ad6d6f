//! The `s3bk` command-line program: parses arguments, sets up logging and the async runtime,
//! runs one command and turns its outcome into an exit code (see `cli::exit`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::logging::init(args.global.verbose, args.global.quiet);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if cli::exit::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::exit::render(&e));
            ExitCode::from(cli::exit::code_for(&e))
        }
    }
}

/// Lifts the soft limit on open files to the hard one (often 1,024 → 524,288): restore and the
/// S3 client hold many descriptors at once. Failure is harmless: the soft limit stays.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
