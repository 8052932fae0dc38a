//! Files served from memory with HTTP caching: each is compressed once (gzip and brotli,
//! when that makes it smaller), every encoding has its own strong `ETag` (a hash of its
//! bytes), and a request whose `If-None-Match` holds the tag gets `304` without a body.
//!
//! Per-request compression (tower-http's `CompressionLayer`) would redo the same work for
//! every browser that loads the client; these files only change with the binary.

use std::io::Write;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use switchyard_transports::http::{empty, full};

use super::router::Reply;

/// gzip level: the best, since it is paid once.
const GZIP_LEVEL: u32 = 9;
/// brotli quality (0-11) and window (log2 bytes): quality 10 makes these files within 3% of
/// quality 11's size in a third of the time and a tenth of the memory (11 peaks at ~10 MB
/// of buffers, which the allocator keeps); a 256 KiB window holds the largest of them.
const BROTLI_QUALITY: u32 = 10;
const BROTLI_WINDOW: u32 = 18;

/// A file kept in memory in every encoding worth sending.
pub struct StaticAsset {
    content_type: &'static str,
    /// Best first: brotli, gzip (each only when smaller than the file), then the file itself.
    variants: Vec<Variant>,
}

/// One encoding of the file.
struct Variant {
    /// The `Content-Encoding` token; `None` for the file as it is.
    coding: Option<&'static str>,
    bytes: Bytes,
    etag: HeaderValue,
}

impl Variant {
    fn new(coding: Option<&'static str>, bytes: Bytes) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        // 128 bits of the hash: a tag, not a signature.
        let tag = format!("\"{}\"", crate::ids::hex(&digest.as_ref()[..16]));
        Self {
            coding,
            bytes,
            etag: HeaderValue::from_str(&tag).expect("hex in quotes is a valid header value"),
        }
    }
}

impl StaticAsset {
    /// Compresses `file` (the expensive part: build it once, in a `LazyLock`).
    pub fn new(file: &'static [u8], content_type: &'static str) -> Self {
        let identity = Bytes::from_static(file);
        let mut variants: Vec<Variant> = [("br", brotli(file)), ("gzip", gzip(file))]
            .into_iter()
            .filter(|(_, packed)| packed.len() < file.len())
            .map(|(coding, packed)| Variant::new(Some(coding), Bytes::from(packed)))
            .collect();
        variants.push(Variant::new(None, identity));
        Self {
            content_type,
            variants,
        }
    }

