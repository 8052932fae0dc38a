//! Consumer JWTs (RFC 7519, compact form): HS256 with a shared secret, or RS256 / ES256
//! with a configured public key. The algorithm comes from config, never from the token: a
//! token whose header names another algorithm is refused before any signature check.
//!
//! Verified with ring (already linked for TLS), so no second crypto stack and no second
//! version of the hashing crates; claims: `channels` (patterns, required), `exp`
//! (required), `nbf` (optional), `iss` and `aud` (required to match when
//! `auth.jwt_issuer` / `auth.jwt_audience` are set); others are ignored.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{hmac, signature};
use rustls_pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};
use serde::Deserialize;
use switchyard_protocol::{ChannelPattern, ErrorCode};
use switchyard_transports::access::Grant;

use super::{der, refuse};
use switchyard_transports::params::ParamError;

/// Longest token looked at.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Most channel patterns one token may carry.
const MAX_PATTERNS: usize = 256;
/// Largest `info` claim, in bytes of JSON (each namespace may allow less in presence).
const MAX_INFO_BYTES: usize = 8192;

/// The configured signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256 with `auth.jwt_secret`.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, key from `auth.jwt_public_key_file`.
    Rs256,
    /// ECDSA P-256 with SHA-256, key from `auth.jwt_public_key_file`.
    Es256,
}

impl Algorithm {
    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

impl FromStr for Algorithm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "HS256" => Ok(Self::Hs256),
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            _ => Err(()),
        }
    }
}

enum Key {
    Hmac(hmac::Key),
    Public(signature::UnparsedPublicKey<Vec<u8>>),
}

