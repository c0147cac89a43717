//! decode() and read_frame() never panic on arbitrary bytes: random strings,
//! mutated and truncated valid frames, and huge announced lengths.

use std::io::{self, Read};

use transfer_engine::metadata::handshake::frame::{self, Framing, MsgType};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Hands out data in random small chunks, as a socket might.
struct Chunky<'a> {
    data: &'a [u8],
    rng: Rng,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (1 + self.rng.below(7) as usize)
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

const MAX: u64 = 1 << 20;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        frame::encode(Framing::Typed(MsgType::Probe), "{}\n"),
        frame::encode(
            Framing::Typed(MsgType::Notify),
            "{\"name\":\"a\",\"notify_msg\":\"\\u00e9\"}\n",
        ),
        frame::encode(Framing::Legacy, "{\"local_gid\":\"\",\"qp_num\":[1,2]}\n"),
        frame::encode(Framing::Typed(MsgType::Metadata), "null\n"),
    ]
}

fn check(data: &[u8], seed: u64) {
    let whole = frame::decode(data, MAX);
    let mut r = Chunky {
        data,
        rng: Rng(seed | 1),
    };
    let streamed = frame::read_frame(&mut r, MAX);
    // A successful stream read consumed a prefix; if decode succeeded, the
    // whole buffer was exactly one frame and both agree.
    if let Ok(f) = &whole {
        assert_eq!(streamed.as_ref().ok(), Some(f));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..4000 {
        let n = rng.below(64) as usize;
        let data = rng.bytes(n);
        check(&data, i);
    }
}

#[test]
fn mutated_and_truncated_frames_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let seeds = seeds();
    for (i, seed) in seeds.iter().enumerate() {
        assert!(frame::decode(seed, MAX).is_ok(), "seed {i} must be valid");
        for cut in 0..seed.len() {
            assert!(frame::decode(&seed[..cut], MAX).is_err());
            check(&seed[..cut], cut as u64);
        }
    }
    for i in 0..4000u64 {
        let mut data = seeds[rng.below(seeds.len() as u64) as usize].clone();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(data.len() as u64) as usize;
            data[pos] = rng.next() as u8;
        }
        let keep = rng.below(data.len() as u64 + 1) as usize;
        data.truncate(keep);
        check(&data, i);
    }
}

#[test]
fn huge_lengths_are_rejected_without_allocating() {
    let mut rng = Rng(42);
    for len in [MAX + 1, u64::MAX, u64::MAX / 2, 1 << 40, 128 << 20] {
        let mut data = len.to_ne_bytes().to_vec();
        data.extend_from_slice(&rng.bytes(16));
        assert!(frame::decode(&data, MAX).is_err());
        let mut r = &data[..];
        assert!(frame::read_frame(&mut r, MAX).is_err());
    }
    for _ in 0..1000 {
        let mut data = (MAX + 1 + rng.below(u64::MAX - MAX - 1))
            .to_ne_bytes()
            .to_vec();
        data.push(3);
        check(&data, rng.next());
    }
    // Announced length within the max, but the peer sends almost nothing.
    let mut short = MAX.to_ne_bytes().to_vec();
    short.extend_from_slice(b"\x02{}");
    assert!(frame::decode(&short, MAX).is_err());
}
