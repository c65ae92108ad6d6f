//! The command line: global options shared by every command, the list of commands, and the
//! dispatch from a parsed command line to the module that runs it. Each command lives in its
//! own file with its `Args` and a `run` function returning an exit code (see [`exit`]).

pub mod backup;
pub mod completions;
pub mod config;
pub mod context;
pub mod diff;
pub mod exit;
pub mod filter;
pub mod find;
pub mod format;
pub mod init;
pub mod key;
pub mod location;
pub mod logging;
pub mod ls;
pub mod man;
pub mod password;
pub mod progress;
pub mod restore;
pub mod snapshots;
pub mod verify;

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use context::Ctx;

/// Deduplicated, incremental, encrypted backups.
#[derive(Debug, Parser)]
#[command(
    name = "s3bk",
    version,
    about = "Deduplicated, incremental, encrypted backups",
    long_about = "Deduplicated, incremental, encrypted backups.\n\n\
        With no repository configured, `s3bk backup` creates one under $XDG_DATA_HOME/s3bk/repo \
        with a random key stored in $XDG_CONFIG_HOME/s3bk/key. Configure another location with \
        --repo, S3BK_REPOSITORY or a profile in $XDG_CONFIG_HOME/s3bk/config.toml.",
    after_help = exit::HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Repository location (a local directory)
    #[arg(long, short = 'r', global = true, env = "S3BK_REPOSITORY", hide_env_values = true, value_name = "PATH")]
    pub repo: Option<String>,

    /// Use this profile from the config file
    #[arg(long, global = true, env = "S3BK_PROFILE", hide_env_values = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// Read the repository password from this file
    #[arg(long, global = true, env = "S3BK_PASSWORD_FILE", hide_env_values = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Run this shell command and use its output as the password
    #[arg(long, global = true, env = "S3BK_PASSWORD_COMMAND", hide_env_values = true, value_name = "COMMAND")]
    pub password_command: Option<String>,

    /// AWS KMS key (key id, ARN, alias/NAME): wraps the master key at `init`, is used to open the
    /// repository instead of a password, is the key `key add` adds and `key rewrap` moves to
    #[arg(long, global = true, env = "S3BK_KMS_KEY_ID", hide_env_values = true, value_name = "KEY")]
    pub kms_key_id: Option<String>,

    /// Folder for the local index cache [default: $XDG_CACHE_HOME/s3bk]
    #[arg(long, global = true, env = "S3BK_CACHE_DIR", hide_env_values = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Keep the index in memory instead of caching it on disk
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// Print machine-readable JSON on stdout (and no progress)
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log more (-v info, -vv debug, -vvv trace)
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository
    Init(init::Args),
    /// Back up files and folders as a new snapshot
    Backup(backup::Args),
    /// Restore a snapshot into a folder
    Restore(restore::Args),
    /// List snapshots
    Snapshots(snapshots::Args),
    /// List the files in a snapshot
    Ls(ls::Args),
    /// Show what changed between two snapshots
    Diff(diff::Args),
    /// Find files by name across snapshots
    Find(find::Args),
    /// Check the repository: every snapshot's data is indexed and stored; with --read-data,
    /// every stored byte is intact
    Verify(verify::Args),
    /// Manage keys: list, add, remove, re-wrap under another KMS key, rotate the data key
    Key(key::Args),
    /// Print a shell completion script
    Completions(completions::Args),
    /// Print or write manual pages
    Man(man::Args),
}

/// Runs the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let Cli { global, command } = cli;
    match command {
        Command::Completions(args) => completions::run(&args),
        Command::Man(args) => man::run(&args),
        Command::Init(args) => init::run(&Ctx::new(global)?, &args).await,
        Command::Backup(args) => backup::run(&Ctx::new(global)?, &args).await,
        Command::Restore(args) => restore::run(&Ctx::new(global)?, &args).await,
        Command::Snapshots(args) => snapshots::run(&Ctx::new(global)?, &args).await,
        Command::Ls(args) => ls::run(&Ctx::new(global)?, &args).await,
        Command::Diff(args) => diff::run(&Ctx::new(global)?, &args).await,
        Command::Find(args) => find::run(&Ctx::new(global)?, &args).await,
        Command::Verify(args) => verify::run(&Ctx::new(global)?, &args).await,
        Command::Key(args) => key::run(&Ctx::new(global)?, &args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
