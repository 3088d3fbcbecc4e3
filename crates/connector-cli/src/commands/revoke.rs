//! `connector revoke NAME`: revoke the refresh token at Zoho and forget it here.

use super::Context;
use crate::exit::Failure;

/// Revoke NAME's refresh token at Zoho and forget it and its token locally.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&["connector revoke crm", "connector revoke crm --user alice"]))]
pub struct Args {
    #[arg(help = super::NAME_HELP, add = super::name_candidates())]
    name: String,
    /// A per-user connector: USER's (their own refresh token, kept apart from every other
    /// user's; the agent serves it at /v1/connectors/NAME/users/USER/token).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let connector = super::connector_for(&ctx.connection()?, &args.name, args.user.as_deref())?;
    let name = connector.name();
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
    crate::agent::client::notify_agent(&args.name, args.user.as_deref()).await;
    if connector.config().has_refresh_token() {
        eprintln!(
            "Note: the config still holds the revoked refresh_token for `{name}`: remove it."
        );
    }
    Ok(())
}
