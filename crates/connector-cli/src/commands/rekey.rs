//! `connector rekey [NAME…]`: rewrite stored tokens with the current encryption key.

use super::Context;
use crate::exit::{Exit, Failure};

/// Rewrite the stored tokens with the current encryption key — the first of
/// CONNECTOR_ENCRYPTION_KEY (or of the key file): the last step of a key rotation, or of setting
/// a key on a store kept unencrypted.
///
/// To rotate: list the new key first and the old one after it (`CONNECTOR_ENCRYPTION_KEY="NEW
/// OLD"`, or two lines in the key file), reload every process using the store, run `connector
/// rekey`, then drop the old key. Records stored unencrypted are read by this command only.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "CONNECTOR_ENCRYPTION_KEY=\"$NEW $OLD\" connector rekey",
    "connector rekey crm --user alice",
]))]
pub struct Args {
    /// Connectors to rekey (default: every connector in the config).
    #[arg(value_name = "NAME", add = super::name_candidates())]
    names: Vec<String>,
    /// Per-user connectors: USER's records (users are not listed by the store: name each).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let connection = ctx.connection_with(|b| b.reading_plaintext_records())?;
    let Some(key_id) = connection.encryption_key_id().map(str::to_owned) else {
        return Err(Failure::new(
            Exit::Config,
            "no encryption key is set: there is nothing to rekey to",
        )
        .hint("set CONNECTOR_ENCRYPTION_KEY (or CONNECTOR_ENCRYPTION_KEY_FILE) to the new key first, then the old one"));
    };
    let names: Vec<String> = if args.names.is_empty() {
        connection.connector_names().map(str::to_owned).collect()
    } else {
        args.names
    };
    let mut first_failure = None;
    for name in &names {
        let connector = super::connector_for(&connection, name, args.user.as_deref())?;
        match connector.rekey().await {
            Ok(done) => {
                let what = match (done.refresh_token, done.access_token) {
                    (true, _) => "refresh token and access token",
                    (false, true) => "access token (its refresh token is in the config)",
                    (false, false) => "nothing stored",
                };
                println!(
                    "Connector `{}`: {what} rewritten with key {key_id}.",
                    connector.name()
                );
                crate::agent::client::notify_agent(name, args.user.as_deref()).await;
            }
            // The first failure is the command's (printed with its hint at exit); later ones
            // are printed as they come.
            Err(e) if first_failure.is_some() => eprintln!("error: {e}"),
            Err(e) => first_failure = Some(ctx.explain(&connector, e).await),
        }
    }
    first_failure.map_or(Ok(()), Err)
}
