//! `connector exchange NAME --code CODE`: exchange a Self Client grant code.

use super::Context;
use crate::exit::{Exit, Failure};
use catalyst_connectors::{Connector, ExposeSecret, GeneratedTokens, GrantCode};

/// Exchange a Self Client grant code (pasted from Zoho's API console) and store the refresh
/// token.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector exchange books --code 1000.4a5b…",
    "connector exchange crm --user alice --code 1000.4a5b…",
]))]
pub struct Args {
    #[arg(help = super::NAME_HELP, add = super::name_candidates())]
    name: String,
    /// The grant code from Zoho's API console (Self Client → Generate Code; valid minutes).
    #[arg(long, value_parser = |s: &str| Ok::<_, std::convert::Infallible>(GrantCode::new(s)))]
    code: GrantCode,
    /// A per-user connector: USER's (their own refresh token, kept apart from every other
    /// user's; the agent serves it at /v1/connectors/NAME/users/USER/token).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let connection = ctx.connection()?;
    let connector = super::connector_for(&connection, &args.name, args.user.as_deref())?;
    let generated = connector.generate_access_token(&args.code).await?;
    report_stored(ctx, &connector, &generated, connection.store_is_shared())?;
    crate::agent::client::notify_agent(&args.name, args.user.as_deref()).await;
    Ok(())
}

/// After a code exchange: says where the refresh token went, and fails (printing the refresh
/// token on stdout, so the spent grant code is not wasted) when it could not be kept.
pub fn report_stored(
    ctx: &Context,
    connector: &Connector,
    generated: &GeneratedTokens,
    shared_store: bool,
) -> Result<(), Failure> {
    let name = connector.name();
    let Some(refresh_token) = &generated.refresh_token else {
        return Err(Failure::new(
            Exit::Reauthorize,
            format!("connector `{name}`: Zoho returned no refresh token"),
        )
        .hint("ask for offline access: Self Client codes need it ticked; server-based consent needs access_type=offline and prompt=consent"));
    };
    let stored = generated.access_token.generation().is_some();
    if !stored || !shared_store {
        println!("{}", refresh_token.expose_secret());
        let failure = if stored {
            Failure::new(
                Exit::Config,
                format!(
                    "connector `{name}`: the token store is memory, so the refresh token was not kept; it is printed above"
                ),
            )
        } else {
            Failure::new(
                Exit::Transient,
                format!(
                    "connector `{name}`: the refresh token could not be written to the token store; it is printed above"
                ),
            )
        };
        return Err(failure.hint(format!(
            "put it in the config as `refresh_token` of `{name}`, or fix the store and authorize again"
        )));
    }
    eprintln!("Connector `{name}` is authorized; its refresh token is in the token store.");
    if connector.config().has_refresh_token() {
        let file = ctx
            .config_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "the config".into());
        ctx.warn(format!(
            "the config's refresh_token for `{name}` takes precedence over the new one: delete the `refresh_token` entry of `{name}` in {file}"
        ));
    }
    Ok(())
}
