//! `connector refresh NAME`: mint a new token now.

use super::{Context, print_json, token_json};
use crate::exit::Failure;
use crate::output;

/// Mint a new token for NAME now, even if the cached one is fresh.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&["connector refresh crm", "connector refresh crm --json"]))]
pub struct Args {
    #[arg(help = super::NAME_HELP, add = super::name_candidates())]
    name: String,
    /// Print JSON: access_token, expires_at and refresh_at (Unix seconds), api_domain.
    #[arg(long)]
    json: bool,
    /// A per-user connector: USER's (their own refresh token, kept apart from every other
    /// user's; the agent serves it at /v1/connectors/NAME/users/USER/token).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let json = args.json;
    let connector = super::connector_for(&ctx.connection()?, &args.name, args.user.as_deref())?;
    let name = connector.name();
    let token = match connector.force_refresh().await {
        Ok(t) => t,
        Err(e) => return Err(ctx.explain(&connector, e).await),
    };
    crate::agent::client::notify_agent(&args.name, args.user.as_deref()).await;
    if json {
        print_json(&token_json(&token));
    } else {
        println!(
            "Connector `{name}`: new token, expires {}",
            output::relative(Some(token.expires_at()))
        );
    }
    Ok(())
}
