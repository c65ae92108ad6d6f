//! Where the repository password comes from, in order: `S3BK_PASSWORD`, a password file, a
//! password command (`sh -c`), a key file (the embedded default repository), and finally a
//! prompt, only when stdin is a terminal. This module owns reading each source and the
//! "no password" message.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

/// Environment variable holding the password itself.
pub const PASSWORD_ENV: &str = "S3BK_PASSWORD";

/// A password, wiped from memory when dropped.
pub type Password = Zeroizing<Vec<u8>>;

/// The non-interactive sources configured for this run.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// A file holding the password.
    pub file: Option<PathBuf>,
    /// A shell command printing it.
    pub command: Option<String>,
}

/// Removes one trailing newline (`\n` or `\r\n`).
fn trim_newline(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    v
}

/// The password from `S3BK_PASSWORD`, if set and not empty.
pub fn from_env() -> Option<Password> {
    std::env::var_os(PASSWORD_ENV).filter(|v| !v.is_empty()).map(|v| Zeroizing::new(v.into_vec()))
}

/// Reads a password file (one trailing newline is not part of the password).
pub fn from_file(path: &Path) -> anyhow::Result<Password> {
    let data = std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let p = Zeroizing::new(trim_newline(data));
    if p.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(p)
}

/// Runs a password command with `sh -c` and returns its output.
pub fn from_command(command: &str) -> anyhow::Result<Password> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running password command `{command}`"))?;
    if !out.status.success() {
        bail!("password command `{command}` failed ({})", out.status);
    }
    let p = Zeroizing::new(trim_newline(out.stdout));
    if p.is_empty() {
        bail!("password command `{command}` printed nothing");
    }
    Ok(p)
}

/// The password from `S3BK_PASSWORD`, then `sources.file`, then `sources.command`; `None` when
/// none of them is configured.
pub fn from_sources(sources: &Sources) -> anyhow::Result<Option<Password>> {
    if let Some(p) = from_env() {
        return Ok(Some(p));
    }
    if let Some(f) = &sources.file {
        return from_file(f).map(Some);
    }
    if let Some(c) = &sources.command {
        return from_command(c).map(Some);
    }
    Ok(None)
}

/// Whether a password can be asked for interactively.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

/// The error for "no password and no terminal to ask on".
fn no_password(repo: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no password for repository {repo}: set {PASSWORD_ENV}, S3BK_PASSWORD_FILE \
         (--password-file) or S3BK_PASSWORD_COMMAND (--password-command), \
         or run s3bk in a terminal to be asked"
    )
}

/// Asks for the password of an existing repository on the terminal.
pub fn prompt(repo: &str) -> anyhow::Result<Password> {
    if !can_prompt() {
        return Err(no_password(repo));
    }
    let p = rpassword::prompt_password(format!("Password for {repo}: "))
        .context("reading the password from the terminal")?;
    Ok(Zeroizing::new(p.into_bytes()))
}

/// Asks for a new password twice on the terminal.
pub fn prompt_new(repo: &str) -> anyhow::Result<Password> {
    if !can_prompt() {
        return Err(no_password(repo));
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("New password for {repo}: "))
            .context("reading the password from the terminal")?,
    );
    if first.is_empty() {
        bail!("the password must not be empty");
    }
    let again = Zeroizing::new(
        rpassword::prompt_password("Repeat the password: ").context("reading the password from the terminal")?,
    );
    if *first != *again {
        bail!("the passwords do not match; nothing was created");
    }
    Ok(Zeroizing::new(first.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_one_newline() {
        assert_eq!(trim_newline(b"pw\n\n".to_vec()), b"pw\n");
        assert_eq!(trim_newline(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(trim_newline(b"pw".to_vec()), b"pw");
    }

    #[test]
    fn command_output_and_failure() {
        assert_eq!(&*from_command("printf 'secret\\n'").unwrap(), b"secret");
        let e = from_command("exit 3").unwrap_err().to_string();
        assert!(e.contains("exit 3"), "{e}");
    }
}
