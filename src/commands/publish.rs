//! `goldsmith publish` commands.

use super::{not_yet, Ctx};
use crate::cli::{
    FetchArgs, GcArgs, KeygenArgs, ListArgs, PromoteArgs, PublishArgs, RevokeArgs, ShowArgs,
    VerifySignatureArgs,
};

pub async fn publish(_ctx: &Ctx, _args: PublishArgs) -> anyhow::Result<u8> {
    not_yet("publish")
}

pub async fn promote(_ctx: &Ctx, _args: PromoteArgs) -> anyhow::Result<u8> {
    not_yet("promote")
}

pub async fn revoke(_ctx: &Ctx, _args: RevokeArgs) -> anyhow::Result<u8> {
    not_yet("revoke")
}

pub async fn list(_ctx: &Ctx, _args: ListArgs) -> anyhow::Result<u8> {
    not_yet("list")
}

pub async fn show(_ctx: &Ctx, _args: ShowArgs) -> anyhow::Result<u8> {
    not_yet("show")
}

pub async fn fetch(_ctx: &Ctx, _args: FetchArgs) -> anyhow::Result<u8> {
    not_yet("fetch")
}

pub async fn gc(_ctx: &Ctx, _args: GcArgs) -> anyhow::Result<u8> {
    not_yet("gc")
}

pub async fn keygen(_ctx: &Ctx, _args: KeygenArgs) -> anyhow::Result<u8> {
    not_yet("keygen")
}

pub async fn verify_signature(_ctx: &Ctx, _args: VerifySignatureArgs) -> anyhow::Result<u8> {
    not_yet("verify-signature")
}
