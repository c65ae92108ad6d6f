//! Logging: a `tracing` subscriber writing to stderr. Warnings by default, `-v` for info, `-vv`
//! for debug, `-vvv` for trace, `-q` for errors only; `RUST_LOG` overrides all of them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={spec:?}: {e}");
            EnvFilter::new(level)
        }),
        // The AWS SDK warns about every step of its configuration chain that found nothing
        // (no IMDS off EC2, no profile file): noise unless debugging.
        _ if verbose < 2 => EnvFilter::new(format!(
            "{level},aws_config=error,aws_runtime=error,aws_types=error,aws_smithy_runtime=error"
        )),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose >= 2)
        .try_init();
}
