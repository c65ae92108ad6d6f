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
pub mod forget;
pub mod format;
pub mod init;
pub mod key;
pub mod location;
pub mod logging;
pub mod ls;
pub mod maintain;
pub mod man;
pub mod password;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod unlock;
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
    /// Repository location: a local directory or s3://BUCKET[/PREFIX]
    #[arg(long, short = 'r', global = true, env = "S3BK_REPOSITORY", hide_env_values = true, value_name = "LOCATION")]
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

    /// Options for s3:// repositories.
    #[command(flatten)]
    pub s3: S3Args,
}

/// Storage classes for pack objects (metadata is always STANDARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StorageClassArg {
    /// S3 Standard
    Standard,
    /// Standard-Infrequent Access (30-day minimum, per-GB retrieval fee)
    StandardIa,
    /// Intelligent-Tiering (the default: moves cold packs to cheaper tiers by itself)
    IntelligentTiering,
    /// Glacier Instant Retrieval (90-day minimum, millisecond reads)
    GlacierIr,
    /// One Zone-Infrequent Access (one availability zone)
    OnezoneIa,
    /// Glacier Flexible Retrieval: restores take hours (needs --allow-archive-storage)
    Glacier,
    /// Glacier Deep Archive: restores take up to 48 hours (needs --allow-archive-storage)
    DeepArchive,
}

/// Options for `s3://` repositories (ignored for local ones).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "S3 options")]
pub struct S3Args {
    /// S3 endpoint for S3-compatible stores (MinIO, Garage); AWS_ENDPOINT_URL_S3 also works
    #[arg(long, global = true, env = "S3BK_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// AWS region of the bucket [default: AWS_REGION or the AWS profile's]
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,

    /// AWS shared-config profile to take credentials and region from [default: AWS_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub aws_profile: Option<String>,

    /// Allow a plain-http endpoint on another host (loopback endpoints are always allowed)
    #[arg(long, global = true)]
    pub insecure_http: bool,

    /// Address buckets as ENDPOINT/BUCKET [default when --endpoint-url is set]
    #[arg(long, global = true, conflicts_with = "virtual_hosted_style")]
    pub path_style: bool,

    /// Address buckets as BUCKET.ENDPOINT [default for AWS]
    #[arg(long, global = true)]
    pub virtual_hosted_style: bool,

    /// Storage class of new data packs
    #[arg(long, global = true, value_enum, ignore_case = true, value_name = "CLASS")]
    pub storage_class: Option<StorageClassArg>,

    /// Allow GLACIER and DEEP_ARCHIVE for data packs (restores then need hours)
    #[arg(long, global = true)]
    pub allow_archive_storage: bool,

    /// Encrypt objects at rest with this KMS key (id, ARN or alias) on top of s3bk's encryption
    #[arg(long, global = true, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,

    /// Parallel S3 requests [default: 16]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub connections: Option<u16>,
}

impl S3Args {
    /// The AWS configuration overrides.
    pub fn aws_options(&self) -> s3bk::aws::AwsOptions {
        s3bk::aws::AwsOptions {
            region: self.region.clone(),
            profile: self.aws_profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            insecure_http: self.insecure_http,
        }
    }

    /// The backend options, and a warning to show when an archive class was chosen.
    pub fn options(&self) -> anyhow::Result<(s3bk::backend::S3Options, Option<String>)> {
        use aws_sdk_s3::types::StorageClass as C;
        let mut warning = None;
        let class = match self.storage_class.unwrap_or(StorageClassArg::IntelligentTiering) {
            StorageClassArg::Standard => C::Standard,
            StorageClassArg::StandardIa => C::StandardIa,
            StorageClassArg::IntelligentTiering => C::IntelligentTiering,
            StorageClassArg::GlacierIr => C::GlacierIr,
            StorageClassArg::OnezoneIa => C::OnezoneIa,
            archive @ (StorageClassArg::Glacier | StorageClassArg::DeepArchive) => {
                let name = if archive == StorageClassArg::Glacier { "GLACIER" } else { "DEEP_ARCHIVE" };
                if !self.allow_archive_storage {
                    anyhow::bail!(
                        "--storage-class {name} makes every restore wait hours for S3 to thaw the data; pass                          --allow-archive-storage as well if that is what you want"
                    );
                }
                warning = Some(format!(
                    "data packs go to {name}: a restore must first thaw them, which takes hours (up to 48 h                      for DEEP_ARCHIVE) and costs per GB"
                ));
                if archive == StorageClassArg::Glacier { C::Glacier } else { C::DeepArchive }
            }
        };
        let path_style = match (self.path_style, self.virtual_hosted_style) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let opts = s3bk::backend::S3Options {
            storage_class: class,
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            connections: self.connections.map_or(16, usize::from),
            path_style,
        };
        Ok((opts, warning))
    }
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
    /// Remove snapshots by a retention policy (their data stays until prune; see --prune)
    Forget(Box<forget::Args>),
    /// Remove data no snapshot needs (two-phase: marks now, deletes in a later run)
    Prune(prune::Args),
    /// Check the repository: every snapshot's data is indexed and stored; with --read-data,
    /// every stored byte is intact
    Verify(verify::Args),
    /// Repair a damaged repository: rebuild the index from the packs, or rewrite snapshots
    /// without the data that is lost
    Repair(repair::Args),
    /// Manage keys: list, add, remove, re-wrap under another KMS key, rotate the data key
    Key(key::Args),
    /// Clear stale maintenance leases left by a killed prune or repair
    Unlock(unlock::Args),
    /// The daily admin job: forget by the profile's retention, prune, verify a slice
    Maintain(maintain::Args),
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
        Command::Forget(args) => forget::run(&Ctx::new(global)?, &args).await,
        Command::Prune(args) => prune::run(&Ctx::new(global)?, &args).await,
        Command::Verify(args) => verify::run(&Ctx::new(global)?, &args).await,
        Command::Repair(args) => repair::run(&Ctx::new(global)?, &args).await,
        Command::Key(args) => key::run(&Ctx::new(global)?, &args).await,
        Command::Unlock(args) => unlock::run(&Ctx::new(global)?, &args).await,
        Command::Maintain(args) => maintain::run(&Ctx::new(global)?, &args).await,
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
