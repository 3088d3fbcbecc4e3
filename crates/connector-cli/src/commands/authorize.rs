//! `connector authorize`: the server-based client flow with a loopback redirect.

use super::Context;
use crate::exit::{Exit, Failure};
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use catalyst_connectors::urls;
use catalyst_connectors::{CodeExchange, Connector, GeneratedTokens, GrantCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use url::Url;

/// What the browser brought back.
struct Redirect {
    code: String,
    accounts_server: Option<String>,
}

/// Authorize connector NAME in a browser (server-based client) and store its refresh token.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector authorize crm --scope ZohoCRM.modules.ALL,ZohoCRM.users.READ",
    "connector authorize crm --scope ZohoCRM.users.READ --no-browser --port 0",
    "connector authorize crm --user alice --scope ZohoCRM.users.READ",
]))]
pub struct Args {
    #[arg(help = super::NAME_HELP, add = super::name_candidates())]
    name: String,
    /// Comma-separated scopes, e.g. ZohoCRM.modules.ALL,ZohoCRM.users.READ.
    #[arg(long)]
    scope: String,
    /// Loopback port for the redirect (http://127.0.0.1:PORT/callback); 0 picks a free one.
    /// Not allowed when the connector's redirect_url is a loopback URL: that URL's port is
    /// used.
    #[arg(long)]
    port: Option<u16>,
    /// Print the consent URL only; do not open a browser.
    #[arg(long)]
    no_browser: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    timeout: u64,
    /// A per-user connector: USER's (their own refresh token, kept apart from every other
    /// user's; the agent serves it at /v1/connectors/NAME/users/USER/token).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub struct Options {
    pub scope: String,
    /// `None`: the default port (or redirect_url's).
    pub port: Option<u16>,
    pub open_browser: bool,
    pub timeout: Duration,
}

fn fail(exit: Exit, message: impl Into<String>, hint: Option<&str>) -> Failure {
    Failure {
        exit,
        message: message.into(),
        hint: hint.map(str::to_owned),
    }
}

/// The loopback port of the default redirect URI, `http://127.0.0.1:8765/callback`.
const DEFAULT_PORT: u16 = 8765;

/// Where the redirect lands: the connector's `redirect_url` when it is a loopback http URL (it
/// must be registered with the client), else `http://127.0.0.1:<port>/callback`.
fn redirect_target(
    connector: &Connector,
    port: Option<u16>,
) -> Result<(SocketAddr, String, Option<Url>), Failure> {
    if let Some(configured) = connector.config().redirect_url() {
        let url = Url::parse(configured).map_err(|e| {
            fail(
                Exit::Config,
                format!("redirect_url is not a URL: {e}"),
                None,
            )
        })?;
        let loopback = urls::is_loopback(&url);
        if url.scheme() == "http" && loopback {
            if let Some(asked) = port {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "--port {asked} cannot be used: connector `{}` has redirect_url {configured}, whose port Zoho redirects to",
                        connector.name()
                    ),
                    Some(
                        "drop --port, or change redirect_url (and the client's registered redirect URI)",
                    ),
                ));
            }
            let port = url.port_or_known_default().unwrap_or(80);
            let ip = if url.host_str() == Some("[::1]") {
                "[::1]"
            } else {
                "127.0.0.1"
            };
            let addr: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| {
                fail(
                    Exit::Config,
                    format!("cannot listen for redirect_url: {e}"),
                    None,
                )
            })?;
            return Ok((addr, url.path().to_owned(), Some(url)));
        }
        return Err(fail(
            Exit::Config,
            format!(
                "connector `{}` has redirect_url {configured}, which this command cannot receive (it listens on loopback only)",
                connector.name()
            ),
            Some(
                "register http://127.0.0.1:8765/callback for the client and set it as redirect_url, or remove redirect_url",
            ),
        ));
    }
    Ok((
        SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(DEFAULT_PORT))),
        "/callback".into(),
        None,
    ))
}

/// `connector authorize NAME`: runs the flow, then reports where the refresh token went.
pub async fn command(ctx: &Context, args: Args) -> Result<(), Failure> {
    let options = Options {
        scope: args.scope,
        port: args.port,
        open_browser: !args.no_browser,
        timeout: Duration::from_secs(args.timeout),
    };
    let connection = ctx.connection()?;
    let connector = super::connector_for(&connection, &args.name, args.user.as_deref())?;
    let generated = run(connector.clone(), options).await?;
    super::exchange::report_stored(ctx, &connector, &generated, connection.store_is_shared())?;
    crate::agent::client::notify_agent(&args.name, args.user.as_deref()).await;
    Ok(())
}

