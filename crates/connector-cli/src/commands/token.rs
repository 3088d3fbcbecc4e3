//! `connector token NAME`: print a valid access token.

use super::{Context, print_json, token_json};
use crate::exit::Failure;
use catalyst_connectors::ExposeSecret;

pub async fn run(ctx: &Context, name: &str, json: bool, header: bool) -> Result<(), Failure> {
    let token = ctx.connector(name)?.access_token().await?;
    if json {
        print_json(&token_json(&token));
    } else if header {
        println!("Authorization: {}", token.authorization_header());
    } else {
        println!("{}", token.expose_secret());
    }
    Ok(())
}