    /// The answer to a `GET` (or `HEAD`) with `request` headers: `200` with the best encoding
    /// the client accepts, or `304` when it already holds that encoding's tag. Both carry
    /// `ETag`, `Vary: Accept-Encoding` and `Cache-Control: no-cache` (use it after
    /// revalidating: cheap now, and a browser never runs a file older than its gateway).
    pub fn respond(&self, request: &HeaderMap) -> Reply {
        let accepted = AcceptEncoding::parse(request);
        let variant = self
            .variants
            .iter()
            // `max_by` keeps the last of equals: walk worst first so that ties go to the
            // smaller encoding.
            .rev()
            .max_by(|a, b| {
                accepted
                    .quality(a.coding)
                    .total_cmp(&accepted.quality(b.coding))
            })
            .expect("the identity variant is always there");
        let fresh = if_none_match(request, &variant.etag);
        let mut res = if fresh {
            let mut res = Response::new(empty());
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res
        } else {
            let mut res = Response::new(full(variant.bytes.clone()));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            if let Some(coding) = variant.coding {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            }
            res
        };
        let h = res.headers_mut();
        h.insert(header::ETAG, variant.etag.clone());
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`). The comparison is weak (RFC 9110
/// 13.1.2): a `W/` prefix does not matter.
fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

/// What `Accept-Encoding` says of each coding we have.
struct AcceptEncoding {
    br: Option<f32>,
    gzip: Option<f32>,
    identity: Option<f32>,
    any: Option<f32>,
}

/// The quality given to the file as it is when `Accept-Encoding` does not name it: still
/// acceptable (RFC 9110 12.5.3), but after any coding the client asked for.
const IMPLICIT_IDENTITY: f32 = 0.0001;

impl AcceptEncoding {
    fn parse(request: &HeaderMap) -> Self {
        let mut this = Self {
            br: None,
            gzip: None,
            identity: None,
            any: None,
        };
        let entries = request
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for entry in entries {
            let mut parts = entry.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .map(|q| q.clamp(0.0, 1.0))
                .next_back()
                .unwrap_or(1.0);
            let slot = match coding.as_str() {
                "br" => &mut this.br,
                "gzip" | "x-gzip" => &mut this.gzip,
                "identity" => &mut this.identity,
                "*" => &mut this.any,
                _ => continue,
            };
            *slot = Some(q);
        }
        this
    }

    /// The client's preference for `coding` (`None`: the file as it is); 0 is refused.
    fn quality(&self, coding: Option<&str>) -> f32 {
        match coding {
            Some("br") => self.br.or(self.any).unwrap_or(0.0),
            Some("gzip") => self.gzip.or(self.any).unwrap_or(0.0),
            Some(_) => 0.0,
            // A client that refuses even the file as it is (`identity;q=0`, `*;q=0`) still
            // gets it when nothing else is left, as RFC 9110 allows, rather than a 406.
            None => self
                .identity
                .unwrap_or(IMPLICIT_IDENTITY)
                .max(f32::MIN_POSITIVE),
        }
    }
}

fn gzip(file: &[u8]) -> Vec<u8> {
    let mut out = flate2::write::GzEncoder::new(
        Vec::with_capacity(file.len() / 3),
        flate2::Compression::new(GZIP_LEVEL),
    );
    out.write_all(file).expect("writing to memory");
    out.finish().expect("writing to memory")
}

fn brotli(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() / 4);
    {
        let mut writer =
            brotli::CompressorWriter::new(&mut out, 4096, BROTLI_QUALITY, BROTLI_WINDOW);
        writer.write_all(file).expect("writing to memory");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use http_body_util::BodyExt;

    use super::*;

    const FILE: &[u8] =
        b"export const greeting = 'hello'; // hello hello hello hello hello hello hello\n";

    fn asset() -> StaticAsset {
        StaticAsset::new(FILE, "text/javascript; charset=utf-8")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    async fn get(asset: &StaticAsset, pairs: &[(&'static str, &str)]) -> (Reply, Bytes) {
        let res = asset.respond(&headers(pairs));
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, empty()), bytes)
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn unbrotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(b, 4096)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn each_encoding_decodes_to_the_file_with_its_own_tag() {
        let asset = asset();
        let (plain, body) = get(&asset, &[]).await;
        assert_eq!(&body[..], FILE);
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        let (gz, gz_body) = get(&asset, &[("accept-encoding", "gzip")]).await;
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gunzip(&gz_body), FILE);
        let (br, br_body) = get(&asset, &[("accept-encoding", "gzip, deflate, br")]).await;
        assert_eq!(br.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(unbrotli(&br_body), FILE);
        let tags = [&plain, &gz, &br].map(|r| r.headers()[header::ETAG].clone());
        assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
        for res in [&plain, &gz, &br] {
            let h = res.headers();
            assert_eq!(res.status(), 200);
            assert_eq!(h[header::VARY], "accept-encoding");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
            assert!(h[header::ETAG].to_str().unwrap().starts_with('"'));
        }
    }

    #[tokio::test]
    async fn a_known_tag_gets_304_without_a_body() {
        let asset = asset();
        let (first, _) = get(&asset, &[("accept-encoding", "gzip")]).await;
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            let (res, body) = get(
                &asset,
                &[("accept-encoding", "gzip"), ("if-none-match", &inm)],
            )
            .await;
            assert_eq!(res.status(), 304, "{inm}");
            assert!(body.is_empty());
            assert_eq!(res.headers()[header::ETAG], tag.as_str());
            assert_eq!(res.headers()[header::VARY], "accept-encoding");
        }
        // The tag of another encoding is another representation.
        let (res, body) = get(&asset, &[("if-none-match", &tag)]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(&body[..], FILE);
    }

    #[tokio::test]
    async fn accept_encoding_qualities_choose() {
        let asset = asset();
        let coding = |accept: &'static str| {
            let res = asset.respond(&headers(&[("accept-encoding", accept)]));
            res.headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(coding("br;q=0.5, gzip").as_deref(), Some("gzip"));
        assert_eq!(coding("br, gzip").as_deref(), Some("br"));
        assert_eq!(coding("*").as_deref(), Some("br"));
        assert_eq!(coding("gzip;q=0, br;q=0").as_deref(), None);
        assert_eq!(coding("identity, gzip;q=0.5").as_deref(), None);
        assert_eq!(coding("deflate").as_deref(), None);
        assert_eq!(coding("*;q=0").as_deref(), None, "nothing else is left");
    }

    #[test]
    fn encodings_that_do_not_shrink_the_file_are_not_kept() {
        let tiny = StaticAsset::new(b"{}", "application/json");
        assert_eq!(tiny.variants.len(), 1);
        assert_eq!(tiny.variants[0].coding, None);
    }
}