/// The server-based flow with a loopback redirect; returns what the code exchange gave.
pub async fn run(connector: Connector, options: Options) -> Result<GeneratedTokens, Failure> {
    let name = connector.name().to_owned();
    let (addr, path, configured) = redirect_target(&connector, options.port)?;
    let busy_hint = if configured.is_some() {
        "free that port: the connector's redirect_url fixes it"
    } else {
        "free the port, or pass --port (and register that redirect URI for the client)"
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        fail(
            Exit::Unexpected,
            format!("cannot listen on {addr} for the redirect: {e}"),
            Some(busy_hint),
        )
    })?;
    let local = listener.local_addr().map_err(|e| {
        fail(
            Exit::Unexpected,
            format!("cannot read the listening address: {e}"),
            None,
        )
    })?;
    let redirect_uri = match configured {
        Some(url) => url.to_string(),
        None => format!("http://127.0.0.1:{}{path}", local.port()),
    };
    let state = format!("{:032x}", rand::random::<u128>());
    let consent = urls::consent_url(
        connector.config().auth_url(),
        connector.config().client_id(),
        &options.scope,
        &redirect_uri,
        &state,
    )
    .map_err(|e| {
        fail(
            Exit::Config,
            format!("cannot build the consent URL from auth_url: {e}"),
            None,
        )
    })?;

    let (tx, rx) = mpsc::channel::<Result<Redirect, String>>(1);
    let shared = Arc::new(CallbackState {
        state: state.clone(),
        connector: name.clone(),
        tx: Mutex::new(Some(tx)),
    });
    let app = Router::new()
        .route(&path, get(callback))
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    eprintln!("Open this URL in a browser to authorize connector `{name}`:");
    println!("{consent}");
    if options.open_browser {
        open_browser(consent.as_str());
    } else {
        // Headless (a server, over ssh): the browser runs elsewhere, so its redirect to this
        // host's loopback fails to load — the user pastes the URL it tried to open instead.
        eprintln!(
            "Then paste here the URL the browser was sent to (it may fail to load: that is fine) and press Enter:"
        );
        let (tx, state) = (shared.tx_clone(), state.clone());
        // A thread of its own, not the runtime's blocking pool: a read of stdin cannot be
        // cancelled, and the runtime would wait for it at exit.
        std::thread::spawn(move || read_pasted(tx, &state));
    }
    let redirect = wait_for_redirect(rx, &redirect_uri, options.timeout).await;
    server.abort();
    let redirect = redirect?;

    exchange(&connector, redirect, redirect_uri).await
}

struct CallbackState {
    state: String,
    connector: String,
    tx: Mutex<Option<mpsc::Sender<Result<Redirect, String>>>>,
}

impl CallbackState {
    fn tx_clone(&self) -> Option<mpsc::Sender<Result<Redirect, String>>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads pasted lines from stdin until one is the redirect URL (its `state` must be ours) or a
/// bare grant code; sends it on as if the browser had brought it. Stdin at its end (not a
/// terminal, nothing piped) just leaves the loopback listener waiting.
fn read_pasted(tx: Option<mpsc::Sender<Result<Redirect, String>>>, state: &str) {
    use std::io::BufRead as _;
    let Some(tx) = tx else { return };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        match pasted(line.trim(), state) {
            Ok(None) => continue,
            Ok(Some(redirect)) => {
                let _ = tx.blocking_send(Ok(redirect));
                return;
            }
            Err(problem) => eprintln!("{problem}; paste the whole URL again, or press Ctrl-C"),
        }
    }
}

/// What a pasted line holds: the redirect URL (with `code`, our `state`, maybe
/// `accounts-server`), or a bare code; `None` for an empty line.
fn pasted(line: &str, state: &str) -> Result<Option<Redirect>, String> {
    if line.is_empty() {
        return Ok(None);
    }
    let Ok(url) = Url::parse(line) else {
        if line.chars().any(char::is_whitespace) {
            return Err("that is neither the redirect URL nor a code".into());
        }
        return Ok(Some(Redirect {
            code: line.to_owned(),
            accounts_server: None,
        }));
    };
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    if query.get("state").map(String::as_str) != Some(state) {
        return Err(
            "that URL does not belong to this `connector authorize` (its state differs)".into(),
        );
    }
    if let Some(error) = query.get("error") {
        return Err(format!("the consent was not granted ({error})"));
    }
    match query.get("code").filter(|c| !c.is_empty()) {
        Some(code) => Ok(Some(Redirect {
            code: code.clone(),
            accounts_server: query.get("accounts-server").cloned(),
        })),
        None => Err("that URL carries no code".into()),
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:34em;margin:3em auto}}</style></head>\
         <body><h1>{title}</h1><p>{body}</p></body></html>"
    ))
}

