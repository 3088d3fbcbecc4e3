//! `connector status`: every connector's token state, schedule, mints and last error.

use super::{Context, print_json};
use crate::exit::Failure;
use crate::output;
use catalyst_connectors::{Connection, TokenState};
use serde_json::json;

pub async fn run(ctx: &Context, json: bool) -> Result<(), Failure> {
    show(ctx.connection()?, json).await
}

async fn show(connection: Connection, json: bool) -> Result<(), Failure> {
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "STATE".into(),
        "SOURCE".into(),
        "EXPIRES".into(),
        "NEXT REFRESH".into(),
        "MINTS/10MIN".into(),
        "LAST ERROR".into(),
    ]];
    let mut out = Vec::new();
    for name in connection.connector_names() {
        let connector = connection.connector(name)?;
        // Load what the store holds, without minting.
        let cached = connector.cached_token().await;
        let status = connector.status().await;
        let state = match status.state {
            TokenState::Empty => "none",
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Expired => "expired",
            _ => "?",
        };
        let source = match status.source {
            Some(catalyst_connectors::TokenSource::Store) => "store",
            Some(catalyst_connectors::TokenSource::Minted) => "minted",
            _ => "-",
        };
        let last_error = match (&status.last_error, &cached) {
            (Some((e, _)), _) => e.to_string(),
            (None, Err(e)) => e.to_string(),
            _ => "-".into(),
        };
        out.push(json!({
            "name": name,
            "state": state,
            "source": if source == "-" { None } else { Some(source) },
            "expires_at": status.expires_at.map(output::epoch_secs),
            "refresh_at": status.refresh_at.map(output::epoch_secs),
            "mints_in_window": status.mints_in_window,
            "mint_limit": status.mint_limit,
            "last_error": if last_error == "-" { None } else { Some(last_error.clone()) },
        }));
        rows.push(vec![
            name.to_owned(),
            state.into(),
            source.into(),
            output::relative(status.expires_at),
            output::relative(status.refresh_at),
            format!("{}/{}", status.mints_in_window, status.mint_limit),
            last_error,
        ]);
    }
    if json {
        print_json(&serde_json::Value::Array(out));
    } else {
        print!("{}", output::table(&rows, output::stdout_colour()));
    }
    Ok(())
}
