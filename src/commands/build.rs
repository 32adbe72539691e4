//! `goldsmith build` commands.

use super::{not_yet, Ctx};
use crate::cli::{BuildArgs, LockArgs};

pub async fn build(_ctx: &Ctx, _args: BuildArgs) -> anyhow::Result<u8> {
    not_yet("build")
}

pub async fn lock(_ctx: &Ctx, _args: LockArgs) -> anyhow::Result<u8> {
    not_yet("lock")
}
