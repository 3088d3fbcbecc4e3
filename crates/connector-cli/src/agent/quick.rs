//! `connector token` through a running agent, in as few steps as a process can take.
//!
//! A one-shot `connector token` with `CONNECTOR_AGENT` set lives mostly in its own start-up: the
//! full command line (every subcommand, with its help), logging, an async runtime and an HTTP
//! client, all to send one request over a local socket. This path parses `token`'s arguments
//! alone (the same [`token::Args`], so the same flags mean the same) and sends the request with
//! blocking I/O.
//!
//! It takes only what it is sure of and otherwise steps aside: another command, `--help`, any
//! argument error, `--no-agent`, shell completion, an agent over TCP, or an agent that cannot be
//! reached or answers in a way not expected here returns `None`, and the full command line runs
//! as if this did not exist — its messages and exit codes are the only ones. The one failure
//! reported here is an agent that accepted the request and gave no answer in time (asking again
//! would only wait again).

use super::client::{AgentClient, TIMEOUT, agent_from_env, token_path, unreachable};
use super::{AGENT_HEADER, AGENT_HEADER_VALUE};
use crate::commands::{Place, token};
use crate::exit::Failure;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// The command line as far as `connector [-q] [--config F] [--store S] token …` goes.
#[derive(clap::Parser)]
#[command(name = "connector")]
struct Quick {
    /// Accepted as the full command line accepts it; the agent's answer has no warnings.
    #[arg(short, long, global = true)]
    #[allow(dead_code)]
    quiet: bool,
    #[arg(long, global = true)]
    no_agent: bool,
    /// Accepted as the full command line accepts it; the agent needs no config or store.
    #[command(flatten)]
    #[allow(dead_code)]
    place: Place,
    #[command(subcommand)]
    command: QuickCommand,
}

#[derive(clap::Subcommand)]
enum QuickCommand {
    Token(token::Args),
}

/// Runs `connector token` through the agent if this is such a run and nothing unexpected
/// happens; `None`: run the full command line instead.
pub fn token() -> Option<Result<(), Failure>> {
    if std::env::var_os("COMPLETE").is_some() || !std::env::args_os().any(|a| a == "token") {
        return None;
    }
    let socket = agent_from_env().filter(|t| !t.starts_with("http://"))?;
    let Quick {
        no_agent: false,
        command: QuickCommand::Token(args),
        ..
    } = <Quick as clap::Parser>::try_parse().ok()?
    else {
        return None;
    };
    let path = token_path(&args.name, args.user.as_deref(), args.min_ttl);
    Some(match ask(&socket, &path) {
        Ok(Some((200, body))) => token::from_agent(&args, &body).map(|p| token::print(&args, &p)),
        Ok(Some((status, body))) => Err(AgentClient::failure(status, &body)),
        Ok(None) => return None,
        Err(f) => Err(f),
    })
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
