//! `connector revoke NAME`: revoke the refresh token at Zoho and forget it here.

use super::Context;
use crate::exit::Failure;

pub async fn run(ctx: &Context, name: &str) -> Result<(), Failure> {
    let connector = ctx.connection()?.connector(name)?;
    match connector.revoke().await {
        Ok(()) => {}
        Err(catalyst_connectors::Error::Transient { detail, .. }) => {
            return Err(crate::exit::Failure::new(
                crate::exit::Exit::Transient,
                format!(
                    "connector `{name}`: the revoke endpoint could not be reached ({detail}); nothing was revoked or forgotten"
                ),
            )
            .hint("retry when Zoho Accounts can be reached"));
        }
        Err(e) => return Err(e.into()),
    }
    println!("Connector `{name}`: refresh token revoked at Zoho and forgotten here.");
    if connector.config().has_refresh_token() {
        eprintln!(
            "Note: the config still holds the revoked refresh_token for `{name}`: remove it."
        );
    }
    Ok(())
}
