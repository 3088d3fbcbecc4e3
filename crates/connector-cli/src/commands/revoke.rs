//! `connector revoke NAME`: revoke the refresh token at Zoho and forget it here.

use super::Context;
use crate::exit::Failure;

pub async fn run(ctx: &Context, name: &str) -> Result<(), Failure> {
    let connector = ctx.connection()?.connector(name)?;
    connector.revoke().await?;
    println!("Connector `{name}`: refresh token revoked at Zoho and forgotten here.");
    if connector.config().has_refresh_token() {
        eprintln!(
            "Note: the config still holds the revoked refresh_token for `{name}`: remove it."
        );
    }
    Ok(())
}
