//! HTTP/1.1 chunked framing (RFC 9112, section 7.1) of push streams the server writes
//! itself: one chunk per frame, so an event's chunk is encoded once and written as is to
//! every subscriber of its channel.

use bytes::{BufMut, Bytes, BytesMut};

/// The chunk that ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `frame` as one chunk: its size in hex, CRLF, the frame, CRLF. An empty frame has no
/// chunk (an empty chunk would end the body): callers skip it.
pub fn encode(frame: &[u8]) -> Bytes {
    encode_with(frame.len(), |b| b.put_slice(frame))
}

/// Appends `frame` to `out` as one chunk (for a writer gathering several).
pub fn put(out: &mut BytesMut, frame: &[u8]) {
    out.put_slice(format!("{:x}\r\n", frame.len()).as_bytes());
    out.put_slice(frame);
    out.put_slice(b"\r\n");
}

/// A chunk of `len` bytes that `fill` writes (exactly `len` of them).
pub(crate) fn encode_with(len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(len + 20);
    b.put_slice(format!("{len:x}\r\n").as_bytes());
    let start = b.len();
    fill(&mut b);
    debug_assert_eq!(
        b.len() - start,
        len,
        "the chunk's size line matches its data"
    );
    b.put_slice(b"\r\n");
    b.freeze()
}

/// The frame inside a chunk made by [`encode`] or [`encode_with`].
pub(crate) fn payload(chunk: &Bytes) -> Bytes {
    let head = chunk
        .iter()
        .position(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    chunk.slice(head..chunk.len().saturating_sub(2).max(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_holds_its_size_in_hex_and_gives_back_its_frame() {
        let frame = vec![b'x'; 300];
        let chunk = encode(&frame);
        assert!(chunk.starts_with(b"12c\r\n"));
        assert!(chunk.ends_with(b"x\r\n"));
        assert_eq!(chunk.len(), 5 + 300 + 2);
        assert_eq!(payload(&chunk), frame);
        let one = encode(b"a");
        assert_eq!(&one[..], b"1\r\na\r\n");
        assert_eq!(&payload(&one)[..], b"a");
    }
}
