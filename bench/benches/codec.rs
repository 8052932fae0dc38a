//! criterion micro-benchmarks of the wire codec (`switchyard-protocol`): envelope encoding,
//! WebSocket client-frame parsing, and cursor encode / decode / merge.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use switchyard_protocol::{ChannelName, ClientFrame, Cursor, Position, envelope};

fn data_of(size: usize) -> Box<RawValue> {
    let pad = "x".repeat(size.saturating_sub(12));
    RawValue::from_string(format!(r#"{{"pad":"{pad}"}}"#)).expect("valid JSON")
}

fn envelope_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope_encode");
    let channel = ChannelName::new("orders/eu/1234").expect("valid channel");
    let position = Position {
        epoch: 0x1234_5678_9abc,
        offset: 987_654,
    };
    for size in [64, 1024, 16 * 1024] {
        let data = data_of(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| {
                let cursor = Cursor::encode_single(&channel, position);
                envelope::encode(
                    channel.as_str(),
                    position.offset,
                    &cursor,
                    "order.paid",
                    "2026-11-22T00:53:16.932Z",
                    black_box(data),
                )
            });
        });
    }
    group.finish();
}

fn client_frame_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_frame_parse");
    let cursor = Cursor::encode_single(
        &ChannelName::new("orders/eu/1234").expect("valid channel"),
        Position {
            epoch: 42,
            offset: 7,
        },
    );
    let frames = [
        ("ping", r#"{"op":"ping","id":1}"#.to_owned()),
        (
            "subscribe",
            r#"{"op":"subscribe","id":2,"channel":"orders/eu/1234","after":17}"#.to_owned(),
        ),
        (
            "subscribe_cursor",
            format!(
                r#"{{"op":"subscribe","id":3,"channel":"orders/eu/1234","cursor":"{cursor}"}}"#
            ),
        ),
        ("invalid", r#"{"op":"subscribe","id":4}"#.to_owned()),
    ];
    for (name, text) in &frames {
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| ClientFrame::parse(black_box(text)));
        });
    }
    group.finish();
}

/// A cursor over `n` channels `bench/0 .. bench/{n-1}`, each at `offset`.
fn cursor_of(n: usize, offset: u64) -> Cursor {
    let mut cursor = Cursor::new();
    for i in 0..n {
        let channel = ChannelName::new(&format!("bench/{i}")).expect("valid channel");
        cursor.set(channel, Position { epoch: 9, offset });
    }
    cursor
}

fn cursor_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("cursor");
    for n in [1, 16, 256] {
        let cursor = cursor_of(n, 123_456);
        let encoded = cursor.encode();
        group.bench_with_input(BenchmarkId::new("encode", n), &cursor, |b, cursor| {
            b.iter(|| black_box(cursor).encode());
        });
        group.bench_with_input(BenchmarkId::new("decode", n), &encoded, |b, encoded| {
            b.iter(|| Cursor::decode(black_box(encoded)).expect("decodes"));
        });
        // Half the channels are newer in `other`, half older.
        let mut other = cursor_of(n, 100_000);
        for i in (0..n).step_by(2) {
            let channel = ChannelName::new(&format!("bench/{i}")).expect("valid channel");
            other.set(
                channel,
                Position {
                    epoch: 9,
                    offset: 200_000,
                },
            );
        }
        group.bench_with_input(BenchmarkId::new("merge", n), &other, |b, other| {
            b.iter_batched(
                || (cursor.clone(), other.clone()),
                |(mut mine, theirs)| {
                    mine.merge(theirs);
                    mine
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, envelope_encode, client_frame_parse, cursor_codec);
criterion_main!(benches);
