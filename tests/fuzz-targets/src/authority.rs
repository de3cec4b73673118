//! The Unix-socket `:authority` fix (`acb_assigner::authority::Rewriter`): a client's bytes, as
//! HTTP/2 here will read them after the rewriter.

use acb_assigner::authority::Rewriter;
use loona_hpack::Decoder;

/// Feeds `data[1..]` (after an HTTP/2 preface) to a rewriter whole, and again cut in two at a
/// point `data[0]` picks; both must give the same bytes. Accepted: the rewriter followed the
/// whole stream; then what it hands on must be whole frames whose header blocks one HPACK
/// decoder (HTTP/2's) decodes in order with every `:authority` valid, and when it replaced
/// nothing, the bytes must be the client's own.
pub fn authority(data: &[u8]) -> bool {
    let Some((&cut, body)) = data.split_first() else { return false };
    let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    stream.extend_from_slice(body);
    let run = |parts: &[&[u8]]| {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for p in parts {
            r.push(p);
            out.append(r.output());
        }
        let followed = !r.passing_through();
        r.finish();
        out.append(r.output());
        (out, followed, r.rewritten())
    };
    let (whole, followed, rewritten) = run(&[&stream]);
    let at = usize::from(cut) * stream.len() / 256;
    let (split, ..) = run(&[&stream[..at], &stream[at..]]);
    assert_eq!(whole, split, "the result depends on how the bytes were cut");
    if !followed {
        return false;
    }
    if rewritten == 0 {
        assert_eq!(whole, stream, "nothing replaced, yet the bytes changed");
    }
    check_server_view(&whole[24..]);
    true
}

/// Whole frames; every header block decodes in order, every `:authority` valid.
fn check_server_view(mut bytes: &[u8]) {
    let mut decoder = Decoder::new();
    let mut block = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let (ty, flags) = (bytes[3], bytes[4]);
        let payload = &bytes[9..9 + len];
        bytes = &bytes[9 + len..];
        let fragment = match ty {
            0x1 => {
                let mut p = payload;
                let mut pad = 0;
                if flags & 0x8 != 0 {
                    pad = usize::from(p[0]);
                    p = &p[1..];
                }
                if flags & 0x20 != 0 {
                    p = &p[5..];
                }
                &p[..p.len() - pad]
            }
            0x9 => payload,
            _ => continue,
        };
        block.extend_from_slice(fragment);
        if flags & 0x4 != 0 {
            let decoded = decoder.decode_with_cb(&block, |name, value| {
                if &*name == b":authority" {
                    assert!(http::uri::Authority::try_from(&*value).is_ok(), "authority {value:?} handed on");
                }
            });
            assert!(decoded.is_ok(), "HTTP/2 could not decode a block handed on: {decoded:?}");
            block.clear();
        }
    }
}