/// Verifies consumer JWTs with one configured key.
pub struct JwtVerifier {
    algorithm: Algorithm,
    key: Key,
    /// The `iss` every token must carry, when set.
    issuer: Option<String>,
    /// What every token's `aud` must name, when set.
    audience: Option<String>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Shortest HS256 secret: RFC 7518 §3.2 asks for a key at least as long as the hash.
pub const MIN_SECRET_LEN: usize = 32;

impl JwtVerifier {
    /// HS256 with `secret`.
    ///
    /// # Errors
    /// A secret shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn hs256(secret: &str) -> anyhow::Result<Self> {
        if secret.len() < MIN_SECRET_LEN {
            anyhow::bail!("`auth.jwt_secret` needs at least {MIN_SECRET_LEN} bytes for HS256");
        }
        Ok(Self {
            algorithm: Algorithm::Hs256,
            key: Key::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())),
            issuer: None,
            audience: None,
        })
    }

    /// RS256 or ES256 with the `SubjectPublicKeyInfo` in `pem` (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    /// Not PEM, not a public key, or a key of another kind than `algorithm` needs.
    pub fn public_key(algorithm: Algorithm, pem: &[u8]) -> anyhow::Result<Self> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| {
            anyhow::anyhow!("`auth.jwt_public_key_file` is not a PEM public key: {e}")
        })?;
        let (alg_id, key) = der::split_spki(spki.as_ref())
            .ok_or_else(|| anyhow::anyhow!("`auth.jwt_public_key_file`: malformed public key"))?;
        if algorithm == Algorithm::Rs256
            && alg_id == der::RSA_ENCRYPTION
            && der::rsa_modulus_bits(key).is_none_or(|bits| !(2048..=8192).contains(&bits))
        {
            // ring verifies 2048-8192 bit keys only: refuse others now, not at every token.
            anyhow::bail!(
                "`auth.jwt_public_key_file`: RS256 needs an RSA key of 2048 to 8192 bits"
            );
        }
        let verification: &'static dyn signature::VerificationAlgorithm = match algorithm {
            Algorithm::Rs256 if alg_id == der::RSA_ENCRYPTION => {
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
            Algorithm::Es256 if alg_id == der::EC_P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::Hs256 => anyhow::bail!("HS256 uses `auth.jwt_secret`, not a public key"),
            _ => anyhow::bail!(
                "`auth.jwt_public_key_file` holds a key of another kind than {} needs ({})",
                algorithm.as_str(),
                if algorithm == Algorithm::Rs256 {
                    "RSA"
                } else {
                    "EC P-256"
                }
            ),
        };
        Ok(Self {
            algorithm,
            key: Key::Public(signature::UnparsedPublicKey::new(
                verification,
                key.to_vec(),
            )),
            issuer: None,
            audience: None,
        })
    }

    /// Also requires `iss` to be `issuer` and `aud` to name `audience` ("" = not checked):
    /// a token the same identity provider issued for another service is refused.
    #[must_use]
    pub fn expecting(self, issuer: &str, audience: &str) -> Self {
        let set = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        Self {
            issuer: set(issuer),
            audience: set(audience),
            ..self
        }
    }

    /// The grant of a valid `token` at time `now`.
    ///
    /// # Errors
    /// `unauthorized` for anything malformed, signed otherwise or not yet valid;
    /// `token_expired` past `exp`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, ParamError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(refuse("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("not a token this server issued or accepts"));
        };
        let header: Header = decode_json(header_b64, "header")?;
        if header.alg != self.algorithm.as_str() {
            return Err(refuse(&format!(
                "token algorithm {:?} is not the configured {}",
                header.alg,
                self.algorithm.as_str()
            )));
        }
        if header.crit.is_some() {
            return Err(refuse(
                "token has critical header extensions this server does not know",
            ));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| refuse("token signature is not base64url"))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        let valid = match &self.key {
            Key::Hmac(key) => hmac::verify(key, signed.as_bytes(), &sig).is_ok(),
            Key::Public(key) => key.verify(signed.as_bytes(), &sig).is_ok(),
        };
        if !valid {
            return Err(refuse("token signature does not verify"));
        }
        let claims: Claims = decode_json(claims_b64, "claims")?;
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let Some(exp) = claims.exp else {
            return Err(refuse(
                "token has no `exp` claim; consumer tokens must expire",
            ));
        };
        if exp <= now_secs {
            return Err(ParamError {
                code: ErrorCode::TokenExpired,
                message: "token expired".into(),
            });
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_secs) {
            return Err(refuse("token is not valid yet (`nbf`)"));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(refuse(&format!("token `iss` is not {issuer:?}")));
        }
        if let Some(audience) = &self.audience
            && !claims.aud.is_some_and(|aud| aud.names(audience))
        {
            return Err(refuse(&format!("token `aud` does not name {audience:?}")));
        }
        let Some(channels) = claims.channels else {
            return Err(refuse("token has no `channels` claim"));
        };
        if channels.len() > MAX_PATTERNS {
            return Err(refuse(&format!(
                "token names more than {MAX_PATTERNS} channel patterns"
            )));
        }
        let patterns = channels
            .iter()
            .map(|p| ChannelPattern::new(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(&format!("token `channels`: {e}")))?;
        // A far-off or malformed `exp` must be refused, not overflow the time arithmetic.
        let expires_at = Duration::try_from_secs_f64(exp)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .ok_or_else(|| refuse("token `exp` is out of range"))?;
        // Subscriptions are counted per user (`sub`), or per token when it names none.
        let subject = match &claims.sub {
            Some(sub) => format!("sub:{sub}"),
            None => format!("token:{}", token.rsplit('.').next().unwrap_or(token)),
        };
        let publish = claims
            .publish
            .unwrap_or_default()
            .iter()
            .take(MAX_PATTERNS + 1)
            .map(|p| ChannelPattern::new(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(&format!("token `publish`: {e}")))?;
        if publish.len() > MAX_PATTERNS {
            return Err(refuse(&format!(
                "token names more than {MAX_PATTERNS} publish patterns"
            )));
        }
        if claims
            .info
            .as_ref()
            .is_some_and(|i| i.get().len() > MAX_INFO_BYTES)
        {
            return Err(refuse(&format!(
                "token `info` is larger than {MAX_INFO_BYTES} bytes"
            )));
        }
        Ok(Grant::channels(patterns, Some(expires_at))
            .with_subject(&subject)
            .with_user(claims.sub.as_deref(), claims.info)
            .with_publish(publish))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iss: Option<String>,
    aud: Option<Audience>,
    channels: Option<Vec<String>>,
    sub: Option<String>,
    /// What presence shows of the holder (any JSON; bounded by each namespace's
    /// `max_info_bytes` when it joins).
    info: Option<Box<serde_json::value::RawValue>>,
    /// Channel patterns the holder may publish to over its WebSocket, where the
    /// namespace allows client publishes.
    publish: Option<Vec<String>>,
}

/// `aud`: one string or a list of them (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, ParamError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| refuse(&format!("token {what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|e| refuse(&format!("token {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    /// A 1024-bit RSA public key: too weak for RS256 here.
    const WEAK_RSA: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC9pmONwznXJxvoyKABYUnZEwzy
B/OsgpJWHmSedScJNCZSo0wi/jc5LfhSE8J09jPuHTNGqIr3sBmDKVwYouuvqqOy
f8PMuAcWDU6Ki9E0qhewo31puElfov4bkZ0kyxMV02wfpSqqaWmYvUkTzy5PglG0
uKab7/H580GNKVZBTwIDAQAB
-----END PUBLIC KEY-----";

    /// Signs claims with HS256 the way any JWT library does.
    pub(crate) fn hs256(secret: &str, alg: &str, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing = format!("{header}.{body}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signing.as_bytes()));
        format!("{signing}.{sig}")
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn claims(exp: u64) -> serde_json::Value {
        serde_json::json!({"channels": ["orders/*"], "exp": exp, "sub": "u1"})
    }

    #[test]
    fn a_valid_token_grants_its_channels_until_exp() {
        let v = JwtVerifier::hs256(SECRET).unwrap();
        let grant = v
            .verify(&hs256(SECRET, "HS256", &claims(1_800_000_060)), now())
            .unwrap();
        assert!(grant.allows("orders/1"));
        assert!(!grant.allows("payments/1"));
        assert_eq!(
            grant.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_060))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let verifier = || JwtVerifier::hs256(SECRET).unwrap();
        let token = |extra: serde_json::Value| {
            let mut c = claims(1_800_000_060);
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            hs256(SECRET, "HS256", &c)
        };
        let ours = token(serde_json::json!({"iss": "https://id.example", "aud": "switchyard"}));
        let listed =
            token(serde_json::json!({"iss": "https://id.example", "aud": ["crm", "switchyard"]}));
        let strict = verifier().expecting("https://id.example", "switchyard");
        assert!(strict.verify(&ours, now()).is_ok());
        assert!(strict.verify(&listed, now()).is_ok(), "aud as a list");
        for (token, why) in [
            (
                token(serde_json::json!({"iss": "https://id.example", "aud": "crm"})),
                "aud",
            ),
            (
                token(serde_json::json!({"iss": "https://id.example"})),
                "aud",
            ),
            (
                token(serde_json::json!({"iss": "https://evil.example", "aud": "switchyard"})),
                "iss",
            ),
            (token(serde_json::json!({"aud": "switchyard"})), "iss"),
        ] {
            let err = strict.verify(&token, now()).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized);
            assert!(err.message.contains(why), "{}", err.message);
        }
        // Not configured: not checked.
        let lax = verifier().expecting("", "");
        assert!(
            lax.verify(&token(serde_json::json!({"aud": "crm"})), now())
                .is_ok()
        );
    }

    #[test]
    fn refusals() {
        let v = JwtVerifier::hs256(SECRET).unwrap();
        let err = |t: &str| v.verify(t, now()).unwrap_err();
        assert_eq!(
            err(&hs256(SECRET, "HS256", &claims(1_799_999_999))).code,
            ErrorCode::TokenExpired
        );
        let wrong_key = hs256(
            "another-secret-another-secret-xx",
            "HS256",
            &claims(1_800_000_060),
        );
        assert!(err(&wrong_key).message.contains("signature"));
        // `alg` comes from config: `none` and other algorithms are refused outright.
        let none = hs256(SECRET, "none", &claims(1_800_000_060));
        assert!(err(&none).message.contains("algorithm"));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims(1_800_000_060).to_string())
        );
        assert_eq!(err(&unsigned).code, ErrorCode::Unauthorized);
        let no_exp = hs256(SECRET, "HS256", &serde_json::json!({"channels": ["a"]}));
        assert!(err(&no_exp).message.contains("exp"));
        let no_channels = hs256(SECRET, "HS256", &serde_json::json!({"exp": 1_800_000_060}));
        assert!(err(&no_channels).message.contains("channels"));
        let bad_pattern = hs256(
            SECRET,
            "HS256",
            &serde_json::json!({"channels": ["a b"], "exp": 1_800_000_060}),
        );
        assert!(err(&bad_pattern).message.contains("channels"));
        let early = hs256(
            SECRET,
            "HS256",
            &serde_json::json!({"channels": ["a"], "exp": 1_800_000_060, "nbf": 1_800_000_030}),
        );
        assert!(err(&early).message.contains("nbf"));
        let far = hs256(
            SECRET,
            "HS256",
            &serde_json::json!({"channels": ["a"], "exp": 1e300}),
        );
        assert!(err(&far).message.contains("out of range"));
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(err(junk).code, ErrorCode::Unauthorized, "{junk:.20}");
        }
    }

    #[test]
    fn short_secrets_and_mismatched_keys_are_refused_at_start() {
        assert!(JwtVerifier::hs256("short").is_err());
        assert!(JwtVerifier::public_key(Algorithm::Rs256, b"not pem").is_err());
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        JwtVerifier::public_key(Algorithm::Rs256, &fixture("jwt_rs256_public.pem")).unwrap();
        JwtVerifier::public_key(Algorithm::Es256, &fixture("jwt_es256_public.pem")).unwrap();
        let mixed = JwtVerifier::public_key(Algorithm::Es256, &fixture("jwt_rs256_public.pem"));
        assert!(mixed.unwrap_err().to_string().contains("another kind"));
        let weak = JwtVerifier::public_key(Algorithm::Rs256, WEAK_RSA.as_bytes());
        assert!(weak.unwrap_err().to_string().contains("2048"));
    }
}
