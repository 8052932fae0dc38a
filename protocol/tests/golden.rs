//! Golden JSON fixtures: every wire type parses from its fixture and serializes back to the
//! same bytes, so any change to the wire format shows up as a failing diff here.

use std::fs;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use switchyard_protocol::{
    ChannelName, ClientFrame, Cursor, Envelope, ErrorResponse, Position, ServerFrame, envelope,
};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim_end()
        .to_owned()
}

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(name: &str) -> T {
    let text = fixture(name);
    let value: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        serde_json::to_string(&value).unwrap(),
        text,
        "{name} drifted"
    );
    value
}

#[test]
fn client_frames() {
    for name in [
        "client_subscribe.json",
        "client_subscribe_cursor.json",
        "client_unsubscribe.json",
        "client_ping.json",
        "client_auth.json",
    ] {
        let frame: ClientFrame = round_trip(name);
        assert_eq!(ClientFrame::parse(&fixture(name)).unwrap(), frame);
    }
}

#[test]
fn server_frames() {
    for name in [
        "server_subscribed.json",
        "server_unsubscribed.json",
        "server_event.json",
        "server_reset.json",
        "server_pong.json",
        "server_authed.json",
        "server_error.json",
    ] {
        let frame: ServerFrame = round_trip(name);
        assert_eq!(frame.to_json(), fixture(name));
    }
}

#[test]
fn envelope_and_error() {
    let env: Envelope = round_trip("envelope.json");
    round_trip::<ErrorResponse>("error_response.json");

    // The server's borrowed encoder produces exactly the fixture.
    let data = RawValue::from_string(env.data.to_string()).unwrap();
    let bytes = envelope::encode(
        &env.channel,
        env.offset,
        &env.cursor,
        &env.event_type,
        &env.time,
        &data,
    );
    assert_eq!(String::from_utf8(bytes).unwrap(), fixture("envelope.json"));
}

#[test]
fn fixture_cursors_are_real_cursors() {
    let env: Envelope = round_trip("envelope.json");
    let cursor = Cursor::decode(&env.cursor).unwrap();
    assert_eq!(
        cursor.get("news"),
        Some(Position {
            epoch: 42,
            offset: 5
        })
    );
    assert_eq!(
        Cursor::encode_single(
            &ChannelName::new("news").unwrap(),
            Position {
                epoch: 42,
                offset: 5
            }
        ),
        env.cursor
    );
    let ServerFrame::Reset { cursor, .. } = round_trip("server_reset.json") else {
        panic!()
    };
    assert_eq!(
        Cursor::decode(&cursor).unwrap().get("news").unwrap().offset,
        9
    );
}

#[test]
fn webhook_signature_of_the_envelope() {
    use switchyard_protocol::webhook::{self, WebhookSecret};

    // What the server does per delivery: encode the envelope once, sign those exact bytes
    // with `webhook-id` = envelope id and `webhook-timestamp` = the attempt's Unix seconds.
    // Same inputs, same header, byte for byte (values cross-checked with Python's `hmac`).
    let env: Envelope = round_trip("envelope.json");
    let data = RawValue::from_string(env.data.to_string()).unwrap();
    let body = envelope::encode(
        &env.channel,
        env.offset,
        &env.cursor,
        &env.event_type,
        &env.time,
        &data,
    );
    let new = WebhookSecret::from_bytes((0u8..32).collect()).unwrap();
    let old = WebhookSecret::parse("whsec_ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=").unwrap();
    let ts = 1_795_300_435; // 2026-11-21T22:33:55Z
    let header = webhook::signature_header(&[&new, &old], &env.id, ts, &body);
    assert_eq!(
        header,
        "v1,7qx4G7ogYT3biFJ8Jfuy92tLayG8zfzUKiMizcHhu5s= \
         v1,KdurJ54Img3EQHZsTzoR5lr3H9cs40TW4nUNyb7Yg4M="
    );
    assert_eq!(
        webhook::signature_header(&[&new, &old], &env.id, ts, &body),
        header
    );
    for secret in [&new, &old] {
        webhook::verify(secret, "news:5", "1795300435", &header, &body, ts + 60, 300).unwrap();
    }
}
