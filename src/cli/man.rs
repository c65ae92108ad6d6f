//! `s3bk man`: renders manual pages from the command line definition, the main page on
//! stdout or one page per command into a folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, exit};

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write one page per command (s3bk.1, s3bk-backup.1, ...) into this folder
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs `man`.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let cmd = Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out).context("writing the manual page")?;
        }
    }
    Ok(exit::OK)
}
