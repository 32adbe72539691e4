//! The publish stage: immutable versions, manifests, SBOMs, signatures, channels, targets.

pub mod ami;
pub mod model;
pub mod oci_layout;
pub mod registry;
pub mod retry;
