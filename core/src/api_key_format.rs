//! API key format (pure logic).
//!
//! `tgk_` + 40 base62 characters from the OS CSPRNG (about 238 bits) + 6
//! base62 characters encoding the CRC32 of the random part. 50 characters in
//! all. The fixed prefix lets secret scanners recognise a leaked key; the
//! checksum lets `authenticate()` reject a typo or a random guess before any
//! table lookup. Only SHA-256(key) is stored; the first 12 characters
//! (`tgk_` + 8 random) are kept as a display prefix.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "tgk_";
pub const RANDOM_LEN: usize = 40;
pub const CHECKSUM_LEN: usize = 6;
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
pub const DISPLAY_LEN: usize = PREFIX.len() + 8;
/// Longest key `authenticate()` will even hash (imported keys may have other formats).
pub const MAX_KEY_LEN: usize = 256;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for i in (0..width).rev() {
        out[i] = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).expect("ascii")
}

fn checksum(random: &str) -> String {
    base62_fixed(crc32fast::hash(random.as_bytes()) as u64, CHECKSUM_LEN)
}

/// A new key, from the OS CSPRNG (rejection sampling, so no modulo bias).
pub fn generate() -> Result<String, getrandom::Error> {
    let mut random = String::with_capacity(RANDOM_LEN);
    let mut buf = [0u8; 64];
    while random.len() < RANDOM_LEN {
        getrandom::getrandom(&mut buf)?;
        for b in buf {
            if b < 248 && random.len() < RANDOM_LEN {
                random.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    let sum = checksum(&random);
    Ok(format!("{PREFIX}{random}{sum}"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// Our format with a valid checksum.
    Ours,
    /// Our prefix but a wrong length, alphabet or checksum: reject without lookup.
    Corrupt,
    /// Another format (possibly an imported hash): look it up as is.
    Foreign,
}

pub fn classify(key: &str) -> Shape {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Shape::Corrupt;
    }
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return Shape::Foreign;
    };
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Shape::Corrupt;
    }
    let (random, sum) = rest.split_at(RANDOM_LEN);
    // The checksum is public information; no constant-time need.
    if checksum(random) == sum {
        Shape::Ours
    } else {
        Shape::Corrupt
    }
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part shown in listings.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate().unwrap();
        assert_eq!(k.len(), KEY_LEN);
        assert!(k.starts_with("tgk_"));
        assert!(k[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(classify(&k), Shape::Ours);
        assert_ne!(generate().unwrap(), k);
        assert_eq!(display_prefix(&k).len(), 12);
    }

    #[test]
    fn typos_and_truncations_are_caught_by_the_checksum() {
        let k = generate().unwrap();
        for i in 4..k.len() {
            let mut b = k.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(classify(std::str::from_utf8(&b).unwrap()), Shape::Corrupt, "position {i}");
        }
        assert_eq!(classify(&k[..k.len() - 1]), Shape::Corrupt);
        assert_eq!(classify(&format!("{k}x")), Shape::Corrupt);
        assert_eq!(classify(""), Shape::Corrupt);
        assert_eq!(classify("tgk_"), Shape::Corrupt);
        assert_eq!(classify(&"x".repeat(MAX_KEY_LEN + 1)), Shape::Corrupt);
        assert_eq!(classify("ghp_abcdef"), Shape::Foreign);
    }

    #[test]
    fn hash_is_sha256_of_the_whole_key() {
        // NIST "abc"
        let h = hash("abc");
        assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn crc32_known_answer() {
        // The CRC-32/ISO-HDLC check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF43926);
        assert_eq!(base62_fixed(0xCBF43926, 6).len(), 6);
        assert_eq!(base62_fixed(61, 2), "0z");
    }
}
