//! Protocol frames of a typical chat message: FlatBuffers encode (reused builder), verify
//! (zero-copy view), decode (verify + copy into the owned model); JSON for comparison.
//!
//! Run: `cargo bench -p bench --bench flatbuffers_message`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use wire::message::{self, Body, Deliver, IdempotencyKey, Send, StoredMessage};
use wire::{json, Frame};

/// A 1:1 text message of 120 bytes, as the server delivers it.
fn deliver_frame() -> Frame {
    Frame {
        request_id: 0,
        body: Body::Deliver(Deliver {
            message: StoredMessage {
                conversation_id: 0x0000_1234_5678_9abc,
                seq: 48_213,
                message_id: 0x01a2_b3c4_d5e6_f708,
                sender_user_id: 1_000_017,
                sender_device_id: 2,
                timestamp_ms: 1_795_000_000_000,
                body: "Running ten minutes late, the train is stuck outside the station. \
                       Order for me if you get there first? 🙏"
                    .as_bytes()
                    .to_vec(),
                ..Default::default()
            },
        }),
    }
}

fn send_frame() -> Frame {
    Frame {
        request_id: 77,
        body: Body::Send(Send {
            conversation_id: 0x0000_1234_5678_9abc,
            idempotency_key: IdempotencyKey([7; 16]),
            kind: message::MessageKind::Chat,
            body: vec![b'x'; 120],
            media: None,
            reply_to_seq: 0,
        }),
    }
}

fn bench_frames(c: &mut Criterion) {
    for (name, frame) in [("deliver", deliver_frame()), ("send", send_frame())] {
        let bytes = message::to_flatbuffers(&frame);
        let text = json::to_json(&frame);
        let mut group = c.benchmark_group(format!("fb_{name}"));
        group.throughput(Throughput::Elements(1));
        let mut builder = flatbuffers::FlatBufferBuilder::with_capacity(1024);
        group.bench_function("encode", |b| {
            b.iter(|| black_box(message::encode(black_box(&frame), &mut builder).len()))
        });
        group.bench_function("verify", |b| {
            b.iter(|| black_box(message::verified_root(black_box(&bytes)).is_ok()))
        });
        group.bench_function("decode", |b| {
            b.iter(|| black_box(message::from_flatbuffers(black_box(&bytes)).is_ok()))
        });
        group.bench_function("json_encode", |b| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                json::encode_json(black_box(&frame), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function("json_decode", |b| {
            b.iter(|| black_box(json::from_json(black_box(&text)).is_ok()))
        });
        group.finish();
        eprintln!(
            "{name}: flatbuffers {} bytes, json {} bytes",
            bytes.len(),
            text.len()
        );
    }
}

criterion_group!(benches, bench_frames);
criterion_main!(benches);
