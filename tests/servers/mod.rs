//! Local S3 servers for tests: `moto_server` (AWS behaviour, honours `If-None-Match`) and a
//! single-node Garage (a real S3-compatible store that ignores conditional writes). Each test
//! starts its own server on free loopback ports and the server is killed when the handle drops.
//! A missing server binary fails the test with the command that installs it: these tests are
//! never skipped.
#![allow(dead_code)]

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use s3bk::backend::{S3Backend, S3Options};
use tempfile::TempDir;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// moto_server.
    Moto,
    /// Garage 2.x, single node.
    Garage,
}

/// A running server; killed on drop.
pub struct Server {
    pub kind: Kind,
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// A bucket that exists (Garage's default bucket; created on moto).
    pub bucket: String,
    dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `bin` on PATH (or in ~/.cargo/bin), or fails the test naming the install command.
fn require(bin: &str, install: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("`{bin}` is not installed (not on PATH); install it with `{install}` (.ci/run does this when missing)")
    })
}

fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (the listeners are held together, so they cannot coincide).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    text[text.floor_char_boundary(start)..].to_owned()
}

impl Server {
    /// Waits until the port accepts connections; fails if the process dies or 60 s pass.
    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let log = self.dir.path().join("server.log");
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{:?} exited with {status} before listening:\n{}", self.kind, log_tail(&log));
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen on {port} within 60 s:\n{}",
                self.kind,
                log_tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts moto_server and creates a bucket.
    pub async fn moto() -> Self {
        let bin = require("moto_server", "pip install 'moto[server]' awscrt");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let mut s = Server {
            kind: Kind::Moto,
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".to_owned(),
            access_key: "testing".to_owned(),
            secret_key: "testing".to_owned(),
            bucket: "s3bk-test".to_owned(),
            dir,
        };
        s.wait_for_port(port);
        if let Err(e) = s.wait_for_s3(|c| c.create_bucket().bucket("s3bk-test").send()).await {
            panic!("{e}");
        }
        s
    }

    /// Starts a single-node Garage with a default key and bucket.
    pub async fn garage() -> Self {
        // A port taken by another test's server between choosing and binding it shows up as a
        // server that never answers: start afresh on other ports.
        let mut why = String::new();
        for _ in 0..3 {
            match Self::start_garage().await {
                Ok(s) => return s,
                Err(e) => why = e,
            }
        }
        panic!("{why}");
    }

    async fn start_garage() -> Result<Self, String> {
        let bin = require("garage", "cargo install garage --locked");
        let dir = tempfile::tempdir().unwrap();
        let [rpc, s3] = free_ports::<2>();
        let d = dir.path();
        let conf = d.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
                meta = d.join("meta").display(),
                data = d.join("data").display(),
                secret = random_hex(32),
            ),
        )
        .unwrap();
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let log = File::create(d.join("server.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
            .env("GARAGE_DEFAULT_BUCKET", "s3bk-test")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        let mut s = Server {
            kind: Kind::Garage,
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage".to_owned(),
            access_key,
            secret_key,
            bucket: "s3bk-test".to_owned(),
            dir,
        };
        s.wait_for_port(s3);
        // The layout and the default bucket appear shortly after the port opens.
        s.wait_for_s3(|c| c.head_bucket().bucket("s3bk-test").send()).await?;
        Ok(s)
    }

    /// Retries `op` until it succeeds (the server is ready) or 60 s pass.
    async fn wait_for_s3<F, Fut, T, E>(&mut self, op: F) -> Result<(), String>
    where
        F: Fn(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Debug,
    {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match op(client.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "{:?} exited with {status}:\n{}",
                            self.kind,
                            log_tail(&self.dir.path().join("server.log"))
                        );
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "{:?} not ready within 60 s: {e:?}\n{}",
                            self.kind,
                            log_tail(&self.dir.path().join("server.log"))
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// SDK configuration for this server, with its credentials (not the environment's).
    pub fn sdk(&self) -> aws_config::SdkConfig {
        self.sdk_with(&self.access_key, &self.secret_key)
    }

    /// SDK configuration with other credentials.
    pub fn sdk_with(&self, access_key: &str, secret_key: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
                access_key, secret_key, None, None, "test",
            )))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
            .build()
    }

    /// A raw client (path-style).
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&self.sdk()).force_path_style(true).build())
    }

    /// A backend on this server's bucket under `prefix`.
    pub fn backend(&self, prefix: &str) -> Arc<S3Backend> {
        Arc::new(S3Backend::new(&self.sdk(), &self.bucket, prefix, S3Options::default()))
    }

    /// Environment for the `s3bk` binary to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
        ]
    }
}
