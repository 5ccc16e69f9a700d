//! WebSocket inbound hot path: frame header parse + payload unmask, and the whole server
//! codec (copy into its buffer, parse, unmask, yield events), on 1 KiB and 64 KiB frames.
//!
//! Run: `cargo bench -p bench --bench ws_frame`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wire::ws::frame::{FrameHeader, OpCode};
use wire::ws::mask::apply_mask;
use wire::ws::{Event, WsCodec, WsConfig};

/// About 4 MiB of masked binary frames of `payload` bytes each, as a client sends them.
fn masked_stream(payload: usize) -> Vec<u8> {
    let frames = (4 * 1024 * 1024 / payload).max(1);
    let mut out = Vec::with_capacity(frames * (payload + 14));
    for i in 0..frames {
        let key = (i as u32).wrapping_mul(0x9E37_79B9).to_le_bytes();
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: Some(key),
            payload_len: payload as u64,
        };
        header.write(&mut out);
        let at = out.len();
        out.extend((0..payload).map(|j| (j % 251) as u8));
        apply_mask(&mut out[at..], key, 0);
    }
    out
}

/// Parse every header and unmask every payload in place.
fn parse_and_unmask(stream: &mut [u8]) -> usize {
    let mut at = 0;
    let mut payload_bytes = 0;
    while let Ok(Some((header, header_len))) = FrameHeader::parse(&stream[at..]) {
        let start = at + header_len;
        let end = start + header.payload_len as usize;
        if let Some(key) = header.mask {
            apply_mask(&mut stream[start..end], key, 0);
        }
        payload_bytes += end - start;
        at = end;
    }
    payload_bytes
}

fn bench_parse_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_parse_unmask");
    for payload in [1024usize, 64 * 1024] {
        let mut stream = masked_stream(payload);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(payload), &payload, |b, _| {
            // Unmasking is an involution, so repeating it in place needs no fresh copy.
            b.iter(|| black_box(parse_and_unmask(black_box(&mut stream))));
        });
    }
    group.finish();
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_server_codec");
    for payload in [1024usize, 64 * 1024] {
        let stream = masked_stream(payload);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        let mut codec = WsCodec::server(WsConfig::default());
        group.bench_with_input(BenchmarkId::from_parameter(payload), &payload, |b, _| {
            b.iter(|| {
                // 64 KiB reads, as from a socket.
                let mut bytes = 0;
                for read in stream.chunks(64 * 1024) {
                    codec.feed(read);
                    while let Ok(Some(event)) = codec.poll() {
                        if let Event::Binary(data) = event {
                            bytes += data.len();
                        }
                    }
                }
                black_box(bytes)
            });
        });
    }
    group.finish();
}

fn bench_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_mask");
    for len in [1024usize, 64 * 1024] {
        let mut buf = vec![0x5Au8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse_unmask, bench_codec, bench_mask);
criterion_main!(benches);
