//! Any gRPC client's `:authority` over a Unix socket.
//!
//! gRPC clients disagree on the `:authority` of a Unix-socket channel: grpc-go and tonic send
//! `localhost`, grpcio (C core, since 1.57) the percent-encoded socket path (`tmp%2Facb.sock`),
//! grpc-java the path itself. The HTTP/2 stack under tonic (h2) accepts only a valid URI
//! authority and resets every other stream with PROTOCOL_ERROR, so grpcio, grpcurl and
//! grpc-java failed with their default options. On a Unix socket the authority names nothing,
//! so [`AuthorityFix`] sits between the socket and HTTP/2 and fixes it:
//!
//! - it follows the client's frames (the 24-byte preface, then 9-byte frame headers) and passes
//!   every frame but HEADERS and CONTINUATION byte for byte;
//! - it decodes each header block with HPACK, mirroring the client's dynamic table, and passes
//!   the block as it came while its `:authority` is valid or absent;
//! - the first block with an invalid one (the socket path, or empty) switches the connection to
//!   re-encoding: from then on each header block is sent again as plain literals, which never
//!   touch HTTP/2's dynamic table (so the server's copy of it is never needed again), with the
//!   invalid authority replaced by `localhost`.
//!
//! What it cannot follow (a frame over [`MAX_FRAME`], a header block over [`MAX_BLOCK`], bad
//! padding, an HPACK error, a CONTINUATION out of place) is handed on as it came and the
//! connection is passed through from then on, for HTTP/2 to refuse with its own error.
//! Only Unix sockets are wrapped: a TCP client's authority is its `host:port`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::Connected;

/// The client's connection preface (`PRI * HTTP/2.0...`).
const PREFACE_LEN: usize = 24;
/// Frame header size.
const HEADER_LEN: usize = 9;
/// Frames longer than this are not followed (HTTP/2's own limit here is 16 KiB by default).
pub const MAX_FRAME: usize = 1 << 20;
/// A header block (HEADERS and its CONTINUATIONs) longer than this is not followed.
pub const MAX_BLOCK: usize = 256 << 10;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's least value).
const OUT_FRAME: usize = 16 << 10;
/// What an invalid authority becomes (what grpc-go and Kubernetes send over Unix sockets).
const REPLACEMENT: &[u8] = b"localhost";
/// The dynamic table size the client may use: HTTP/2's default SETTINGS_HEADER_TABLE_SIZE,
/// which the server here does not change.
const TABLE_SIZE: usize = 4096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A header block being gathered: its HEADERS frame's fields and the frames as they came.
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    original: Vec<u8>,
}

