//! Exit codes: the numbers `s3bk` ends with, and the mapping from errors to them.
//!
//! | code | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | success                                                        |
//! | 1    | error (anything not listed below)                              |
//! | 2    | usage error: bad arguments (clap's default)                    |
//! | 3    | the snapshot was written but is incomplete (paths were skipped) |
//! | 4    | `verify --rto`: the estimated full restore takes longer than the objective |
//! | 10   | no repository: none configured, or none at the location        |
//! | 11   | the repository is locked by another operation                  |
//! | 12   | wrong password or key                                          |
//! | 13   | KMS key unusable: missing, disabled, access denied, wrong encryption context, no credentials or region |
//!
//! Errors are `anyhow` chains; [`code_for`] looks for an [`s3bk::error::Error`] (or a
//! [`CodedError`] raised by the CLI itself) anywhere in the chain.

use std::fmt;

use s3bk::error::Error;

/// Success.
pub const OK: u8 = 0;
/// Any error not listed below.
pub const ERROR: u8 = 1;
/// The snapshot was written but some paths were skipped.
pub const INCOMPLETE: u8 = 3;
/// `verify --rto`: the estimated full restore misses the recovery time objective.
pub const RTO_EXCEEDED: u8 = 4;
/// No repository configured, or none at the configured location.
pub const NO_REPOSITORY: u8 = 10;
/// The repository is locked.
pub const LOCKED: u8 = 11;
/// Wrong password or key.
pub const WRONG_KEY: u8 = 12;
/// An AWS KMS key cannot be used (missing, disabled, denied, wrong context, no credentials).
pub const KMS_UNUSABLE: u8 = 13;

/// The exit-code table shown at the end of `s3bk --help`.
pub const HELP: &str = "\
Exit codes:
  0   success
  1   error
  2   usage error (bad arguments)
  3   snapshot written, but incomplete (some paths were skipped)
  4   verify --rto: the estimated full restore takes longer than the objective
  10  no repository (none configured, or none at that location)
  11  repository locked by another operation
  12  wrong password or key
  13  KMS key unusable (missing, disabled, access denied, wrong encryption context,
      no AWS credentials or region)

Environment:
  S3BK_PASSWORD          the repository password (checked before any other source)
  S3BK_KMS_KEY_ID        AWS KMS key (id, ARN or alias/NAME) for --kms-key-id
  S3BK_NEW_PASSWORD      the new password for `key add`
  AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_KMS, ...  the AWS SDK's usual configuration
  S3BK_CONFIG            config file (default: $XDG_CONFIG_HOME/s3bk/config.toml)
  RUST_LOG               log filter, overrides -v (e.g. RUST_LOG=s3bk=debug)";

/// An error raised by the CLI itself that carries its exit code.
#[derive(Debug)]
pub struct CodedError {
    /// The exit code.
    pub code: u8,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl CodedError {
    /// An error that ends the program with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl fmt::Display for CodedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodedError {}

/// The exit code for `err`: the first library error or [`CodedError`] in its chain decides.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CodedError>() {
            return e.code;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::NoRepository(_) => NO_REPOSITORY,
                Error::Locked(_) => LOCKED,
                Error::WrongKey(_) | Error::NoKmsKeyFile | Error::NoPassphraseKeyFile => WRONG_KEY,
                Error::Kms(_) => KMS_UNUSABLE,
                _ => ERROR,
            };
        }
    }
    ERROR
}

/// The message for `err`: its chain joined with `: ` like `{:#}`, but without a cause that the
/// message before it already ends with (errors that show their source, like backend errors).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut prev = String::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if !prev.is_empty() && prev.ends_with(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
        prev = s;
    }
    out
}

/// Whether `err` is a write to a closed pipe (`s3bk ls | head`): not worth reporting.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_library_errors_through_context() {
        let e = anyhow::Error::new(Error::WrongKey(1)).context("opening repository");
        assert_eq!(code_for(&e), WRONG_KEY);
        let e = anyhow::Error::new(Error::NoRepository("x".into()));
        assert_eq!(code_for(&e), NO_REPOSITORY);
        let e = anyhow::Error::new(Error::Locked("x".into())).context("a").context("b");
        assert_eq!(code_for(&e), LOCKED);
        assert_eq!(code_for(&anyhow::anyhow!("other")), ERROR);
        let e = anyhow::Error::new(CodedError::new(NO_REPOSITORY, "none"));
        assert_eq!(code_for(&e), NO_REPOSITORY);
        let e = anyhow::Error::new(Error::Kms("disabled".into())).context("opening repository");
        assert_eq!(code_for(&e), KMS_UNUSABLE);
        assert_eq!(code_for(&anyhow::Error::new(Error::NoKmsKeyFile)), WRONG_KEY);
    }

    #[test]
    fn render_drops_repeated_causes() {
        let inner = s3bk::backend::BackendError::Permanent { context: "reading x".into(), source: "denied".into() };
        let e = anyhow::Error::new(Error::from(inner)).context("opening");
        assert_eq!(format!("{e:#}"), "opening: reading x: denied: denied");
        assert_eq!(render(&e), "opening: reading x: denied");
        assert_eq!(render(&anyhow::anyhow!("a").context("b")), "b: a");
    }
}
