//! `connector refresh NAME`: mint a new token now.

use super::{Context, print_json, token_json};
use crate::exit::Failure;
use crate::output;

pub async fn run(ctx: &Context, name: &str, json: bool) -> Result<(), Failure> {
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