/// The byte-stream transform behind [`AuthorityFix`], client to server. Feed it what the
/// client sent with [`Rewriter::push`]; take what HTTP/2 should read with [`Rewriter::output`].
#[allow(missing_debug_implementations)] // holds an HPACK decoder, which has no Debug
pub struct Rewriter {
    input: Vec<u8>,
    output: Vec<u8>,
    preface_left: usize,
    decoder: Decoder<'static>,
    block: Option<Block>,
    reencode: bool,
    passthrough: bool,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            input: Vec::new(),
            output: Vec::new(),
            preface_left: PREFACE_LEN,
            decoder,
            block: None,
            reencode: false,
            passthrough: false,
            rewritten: 0,
        }
    }

    /// Header blocks whose `:authority` was replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Whether the rewriter gave up following the connection (it passes bytes as they come).
    pub fn passing_through(&self) -> bool {
        self.passthrough
    }

    /// Takes bytes the client sent and moves what can be handed on to the output.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.run();
    }

    /// At the client's end of stream: whatever is held back goes out as it came.
    pub fn finish(&mut self) {
        if self.block.is_some() || !self.input.is_empty() {
            self.give_up();
        }
    }

    /// Bytes ready for HTTP/2 (taken by the caller, who drains what it used).
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    fn run(&mut self) {
        if self.passthrough {
            self.output.append(&mut self.input);
            return;
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            self.output.extend(self.input.drain(..n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return;
            }
        }
        let mut at = 0;
        let mut oversized = false;
        while self.input.len() - at >= HEADER_LEN {
            let len = frame_len(&self.input[at..]);
            if len > MAX_FRAME {
                oversized = true;
                break;
            }
            if self.input.len() - at < HEADER_LEN + len {
                break;
            }
            let frame = self.input[at..at + HEADER_LEN + len].to_vec();
            at += HEADER_LEN + len;
            if !self.frame(frame) {
                break;
            }
        }
        self.input.drain(..at);
        if oversized || self.passthrough {
            self.give_up();
        }
    }

    /// Handles one whole frame; false once the rewriter gave up.
    fn frame(&mut self, frame: Vec<u8>) -> bool {
        let (ty, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[HEADER_LEN..];
        match (ty, self.block.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers(flags, payload) else {
                    self.output.extend_from_slice(&frame);
                    self.passthrough = true;
                    return false;
                };
                let fragment = fragment.to_vec();
                self.block = Some(Block { stream, flags, priority, fragment, original: frame });
            }
            (CONTINUATION, Some(b)) if b.stream == stream => {
                b.fragment.extend_from_slice(payload);
                b.original.extend_from_slice(&frame);
                if b.original.len() > MAX_BLOCK {
                    self.passthrough = true;
                    return false;
                }
            }
            (_, Some(b)) => {
                // Only CONTINUATION of the same stream may follow: HTTP/2 will refuse this.
                b.original.extend_from_slice(&frame);
                self.passthrough = true;
                return false;
            }
            (CONTINUATION, None) => {
                // A CONTINUATION with no header block open: HTTP/2 will refuse it.
                self.output.extend_from_slice(&frame);
                self.passthrough = true;
                return false;
            }
            (_, None) => {
                self.output.extend_from_slice(&frame);
                return true;
            }
        }
        match self.block.take() {
            Some(block) if flags & END_HEADERS != 0 => self.block_done(block),
            gathering => {
                self.block = gathering;
                true
            }
        }
    }

    /// A whole header block: decode, then pass it on as it came or re-encoded.
    fn block_done(&mut self, block: Block) -> bool {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bad = false;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                bad = true;
                fields.push((name.into_owned(), REPLACEMENT.to_vec()));
            } else {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if decoded.is_err() {
            self.output.extend_from_slice(&block.original);
            self.passthrough = true;
            return false;
        }
        if !bad && !self.reencode {
            self.output.extend_from_slice(&block.original);
            return true;
        }
        if bad {
            if self.rewritten == 0 {
                tracing::debug!("a client sent an invalid :authority over a Unix socket: replaced by localhost");
            }
            self.rewritten += 1;
        }
        self.reencode = true;
        let mut encoded = Vec::new();
        for (name, value) in &fields {
            // Literal header field without indexing, new name (RFC 7541 6.2.2), no Huffman.
            encoded.push(0);
            encode_string(name, &mut encoded);
            encode_string(value, &mut encoded);
        }
        let first = block.priority.map_or(OUT_FRAME, |_| OUT_FRAME - 5);
        let mut chunks = Vec::new();
        let (head, mut rest) = encoded.split_at(first.min(encoded.len()));
        chunks.push(head);
        while !rest.is_empty() {
            let (c, r) = rest.split_at(OUT_FRAME.min(rest.len()));
            chunks.push(c);
            rest = r;
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut flags = if i == last { END_HEADERS } else { 0 };
            let mut payload = Vec::with_capacity(chunk.len() + 5);
            let ty = if i == 0 {
                flags |= block.flags & END_STREAM;
                if let Some(p) = block.priority {
                    flags |= PRIORITY;
                    payload.extend_from_slice(&p);
                }
                HEADERS
            } else {
                CONTINUATION
            };
            payload.extend_from_slice(chunk);
            write_frame(ty, flags, block.stream, &payload, &mut self.output);
        }
        true
    }

    /// Hands on everything held back, as it came, and passes through from now on.
    fn give_up(&mut self) {
        if let Some(b) = self.block.take() {
            self.output.extend_from_slice(&b.original);
        }
        self.output.append(&mut self.input);
        self.passthrough = true;
    }
}

/// A HEADERS payload's priority fields and header block fragment, without padding; None if the
/// padding does not fit.
fn split_headers(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let priority = if flags & PRIORITY != 0 {
        let (prio, rest) = p.split_at_checked(5)?;
        p = rest;
        Some(<[u8; 5]>::try_from(prio).ok()?)
    } else {
        None
    };
    let keep = p.len().checked_sub(pad)?;
    Some((priority, &p[..keep]))
}

/// The payload length in a frame header (its first 3 bytes, big-endian).
fn frame_len(header: &[u8]) -> usize {
    usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])
}

