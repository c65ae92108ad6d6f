//! s3bk: deduplicated, incremental, encrypted backups to Amazon S3, S3-compatible stores or a
//! local directory.
//!
//! The library is silent: it reports progress through [`progress::Progress`] and logs through
//! `tracing`; all printing lives in the binary.

pub mod backend;
pub mod codec;
pub mod fsmeta;
pub mod id;
pub mod tree;
