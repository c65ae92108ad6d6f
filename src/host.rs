//! Facts about the machine and user running s3bk, recorded in snapshots and key files.

/// The host name (`HOSTNAME`-independent: asks the kernel).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The user name, from the environment, else the numeric uid.
pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| rustix::process::getuid().as_raw().to_string())
}
