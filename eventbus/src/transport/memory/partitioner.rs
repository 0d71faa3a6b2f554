//! Where a message goes: Kafka's partitioner for keyed messages, so that a
//! key lands in the same partition as with our Kafka publisher.

/// The partition Kafka's Java client (and librdkafka's `murmur2_random`, which
/// our Kafka publisher uses) picks for `key` among `partitions`:
/// `toPositive(murmur2(key)) % partitions`.
pub(super) fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    let hash = u64::from(murmur2(key) & 0x7fff_ffff);
    let partitions = partitions.max(1) as u64;
    // Less than `partitions`, so it fits.
    usize::try_from(hash % partitions).unwrap_or(0)
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes the length as a Java int (wrapping, as keys never come
    // near 2^31 bytes).
    let mut h = SEED ^ (data.len() as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        for (input, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(input.as_bytes()) as i32, hash, "{input}");
        }
    }

    #[test]
    fn keys_spread_over_the_partitions() {
        // Pinned (Kafka's vectors, made positive, mod 4): a key's partition
        // must not change between releases.
        assert_eq!(partition_for_key(b"foobar", 4), 2);
        assert_eq!(partition_for_key(b"abc", 4), 3);
        let used: std::collections::BTreeSet<usize> = (0..100)
            .map(|i| partition_for_key(format!("key-{i}").as_bytes(), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }
}
