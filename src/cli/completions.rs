//! `s3bk completions`: prints a shell completion script generated from the command line
//! definition.

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, exit};

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example: s3bk completions bash > ~/.local/share/bash-completion/completions/s3bk")]
pub struct Args {
    /// The shell
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Runs `completions`.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "s3bk", &mut out);
    Ok(exit::OK)
}
