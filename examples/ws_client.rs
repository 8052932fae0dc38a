//! A WebSocket consumer: subscribes to channels and prints every frame, resuming from a
//! cursor when given one.
//!
//! Run with: `cargo run --release --example ws_client -- news orders/42`
//! or:       `cargo run --release --example ws_client -- --cursor <cursor> news`
//! Options:  `--url ws://127.0.0.1:8080/v1/ws` (default), `--token TOKEN` (a consumer JWT,
//!           a job token or an API key with `subscribe`, sent in the first frame; needed
//!           when the gateway has API keys).

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::{connect_async, tungstenite::Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut url = "ws://127.0.0.1:8080/v1/ws".to_owned();
    let mut cursor = None;
    let mut token = None;
    let mut channels = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => {
                url = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--url needs a value"))?
            }
            "--cursor" => cursor = args.next(),
            "--token" => token = args.next(),
            _ => channels.push(arg),
        }
    }
    if channels.is_empty() {
        anyhow::bail!("usage: ws_client [--url URL] [--token TOKEN] [--cursor CURSOR] CHANNEL...");
    }

    let (mut ws, _) = connect_async(url.as_str()).await?;
    // In a frame rather than the URL: URLs end up in proxy logs.
    if let Some(token) = &token {
        let auth = json!({"op": "auth", "id": 0, "token": token});
        ws.send(Message::text(auth.to_string())).await?;
    }
    for (id, channel) in channels.iter().enumerate() {
        let mut frame = json!({"op": "subscribe", "id": id + 1, "channel": channel});
        if let Some(c) = &cursor {
            frame["cursor"] = json!(c);
        }
        ws.send(Message::text(frame.to_string())).await?;
    }
    // Print frames as they come; the last event's `cursor` is what to pass to --cursor later.
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => println!("{text}"),
            Message::Close(frame) => {
                eprintln!("closed by the server: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
