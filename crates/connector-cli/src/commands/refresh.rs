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
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let (name, json) = (args.name.as_str(), args.json);
    let connector = ctx.connection()?.connector(name)?;
    let token = match connector.force_refresh().await {
        Ok(t) => t,
        Err(e) => return Err(ctx.explain(&connector, e).await),
    };
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
