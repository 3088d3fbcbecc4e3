//! `connector token NAME`: print a valid access token.

use super::{
    Context, NAME_HELP, Place, Tokens, name_candidates, print_json, token_json, with_examples,
};
use crate::exit::Failure;
use catalyst_connectors::{AccessTokenSecret, Connection, ExposeSecret};
use std::time::{Duration, SystemTime};

/// Print a valid access token for connector NAME.
///
/// The token printed is before its refresh point (never one about to expire): if the cached
/// one is not, this waits for a refresh. If Zoho cannot be reached, a token that is still
/// valid is printed with a warning. With CONNECTOR_AGENT set (a socket path, or
/// http://127.0.0.1:PORT with CONNECTOR_AGENT_TOKEN_FILE), the running agent is asked
/// instead of the stores (no config needed; --no-agent opens the stores anyway).
#[derive(clap::Args, Debug)]
#[command(after_help = with_examples(&[
    "connector token crm",
    "curl -H \"$(connector token crm --header)\" https://www.zohoapis.com/crm/v8/users",
    "connector token crm --min-ttl 30m --json",
    "connector token crm --user alice",
]))]
pub struct Args {
    #[arg(help = NAME_HELP, add = name_candidates())]
    pub(crate) name: String,
    /// Print JSON: access_token, expires_at and refresh_at (Unix seconds), api_domain.
    #[arg(long, conflicts_with = "header")]
    json: bool,
    /// Print the HTTP header: `Authorization: Zoho-oauthtoken …`.
    #[arg(long)]
    header: bool,
    /// The token must stay valid at least this long (e.g. 90s, 10m, 1h); refreshes first if
    /// it would not.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    pub(crate) min_ttl: Duration,
    /// A token past its refresh point (its refresh failed) is printed only with at least this
    /// much life left; less exits 5 (throttled) or 6 (transient), saying when to retry.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = super::DEFAULT_FLOOR)]
    floor: Duration,
    /// A per-user connector: USER's (their own refresh token, kept apart from every other
    /// user's; the agent serves it at /v1/connectors/NAME/users/USER/token).
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    #[command(flatten)]
    pub(super) place: Place,
}

/// How much time a refresh still running when the command is done may take to finish.
const SETTLE: Duration = Duration::from_secs(5);

/// What to print: the token, its JSON or its header.
pub(crate) struct Printed {
    access_token: AccessTokenSecret,
    json: serde_json::Value,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let printed = match ctx.tokens()? {
        Tokens::Agent(agent) => {
            let body = agent
                .token(&args.name, args.user.as_deref(), args.min_ttl)
                .await?;
            from_agent(&args, &body)?
        }
        Tokens::Stores(connection) => {
            let asked = (args.user.as_deref(), args.min_ttl, args.floor);
            from_stores(ctx, &connection, &args.name, asked).await?
        }
    };
    print(&args, &printed);
    Ok(())
}

/// The agent's answer to `GET …/token` (its body), held to `--floor`.
pub(crate) fn from_agent(args: &Args, body: &serde_json::Value) -> Result<Printed, Failure> {
    let at = |k: &str| SystemTime::UNIX_EPOCH + Duration::from_secs(body[k].as_u64().unwrap_or(0));
    super::check_floor(
        &args.name,
        at("refresh_at"),
        at("expires_at"),
        args.floor,
        None,
    )?;
    let json = serde_json::json!({
        "access_token": body["access_token"],
        "expires_at": body["expires_at"],
        "refresh_at": body["refresh_at"],
        "api_domain": body["api_domain"],
    });
    Ok(Printed {
        access_token: AccessTokenSecret::new(
            body["access_token"].as_str().unwrap_or_default().to_owned(),
        ),
        json,
    })
}

/// Prints the token, its JSON or its header, as asked.
pub(crate) fn print(args: &Args, printed: &Printed) {
    if args.json {
        print_json(&printed.json);
    } else if args.header {
        let token = printed.access_token.expose_secret();
        println!("Authorization: Zoho-oauthtoken {token}");
    } else {
        println!("{}", printed.access_token.expose_secret());
    }
}

/// The token from this process's own connection.
async fn from_stores(
    ctx: &Context,
    connection: &Connection,
    name: &str,
    (user, min_ttl, floor): (Option<&str>, Duration, Duration),
) -> Result<Printed, Failure> {
    let connector = super::connector_for(connection, name, user)?;
    let name = connector.name();
    let token = connector.access_token_valid_for(min_ttl).await;
    // A refresh this process started must not die with it.
    connection.settle(SETTLE).await;
    let token = match token {
        Ok(t) => t,
        Err(e) => return Err(ctx.explain(&connector, e).await),
    };
    if token.refresh_at() <= SystemTime::now() {
        let failed = connector.status().await.last_error.map(|(e, _)| e);
        super::check_floor(
            name,
            token.refresh_at(),
            token.expires_at(),
            floor,
            failed.as_ref(),
        )?;
        let why = failed
            .map(|e| e.to_string())
            .unwrap_or_else(|| "the refresh did not complete".into());
        ctx.warn(format!(
            "connector `{name}`: this token is past its refresh point (it expires {}); refreshing failed: {why}",
            crate::output::relative(Some(token.expires_at()))
        ));
    }
    Ok(Printed {
        access_token: token.secret().clone(),
        json: token_json(&token),
    })
}