/// An HPACK string literal, not Huffman-coded: a 7-bit-prefix length, then the bytes.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix after the high bits `first` (RFC 7541 5.1).
fn encode_integer(mut v: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn write_frame(ty: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A server-side connection whose client-to-server bytes pass through a [`Rewriter`]; writes
/// and the connection's [`Connected`] information (the Unix peer's credentials) are the inner
/// stream's.
#[allow(missing_debug_implementations)]
pub struct AuthorityFix<IO> {
    io: IO,
    rewriter: Rewriter,
    sent: usize,
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    /// Wraps a freshly accepted connection.
    pub fn new(io: IO) -> Self {
        AuthorityFix { io, rewriter: Rewriter::new(), sent: 0, eof: false }
    }
}

impl<IO: Connected> Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let out = this.rewriter.output();
            if this.sent < out.len() {
                let n = buf.remaining().min(out.len() - this.sent);
                buf.put_slice(&out[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == out.len() {
                    out.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    this.rewriter.finish();
                }
                Poll::Ready(Ok(())) => this.rewriter.push(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

crate::listener::write_through!(AuthorityFix);

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Decodes the header blocks of a server-bound byte stream as HTTP/2 here would (one
    /// decoder for the connection), checking that each is a valid URI authority if present.
    fn server_view(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut d = Decoder::new();
        let mut at = 24;
        let mut blocks = Vec::new();
        let mut frag = Vec::new();
        while at < bytes.len() {
            let len = frame_len(&bytes[at..]);
            let (ty, flags) = (bytes[at + 3], bytes[at + 4]);
            let payload = &bytes[at + 9..at + 9 + len];
            at += 9 + len;
            match ty {
                HEADERS => frag.extend_from_slice(split_headers(flags, payload).unwrap().1),
                CONTINUATION => frag.extend_from_slice(payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                blocks.push(d.decode(&frag).expect("the server decodes every block"));
                frag.clear();
            }
        }
        blocks
    }

    fn headers_frame(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(HEADERS, END_HEADERS | if end_stream { END_STREAM } else { 0 }, stream, block, &mut f);
        f
    }

    fn request(authority: &[u8], path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ]
    }

    /// Encodes with incremental indexing, so later blocks refer to the dynamic table (what
    /// grpcio does).
    fn encode_indexed(e: &mut Vec<(Vec<u8>, Vec<u8>)>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            if let Some(i) = e.iter().position(|x| x == f) {
                // Indexed field: dynamic entries start at 62, newest first.
                encode_integer(62 + i, 7, 0x80, &mut out);
            } else {
                out.push(0x40);
                encode_string(&f.0, &mut out);
                encode_string(&f.1, &mut out);
                e.insert(0, f.clone());
            }
        }
        out
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Rewriter) {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for c in chunks {
            r.push(c);
            out.append(r.output());
        }
        r.finish();
        out.append(r.output());
        (out, r)
    }

    #[test]
    fn valid_authorities_pass_byte_for_byte() {
        let mut table = Vec::new();
        let mut stream = PREFACE.to_vec();
        for (i, path) in [&b"/a.B/C"[..], b"/a.B/C", b"/a.B/D"].iter().enumerate() {
            let block = encode_indexed(&mut table, &request(b"localhost", path));
            stream.extend(headers_frame(1 + 2 * i as u32, &block, false));
            write_frame(0x0, END_STREAM, 1 + 2 * i as u32, b"\0\0\0\0\0", &mut stream);
        }
        let (out, r) = run(&[&stream]);
        assert_eq!(out, stream);
        assert_eq!(r.rewritten(), 0);
    }

    #[test]
    fn invalid_authorities_become_localhost_and_later_blocks_decode() {
        for bad in [&b"tmp%2Facb%2Fa.sock"[..], b"/run/acb/assigner.sock", b""] {
            let mut table = Vec::new();
            let mut stream = PREFACE.to_vec();
            let mut sent = Vec::new();
            for i in 0..4u32 {
                // The first block is fine; the second has the bad one; the third refers to the
                // dynamic table's copy of it; the fourth adds a new field.
                let auth: &[u8] = if i == 0 { b"localhost" } else { bad };
                let mut req = request(auth, b"/acb.v1.Assigner/Begin");
                if i == 3 {
                    req.push((b"grpc-timeout".to_vec(), b"100m".to_vec()));
                }
                let block = encode_indexed(&mut table, &req);
                stream.extend(headers_frame(1 + 2 * i, &block, i % 2 == 0));
                sent.push(req);
            }
            // Every split of the stream into two reads gives the same result.
            let (whole, r) = run(&[&stream]);
            assert_eq!(r.rewritten(), 3, "{bad:?}");
            assert!(!r.passing_through());
            for cut in 1..stream.len() {
                assert_eq!(run(&[&stream[..cut], &stream[cut..]]).0, whole, "cut at {cut}");
            }
            let seen = server_view(&whole);
            assert_eq!(seen.len(), 4);
            for (got, want) in seen.iter().zip(&sent) {
                let want: Vec<_> = want
                    .iter()
                    .map(|(n, v)| {
                        if n == b":authority" && v.as_slice() == bad {
                            (n.clone(), b"localhost".to_vec())
                        } else {
                            (n.clone(), v.clone())
                        }
                    })
                    .collect();
                assert_eq!(got, &want);
            }
        }
    }

    #[test]
    fn flags_priority_and_continuations_survive() {
        let mut table = Vec::new();
        let mut req = request(b"/x.sock", b"/p");
        req.push((b"big".to_vec(), vec![b'v'; 40_000]));
        let block = encode_indexed(&mut table, &req);
        let mut stream = PREFACE.to_vec();
        // PADDED + PRIORITY HEADERS carrying the first 100 bytes, then two CONTINUATIONs.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(&block[..100]);
        payload.extend_from_slice(&[0, 0, 0]);
        write_frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload, &mut stream);
        write_frame(CONTINUATION, 0, 5, &block[100..30_000], &mut stream);
        write_frame(CONTINUATION, END_HEADERS, 5, &block[30_000..], &mut stream);
        let (out, r) = run(&[&stream]);
        assert_eq!(r.rewritten(), 1);
        let first = &out[24..];
        assert_eq!(first[3], HEADERS);
        assert_eq!(first[4], PRIORITY | END_STREAM, "END_STREAM and PRIORITY kept, PADDED gone, more to come");
        assert_eq!(&first[9..14], &[0, 0, 0, 0, 15]);
        let seen = server_view(&out);
        assert_eq!(seen[0][3], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(seen[0][5].1.len(), 40_000);
    }

    #[test]
    fn what_cannot_be_followed_passes_as_it_came() {
        // Bad padding.
        let mut stream = PREFACE.to_vec();
        write_frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2], &mut stream);
        write_frame(0x0, 0, 1, b"data", &mut stream);
        let (out, r) = run(&[&stream]);
        assert_eq!(out, stream);
        assert!(r.passing_through());
        // An HPACK error (an index past both tables).
        let mut stream = PREFACE.to_vec();
        stream.extend(headers_frame(1, &[0xff, 0x7f], true));
        let (out, r) = run(&[&stream]);
        assert_eq!(out, stream);
        assert!(r.passing_through());
        // A frame header announcing more than MAX_FRAME, cut short.
        let mut stream = PREFACE.to_vec();
        stream.extend_from_slice(&[0xff, 0xff, 0xff, HEADERS, 0, 0, 0, 0, 1, 1, 2, 3]);
        let (out, r) = run(&[&stream]);
        assert_eq!(out, stream);
        assert!(r.passing_through());
        // A DATA frame in the middle of a header block.
        let mut stream = PREFACE.to_vec();
        write_frame(HEADERS, 0, 1, &[0x82], &mut stream);
        write_frame(0x0, 0, 1, b"x", &mut stream);
        let (out, _) = run(&[&stream]);
        assert_eq!(out, stream);
        // A CONTINUATION with no HEADERS before it (found by the fuzzer).
        let mut stream = PREFACE.to_vec();
        write_frame(CONTINUATION, END_HEADERS, 1, &[0xff, 0x7f], &mut stream);
        let (out, r) = run(&[&stream]);
        assert_eq!(out, stream);
        assert!(r.passing_through());
        // A connection that ends mid-frame.
        let (out, _) = run(&[&PREFACE[..10]]);
        assert_eq!(out, &PREFACE[..10]);
    }

    #[test]
    fn integers_encode_as_rfc7541_says() {
        // RFC 7541 C.1: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 in an 8-bit prefix.
        let mut v = Vec::new();
        encode_integer(10, 5, 0, &mut v);
        assert_eq!(v, [0x0a]);
        v.clear();
        encode_integer(1337, 5, 0, &mut v);
        assert_eq!(v, [0x1f, 0x9a, 0x0a]);
        v.clear();
        encode_integer(42, 8, 0, &mut v);
        assert_eq!(v, [0x2a]);
    }
}
