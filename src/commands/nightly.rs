//! `goldsmith nightly` commands.

use super::{not_yet, Ctx};
use crate::cli::NightlyArgs;

pub async fn nightly(_ctx: &Ctx, _args: NightlyArgs) -> anyhow::Result<u8> {
    not_yet("nightly")
}
