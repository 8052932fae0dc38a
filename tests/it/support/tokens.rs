//! Mints consumer JWTs the way an application's backend would (HS256, RS256, ES256), with
//! the test key pairs in `tests/fixtures`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, RsaKeyPair},
};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::{Value, json};

/// The HS256 secret the auth tests configure.
pub const HS256_SECRET: &str = "test-secret-test-secret-test-secret!";

/// Path of a fixture file.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Seconds since the epoch, `offset` from now.
pub fn epoch_in(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

/// Claims allowing `channels` until `exp_in` seconds from now.
pub fn claims(channels: &[&str], exp_in: i64) -> Value {
    json!({"sub": "user-1", "channels": channels, "exp": epoch_in(exp_in)})
}

fn signing_input(alg: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}")
}

/// An HS256 token signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    let input = signing_input("HS256", claims);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let sig = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn pkcs8(name: &str) -> Vec<u8> {
    PrivatePkcs8KeyDer::from_pem_file(fixture(name))
        .unwrap()
        .secret_pkcs8_der()
        .to_vec()
}

/// An RS256 token signed with the fixture RSA key.
pub fn rs256(claims: &Value) -> String {
    let input = signing_input("RS256", claims);
    let key = RsaKeyPair::from_pkcs8(&pkcs8("jwt_rs256_private.pem")).unwrap();
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// An ES256 token signed with the fixture P-256 key.
pub fn es256(claims: &Value) -> String {
    let input = signing_input("ES256", claims);
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8("jwt_es256_private.pem"),
        &rng,
    )
    .unwrap();
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}
