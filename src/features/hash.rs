//! Stable string hashes (FNV-1a), the same on every machine and in every run, unlike std's
//! randomly keyed hasher: they key things that outlive a process (sketches in the server state,
//! training samples and splits, page tokens), so their values must never change.

/// FNV-1a, 32 bits: offset basis and prime of the published parameters.
const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
/// FNV-1a, 64 bits.
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
#[inline]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV64_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV64_PRIME);
    }
    h
}

/// 32-bit FNV-1a of `bytes`.
#[inline]
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h = FNV32_OFFSET;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(FNV32_PRIME);
    }
    h
}

/// Stable 32-bit hash of a room or category: [`fnv1a32`], with 0 reserved for "absent" (the
/// empty string) and a string that hashes to 0 moved to 1.
#[inline]
pub fn hash_str(s: &str) -> u32 {
    if s.is_empty() {
        return 0;
    }
    match fnv1a32(s.as_bytes()) {
        0 => 1,
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_str_reserves_zero_for_absent() {
        assert_eq!(hash_str(""), 0);
        assert_ne!(hash_str("room-1"), 0);
        assert_eq!(hash_str("room-1"), hash_str("room-1"));
        assert_ne!(hash_str("room-1"), hash_str("room-2"));
    }

    /// The published FNV-1a test vectors: the values are pinned, not just stable.
    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The values the crate stored before this module existed (room hashes in server state).
    #[test]
    fn hash_str_values_are_unchanged() {
        assert_eq!(hash_str("a"), 0xe40c_292c);
        assert_eq!(hash_str("room_0042"), fnv1a32(b"room_0042"));
    }
}
