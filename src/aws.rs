//! AWS SDK configuration: one [`SdkConfig`] for every AWS client s3bk builds, loaded from the
//! standard chain (environment, `AWS_PROFILE`, SSO, web identity, instance roles,
//! `AWS_ENDPOINT_URL[_S3]`) with the few overrides the command line offers, plus the retry,
//! timeout and stalled-stream settings a backup of large packs needs. It also owns the rule that
//! credentials never travel over plain HTTP to anything but this machine.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Overrides of the standard AWS configuration chain; `None` leaves the chain's choice.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    /// The region (else `AWS_REGION`, the profile's, IMDS).
    pub region: Option<String>,
    /// The shared-config profile (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// A custom endpoint such as `http://127.0.0.1:3900` (else `AWS_ENDPOINT_URL[_S3]`).
    pub endpoint_url: Option<String>,
    /// Allow a plain-http endpoint on another host.
    pub insecure_http: bool,
}

/// Why the AWS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("invalid endpoint URL {url:?}: {why}")]
    BadEndpoint {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A plain-http endpoint on another machine, without `--insecure-http`.
    #[error(
        "refusing the plain-http endpoint {0}: requests (and their signatures) would cross the network \
         unencrypted; use https://, or pass --insecure-http if that network is trusted"
    )]
    InsecureEndpoint(String),
    /// No region anywhere in the chain.
    #[error(
        "no AWS region configured: pass --region, set AWS_REGION, or set a region in the AWS profile \
         (for Garage, the s3_region of its config, often \"garage\")"
    )]
    NoRegion,
}

/// The host part of an `http(s)://[user@]host[:port][/path]` URL, without IPv6 brackets.
fn url_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then_some((scheme, host))
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// Accepts an `https://` endpoint, or an `http://` one on a loopback host or with
/// `insecure_http`; refuses anything else with the flag to use.
pub fn check_endpoint(url: &str, insecure_http: bool) -> Result<(), AwsError> {
    let bad = |why: &str| AwsError::BadEndpoint { url: url.to_owned(), why: why.to_owned() };
    let (scheme, host) = url_host(url).ok_or_else(|| bad("expected http(s)://HOST[:PORT]"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if insecure_http || is_loopback_host(host) => Ok(()),
        "http" => Err(AwsError::InsecureEndpoint(url.to_owned())),
        _ => Err(bad("the scheme must be http or https")),
    }
}

/// The endpoint the SDK would use from the environment when none is given explicitly.
fn env_endpoint() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// Loads the shared SDK configuration. Fails without a region, or on an endpoint that
/// [`check_endpoint`] refuses (an explicit one or one from `AWS_ENDPOINT_URL[_S3]`).
pub async fn load(opts: &AwsOptions) -> Result<SdkConfig, AwsError> {
    if let Some(url) = opts.endpoint_url.clone().or_else(env_endpoint) {
        check_endpoint(&url, opts.insecure_http)?;
    }
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        // A 16 MiB part on a slow uplink; the read timeout catches a dead connection sooner.
        .operation_attempt_timeout(Duration::from_secs(300))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // Adaptive: a thousand clients hitting 503 SlowDown back off together instead of hammering.
        .retry_config(RetryConfig::adaptive().with_max_attempts(10))
        .timeout_config(timeouts)
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().build());
    if let Some(profile) = &opts.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &opts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsError::NoRegion);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "https://s3.example.com",
            "http://127.0.0.1:9000",
            "http://127.8.0.1",
            "http://localhost:3900/",
            "http://[::1]:5000",
            "http://user@LOCALHOST:1",
        ] {
            check_endpoint(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for insecure in ["http://10.0.0.5:9000", "http://minio.lan", "http://[fe80::1]:80", "http://localhost.evil.com"]
        {
            let e = check_endpoint(insecure, false).unwrap_err();
            assert!(matches!(e, AwsError::InsecureEndpoint(_)), "{insecure}: {e}");
            assert!(e.to_string().contains("--insecure-http"), "{e}");
            check_endpoint(insecure, true).unwrap();
        }
        for bad in ["ftp://host", "127.0.0.1:9000", "http://", "http://[::1"] {
            assert!(matches!(check_endpoint(bad, true), Err(AwsError::BadEndpoint { .. })), "{bad}");
        }
    }
}
