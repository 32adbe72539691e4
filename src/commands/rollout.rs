//! `goldsmith rollout` commands.

use super::{not_yet, Ctx};
use crate::cli::RolloutCommand;

pub async fn rollout(_ctx: &Ctx, _args: RolloutCommand) -> anyhow::Result<u8> {
    not_yet("rollout")
}
