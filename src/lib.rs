//! goldsmith: a nightly golden-image and VM-template build pipeline.
//!
//! Data flows one way through the stages, each taking the previous stage's value:
//! recipe -> plan -> rootfs -> disk -> formats -> verify -> publish -> rollout.

pub mod artifact;
pub mod build;
pub mod cli;
pub mod commands;
pub mod config;
pub mod disk;
pub mod doctor;
pub mod exec;
pub mod format;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod leakscan;
pub mod nightly;
pub mod plan;
pub mod publish;
pub mod recipe;
pub mod report;
pub mod rollout;
pub mod rootfs;
pub mod rootless;
pub mod store;
pub mod verify;

/// The goldsmith version recorded in manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
