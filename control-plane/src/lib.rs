//! Isola's control plane: the store, the blob store, the upload API, the checks an upload
//! passes, the PKI of the control channel and its QUIC endpoint. The
//! `isola-control` binary is a thin command line over these; tests drive
//! the API in-process.

#![forbid(unsafe_code)]

pub mod api;
pub mod billing;
pub mod blobs;
pub mod config;
pub mod db;
pub mod dns;
pub mod fleet;
pub mod kv;
pub mod lease;
pub mod observe;
pub mod pki;
pub mod queues;
pub mod quic;
pub mod scheduler;
pub mod secrets;
pub mod telemetry;
pub mod validate;
