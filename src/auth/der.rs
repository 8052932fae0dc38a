//! Just enough DER to take a public key out of a PEM `SubjectPublicKeyInfo`: the algorithm
//! identifier (to check it is the configured kind) and the key bytes ring verifies with.

/// `AlgorithmIdentifier` of an RSA key: rsaEncryption with NULL parameters.
pub const RSA_ENCRYPTION: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// `AlgorithmIdentifier` of an EC key on P-256: id-ecPublicKey with prime256v1.
pub const EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;

/// Splits `SubjectPublicKeyInfo` DER into (the whole `AlgorithmIdentifier`, the key bytes).
pub fn split_spki(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (spki, rest) = element(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let content = &spki[header_len(spki)?..];
    let (algorithm, rest) = element(content, SEQUENCE)?;
    let (bits, rest) = element(rest, BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    // A BIT STRING starts with its count of unused bits, which is 0 for a key.
    match &bits[header_len(bits)?..] {
        [0, key @ ..] if !key.is_empty() => Some((algorithm, key)),
        _ => None,
    }
}

/// Bits of the modulus of a PKCS#1 `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`).
pub fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (key, _) = element(pkcs1, SEQUENCE)?;
    let content = &key[header_len(key)?..];
    let (n, _) = element(content, INTEGER)?;
    let digits = &n[header_len(n)?..];
    let first = digits.iter().position(|b| *b != 0)?;
    let top = digits[first];
    Some((digits.len() - first - 1) * 8 + (8 - top.leading_zeros() as usize))
}

/// The first element of `input` if it has `tag`: (the whole element, what follows it).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let header = header_len(input)?;
    let len = content_len(input)?;
    let end = header.checked_add(len)?;
    (end <= input.len()).then(|| input.split_at(end))
}

/// Bytes of tag + length.
fn header_len(input: &[u8]) -> Option<usize> {
    match *input.get(1)? {
        n if n < 0x80 => Some(2),
        n @ 0x81..=0x83 => Some(2 + usize::from(n - 0x80)),
        _ => None,
    }
}

fn content_len(input: &[u8]) -> Option<usize> {
    match *input.get(1)? {
        n if n < 0x80 => Some(usize::from(n)),
        n @ 0x81..=0x83 => {
            let bytes = input.get(2..2 + usize::from(n - 0x80))?;
            Some(bytes.iter().fold(0, |acc, b| (acc << 8) | usize::from(*b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_an_ec_key() {
        // An uncompressed P-256 point is 65 bytes: 0x04 || x || y.
        let point = [4u8; 65];
        let mut bits = vec![BIT_STRING, 66, 0];
        bits.extend_from_slice(&point);
        let mut body = EC_P256.to_vec();
        body.extend_from_slice(&bits);
        let mut der = vec![SEQUENCE, body.len() as u8];
        der.extend_from_slice(&body);
        let (alg, key) = split_spki(&der).unwrap();
        assert_eq!(alg, EC_P256);
        assert_eq!(key, &point);
    }

    #[test]
    fn reads_rsa_modulus_sizes() {
        // n = 0x00 0x80 0x00 (a 16-bit modulus with its sign byte), e = 3.
        let key = [SEQUENCE, 8, INTEGER, 3, 0x00, 0x80, 0x00, INTEGER, 1, 3];
        assert_eq!(rsa_modulus_bits(&key), Some(16));
        assert_eq!(rsa_modulus_bits(&[SEQUENCE, 0]), None);
    }

    #[test]
    fn refuses_truncated_or_trailing_input() {
        assert_eq!(split_spki(&[]), None);
        assert_eq!(split_spki(&[SEQUENCE, 5, 1, 2]), None);
        assert_eq!(split_spki(&[SEQUENCE, 0, 0]), None);
        assert_eq!(split_spki(&[SEQUENCE, 0x84, 0, 0, 0, 1, 0]), None);
    }
}
