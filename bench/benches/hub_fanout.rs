//! criterion micro-benchmark of the hub's fan-out: one publish through the server's
//! `MemoryHub` (offset, envelope encoding, history) offered to N subscribers' inboxes, and
//! each subscriber taking it out. No sockets: this is the in-process share of fan-out.

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use serde_json::value::RawValue;
use switchyard::{
    engine::embedded::{MemoryHub, MemoryHubConfig},
    hub::{Bus, Hub, Publish},
};
use switchyard_protocol::ChannelName;
use switchyard_transports::hub::{Inbox, StartFrom, new_pair};

/// A hub with `subscribers` inboxes on `channel`.
fn hub_with(channel: &ChannelName, subscribers: usize) -> (MemoryHub, Vec<Inbox>) {
    let hub = MemoryHub::new(
        MemoryHubConfig {
            namespaces: switchyard::engine::embedded::hub::single_namespace(
                1000,
                Duration::from_secs(3600),
            ),
            max_channels: 16,
            channel_bytes: 1 << 30,
            total_bytes: 1 << 30,
        },
        None,
    );
    let inboxes = (0..subscribers)
        .map(|_| {
            let (sink, inbox) = new_pair(64, None);
            hub.subscribe(channel, StartFrom::Now, &sink)
                .now_or_never()
                .expect("the memory hub subscribes without waiting")
                .expect("subscribed");
            inbox
        })
        .collect();
    (hub, inboxes)
}

fn publish_to_subscribers(c: &mut Criterion) {
    // The hub reads the clock and may touch Tokio types; give it a runtime context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let channel = ChannelName::new("bench/fanout").expect("valid channel");
    let data = RawValue::from_string(format!(r#"{{"ts_us":1,"pad":"{}"}}"#, "x".repeat(180)))
        .expect("valid JSON");
    let mut group = c.benchmark_group("hub_publish_fanout");
    for subscribers in [1, 100, 1000, 10_000] {
        let (hub, mut inboxes) = hub_with(&channel, subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| {
                let published = hub
                    .publish(Publish {
                        channel: &channel,
                        event_type: "bench",
                        data: &data,
                        idempotency_key: None,
                    })
                    .now_or_never()
                    .expect("the memory hub publishes without waiting")
                    .expect("published");
                for inbox in &mut inboxes {
                    black_box(inbox.try_recv().expect("offered to every subscriber"));
                }
                published.offset
            });
        });
    }
    group.finish();
}

criterion_group!(benches, publish_to_subscribers);
criterion_main!(benches);
