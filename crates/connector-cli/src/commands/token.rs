//! `connector token NAME`: print a valid access token.

use super::{Context, print_json, token_json};
use crate::exit::Failure;
use catalyst_connectors::ExposeSecret;
use std::time::{Duration, SystemTime};

/// How much time a refresh still running when the command is done may take to finish.
const SETTLE: Duration = Duration::from_secs(5);

/// What to print.
pub enum Format {
    Raw,
    Json,
    Header,
}

impl Format {
    pub fn from_flags(json: bool, header: bool) -> Self {
        match (json, header) {
            (true, _) => Format::Json,
            (_, true) => Format::Header,
            _ => Format::Raw,
        }
    }
}

pub async fn run(
    ctx: &Context,
    name: &str,
    format: Format,
    min_ttl: Duration,
) -> Result<(), Failure> {
    let connection = ctx.connection()?;
    let connector = connection.connector(name)?;
    let token = connector.access_token_valid_for(min_ttl).await;
    // A refresh this process started must not die with it.
    connection.settle(SETTLE).await;
    let token = match token {
        Ok(t) => t,
        Err(e) => return Err(ctx.explain(&connector, e).await),
    };
    if token.refresh_at() <= SystemTime::now() {
        let why = connector
            .status()
            .await
            .last_error
            .map(|(e, _)| e.to_string())
            .unwrap_or_else(|| "the refresh did not complete".into());
        ctx.warn(format!(
            "connector `{name}`: this token is past its refresh point (it expires {}); refreshing failed: {why}",
            crate::output::relative(Some(token.expires_at()))
        ));
    }
    match format {
        Format::Json => print_json(&token_json(&token)),
        Format::Header => println!("Authorization: {}", token.authorization_header()),
        Format::Raw => println!("{}", token.expose_secret()),
    }
    Ok(())
}
