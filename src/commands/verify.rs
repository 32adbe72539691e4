//! `goldsmith verify` commands.

use super::{not_yet, Ctx};
use crate::cli::{BootArgs, VerifyArgs};

pub async fn verify(_ctx: &Ctx, _args: VerifyArgs) -> anyhow::Result<u8> {
    not_yet("verify")
}

pub async fn boot(_ctx: &Ctx, _args: BootArgs) -> anyhow::Result<u8> {
    not_yet("boot")
}