async fn callback(
    State(shared): State<Arc<CallbackState>>,
    Query(query): Query<HashMap<String, String>>,
) -> (axum::http::StatusCode, Html<String>) {
    use axum::http::StatusCode;
    if query.get("state") != Some(&shared.state) {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Authorization failed",
                "This redirect does not belong to the running `connector authorize` (state mismatch).",
            ),
        );
    }
    let result = match (query.get("code"), query.get("error")) {
        (Some(code), _) if !code.is_empty() => Ok(Redirect {
            code: code.clone(),
            accounts_server: query.get("accounts-server").cloned(),
        }),
        (_, Some(error)) => Err(error.clone()),
        _ => Err("the redirect carried no code".into()),
    };
    let ok = result.is_ok();
    let tx = shared.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(tx) = tx {
        let _ = tx.send(result).await;
    }
    if ok {
        (
            StatusCode::OK,
            page(
                "Connector authorized",
                &format!(
                    "Connector <b>{}</b> is authorized. You can close this tab.",
                    html_escape::encode_double_quoted_attribute(&shared.connector)
                ),
            ),
        )
    } else {
        (
            StatusCode::OK,
            page("Authorization not granted", "You can close this tab."),
        )
    }
}

/// Opens `url` in the user's browser: `$BROWSER`, else the platform's opener. Failure is fine:
/// the URL is printed.
fn open_browser(url: &str) {
    let candidates: Vec<String> = match std::env::var("BROWSER") {
        Ok(b) if !b.is_empty() => vec![b],
        _ if cfg!(target_os = "macos") => vec!["open".into()],
        _ if cfg!(windows) => vec!["explorer".into()],
        _ => vec!["xdg-open".into()],
    };
    for program in candidates {
        if std::process::Command::new(&program)
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
        {
            return;
        }
    }
}

/// Waits (with a spinner) for the browser's redirect, at most `timeout`.
async fn wait_for_redirect(
    mut rx: mpsc::Receiver<Result<Redirect, String>>,
    redirect_uri: &str,
    timeout: Duration,
) -> Result<Redirect, Failure> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(format!("waiting for the redirect on {redirect_uri} …"));
    let received = tokio::time::timeout(timeout, rx.recv()).await;
    spinner.finish_and_clear();
    match received {
        Err(_) => Err(fail(
            Exit::Reauthorize,
            format!(
                "no redirect within {}s: the consent was not finished",
                timeout.as_secs()
            ),
            Some(
                "run the command again and press Accept in the browser in time (or pass a longer --timeout)",
            ),
        )),
        Ok(None) => Err(fail(
            Exit::Unexpected,
            "the redirect listener stopped",
            None,
        )),
        Ok(Some(Err(denied))) => Err(fail(
            Exit::Reauthorize,
            format!("authorization was not granted: {denied}"),
            Some(
                "run the command again and press Accept; check that the scopes exist for your Zoho account",
            ),
        )),
        Ok(Some(Ok(r))) => Ok(r),
    }
}

/// Exchanges the code the redirect brought, at the accounts server it names (multi-DC).
async fn exchange(
    connector: &Connector,
    redirect: Redirect,
    redirect_uri: String,
) -> Result<GeneratedTokens, Failure> {
    // Multi-DC: exchange at the accounts server the redirect names, if it is a Zoho one (or the
    // configured one, e.g. an emulator).
    let token_url = match redirect.accounts_server.as_deref() {
        None => None,
        Some(server) => Some(urls::exchange_url_for(connector.config().auth_url(), server).ok_or_else(
            || {
                fail(
                    Exit::Unexpected,
                    format!(
                        "the redirect named an unknown accounts-server {server:?}; refusing to send the code there"
                    ),
                    None,
                )
            },
        )?),
    };
    let mut with = CodeExchange::default().redirect_uri(redirect_uri);
    if let Some(t) = token_url {
        with = with.token_url(t);
    }
    connector
        .exchange_code(&GrantCode::new(redirect.code), with)
        .await
        .map_err(Failure::from)
}
