//! The publish stage: immutable versions, manifests, SBOMs, signatures, channels, targets.

pub mod model;
