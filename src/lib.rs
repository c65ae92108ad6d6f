//! s3bk: deduplicated, incremental, encrypted backups to Amazon S3, S3-compatible stores or a
//! local directory.
//!
//! The library is silent: it reports progress through [`progress::Progress`] and logs through
//! `tracing`; all printing lives in the binary.

pub mod archiver;
pub mod aws;
pub mod backend;
pub mod browse;
pub mod cache;
pub mod checker;
pub mod chunker;
pub mod codec;
pub mod compress;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod fsmeta;
pub mod host;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod kms;
pub mod lease;
pub mod pack;
pub mod plancheck;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restorer;
pub mod restoretest;
pub mod snapshot;
pub mod tree;
pub mod treecache;
