//! `s3bk unlock`: clears stale generations of the maintenance lease (format §11.2). Backups
//! never lock, so this only matters after a prune or repair was killed; an expired lease blocks
//! nobody anyway, and `--force` ends a live one whose holder is known to be dead.

use s3bk::lease;

use super::context::Ctx;
use super::exit;
use super::format::print_json;

/// Arguments of `unlock`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also end a lease that has not expired yet. Only when its holder is certainly not running:
    /// two prunes at once can delete data the other one still relies on
    #[arg(long)]
    pub force: bool,
}

/// Runs `unlock`.
pub async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<u8> {
    let opened = ctx.open(false).await?;
    let report = lease::unlock(&opened.repo, args.force).await?;
    if ctx.global.json {
        print_json(&report)?;
    } else if !ctx.global.quiet {
        if let Some(live) = &report.live {
            println!("left alone: {live}");
            println!("(it expires by itself; `s3bk unlock --force` ends it if that run is certainly dead)");
        }
        if report.ended {
            println!("ended the maintenance lease");
        }
        println!("removed {} stale lease generation(s)", report.removed);
    }
    Ok(exit::OK)
}
