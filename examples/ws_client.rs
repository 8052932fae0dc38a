//! A WebSocket consumer: subscribes to channels and prints every frame, resuming from a
//! cursor when given one.
//!
//! Run with: `cargo run --release --example ws_client -- news orders/42`
//! or:       `cargo run --release --example ws_client -- --cursor <cursor> news`
//! Options:  `--url ws://127.0.0.1:8080/v1/ws` (default), `--token TOKEN` (a consumer JWT,
//!           a job token or an API key with `subscribe`, sent in the first frame; needed
//!           when the gateway has API keys). `--help` lists them.
//!
//! Frames go to stdout, one JSON document a line. An error frame or the server's close
//! ends it with its reason on stderr and exit status 1: it does not wait for the gateway's
//! auth timeout when a credential is missing or refused.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Error as WsError, Message, protocol::frame::coding::CloseCode},
};

/// Subscribes to channels over the gateway's WebSocket and prints every frame it receives.
#[derive(Parser)]
#[command(name = "ws_client")]
struct Args {
    /// The gateway's WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    url: String,
    /// A consumer JWT, a job token or an API key with the `subscribe` scope (needed when
    /// the gateway has API keys), sent in the first frame rather than the URL.
    #[arg(long)]
    token: Option<String>,
    /// Where to resume: the `cursor` of the last event received.
    #[arg(long)]
    cursor: Option<String>,
    /// Channels to subscribe to.
    #[arg(required = true, value_name = "CHANNEL")]
    channels: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    run(&args).await.unwrap_or_else(|e| {
        eprintln!("ws_client: {e:#}");
        ExitCode::FAILURE
    })
}

/// Prints frames until the gateway ends the session; the exit status says how it ended.
async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut ws = match connect_async(args.url.as_str()).await {
        Ok((ws, _)) => ws,
        // A refused upgrade carries the gateway's JSON error: say what it says.
        Err(WsError::Http(res)) => {
            let body = res.body().as_deref().unwrap_or_default();
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            eprintln!(
                "ws_client: {} refused the connection ({}): {message}",
                args.url,
                res.status()
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", args.url)),
    };
    // In a frame rather than the URL: URLs end up in proxy logs.
    if let Some(token) = &args.token {
        let auth = json!({"op": "auth", "id": 0, "token": token});
        ws.send(Message::text(auth.to_string())).await?;
    }
    for (id, channel) in args.channels.iter().enumerate() {
        let mut frame = json!({"op": "subscribe", "id": id + 1, "channel": channel});
        if let Some(c) = &args.cursor {
            frame["cursor"] = json!(c);
        }
        ws.send(Message::text(frame.to_string())).await?;
    }
    // Print frames as they come; the last event's `cursor` is what to pass to --cursor later.
    while let Some(message) = ws.next().await {
        match message.context("the connection failed")? {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if frame["op"] == "error" {
                    eprintln!("ws_client: the gateway refused: {text}");
                    if frame["error"]["code"] == "unauthorized" && args.token.is_none() {
                        eprintln!(
                            "ws_client: this gateway needs a credential: pass --token TOKEN \
                             (a consumer JWT, a job token, or an API key with `subscribe`)"
                        );
                    }
                    let _ = ws.close(None).await;
                    return Ok(ExitCode::FAILURE);
                }
                println!("{text}");
            }
            Message::Close(frame) => {
                let Some(frame) = frame else {
                    eprintln!("ws_client: closed by the gateway");
                    return Ok(ExitCode::FAILURE);
                };
                eprintln!(
                    "ws_client: closed by the gateway: {} {}",
                    u16::from(frame.code),
                    frame.reason
                );
                let normal = frame.code == CloseCode::Normal;
                return Ok(if normal {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            _ => {}
        }
    }
    eprintln!("ws_client: the connection ended without a close frame");
    Ok(ExitCode::FAILURE)
}
