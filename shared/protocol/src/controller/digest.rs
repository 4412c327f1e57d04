//! FNV-1a, 64 bits: the digests the controller keeps (an event's content, what a pass saw),
//! which must stay the same across builds and processes — std's hasher promises neither.

use std::hash::Hasher;

pub(super) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The digest of `content`, in hex.
pub(super) fn fnv(content: &str) -> String {
    let mut h = Fnv1a::default();
    h.write(content.as_bytes());
    format!("{:016x}", h.finish())
}
