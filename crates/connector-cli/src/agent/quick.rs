//! `connector token`, the command run most often, parsed alone: in as few steps as a process can
//! take.
//!
//! A one-shot `connector token` lives mostly in its own start-up. Building the full command line
//! (every subcommand, with its help) is a tenth of a warm run; through an agent, logging, an async
//! runtime and an HTTP client would be most of it, all to send one request over a local socket.
//! This parses `token`'s arguments alone (the same [`token::Args`], so the same flags mean the
//! same). With `CONNECTOR_AGENT` naming a socket, it sends the request with blocking I/O and prints
//! the answer; otherwise it hands the parsed command to `main`, which runs it as it runs every
//! command.
//!
//! It takes only what it is sure of and otherwise steps aside: another command, `--help`, any
//! argument error or shell completion returns `None`, and the full command line runs as if this
//! did not exist. An agent over TCP, or one that cannot be reached or answers in a way not
//! expected here, is left to the command itself (the same code as after a full parse), so its
//! messages and exit codes are the only ones. The one failure reported here is an agent that
//! accepted the request and gave no answer in time (asking again would only wait again).

use super::client::{AgentClient, TIMEOUT, agent_from_env, token_path, unreachable};
use super::{AGENT_HEADER, AGENT_HEADER_VALUE};
use crate::commands::{Place, token};
use crate::exit::Failure;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// The command line as far as `connector [-q] [--no-agent] [--config F] [--store S] token …`
/// goes.
#[derive(clap::Parser)]
#[command(name = "connector")]
struct TokenLine {
    #[arg(short, long, global = true)]
    quiet: bool,
    #[arg(long, global = true)]
    no_agent: bool,
    #[command(flatten)]
    place: Place,
    #[command(subcommand)]
    command: QuickCommand,
}

/// What the short path made of a run.
pub enum Quick {
    /// Answered through the agent's socket (printed, or the failure to print).
    Answered(Result<(), Failure>),
    /// `connector token`, to be run as every command runs.
    Run(Box<Parsed>),
}

/// A parsed `connector token` run: what `main` takes from any command line.
pub struct Parsed {
    /// `-q`.
    pub quiet: bool,
    /// `--no-agent`.
    pub no_agent: bool,
    /// `--config` and `--store` given before the subcommand.
    pub place: Place,
    /// `token`'s own arguments.
    pub args: token::Args,
}

#[derive(clap::Subcommand)]
enum QuickCommand {
    Token(token::Args),
}

/// `connector token`, parsed alone: answered through the agent when `CONNECTOR_AGENT` names a
/// socket that answers, else to be run by `main`; `None`: run the full command line instead.
pub fn token() -> Option<Quick> {
    if std::env::var_os("COMPLETE").is_some() || !std::env::args_os().any(|a| a == "token") {
        return None;
    }
    let TokenLine {
        quiet,
        no_agent,
        place,
        command: QuickCommand::Token(args),
    } = <TokenLine as clap::Parser>::try_parse().ok()?;
    let socket = agent_from_env().filter(|t| !no_agent && !t.starts_with("http://"));
    if let Some(socket) = socket {
        let path = token_path(&args.name, args.user.as_deref(), args.min_ttl);
        match ask(&socket, &path) {
            Ok(Some((200, body))) => {
                let printed = token::from_agent(&args, &body).map(|p| token::print(&args, &p));
                return Some(Quick::Answered(printed));
            }
            Ok(Some((status, body))) => {
                return Some(Quick::Answered(Err(AgentClient::failure(status, &body))));
            }
            Err(f) => return Some(Quick::Answered(Err(f))),
            Ok(None) => {} // the command asks again and explains what it finds
        }
    }
    Some(Quick::Run(Box::new(Parsed {
        quiet,
        no_agent,
        place,
        args,
    })))
}

/// `GET path` on the agent's socket: its status and JSON body; `None` for anything that the full
/// path should try (and explain) itself.
fn ask(socket: &str, path: &str) -> Result<Option<(u16, Value)>, Failure> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Ok(None);
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: agent\r\n{AGENT_HEADER}: {AGENT_HEADER_VALUE}\r\nConnection: close\r\n\r\n"
    );
    let mut answer = Vec::with_capacity(1024);
    let exchanged = stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| stream.read_to_end(&mut answer));
    match exchanged {
        Ok(_) => Ok(parse(&answer)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(unreachable(
                socket,
                &format_args!("no answer within {} s", TIMEOUT.as_secs()),
            ))
        }
        Err(_) => Ok(None),
    }
}

/// A whole HTTP/1.1 answer (the agent closed the connection after it): its status and JSON
/// body, or `None` if it is not one this path reads (chunked, cut short, not JSON).
fn parse(answer: &[u8]) -> Option<(u16, Value)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(answer).ok()? else {
        return None;
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").is_some() {
        return None;
    }
    let body = &answer[head..];
    let body = match header("content-length") {
        Some(length) => {
            let length: usize = std::str::from_utf8(length).ok()?.trim().parse().ok()?;
            body.get(..length)?
        }
        None => body,
    };
    Some((response.code?, serde_json::from_slice(body).ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn answers_are_read_whole_or_left_to_the_full_path() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"a\":\"b\",\"c\":1}";
        // content-length 13 cuts the body short of its JSON: not read here.
        assert_eq!(parse(ok), None);
        let ok = b"HTTP/1.1 409 Conflict\r\nContent-Length: 11\r\n\r\n{\"x\":true}\n";
        assert_eq!(parse(ok), Some((409, serde_json::json!({"x": true}))));
        let unframed = b"HTTP/1.1 200 OK\r\n\r\n{\"x\":1}";
        assert_eq!(parse(unframed), Some((200, serde_json::json!({"x": 1}))));
        for odd in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"x\":1}\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-len",
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\n\r\nnope!",
            b"",
        ] {
            assert_eq!(parse(odd), None);
        }
    }
}
