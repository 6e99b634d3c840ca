//! Feeds arbitrary bytes to the native protocol's decoders (request, response, proof), whole and split at every point a peer could
//! split them. They must never panic, must agree with themselves when fed a prefix
//! ("need more" never turns into an error that the whole input does not also give), and a
//! decoded value must survive re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::encoding::{self, Decoded};
use xfer::encoding::xfer::Response;

fuzz_target!(|data: &[u8]| {
    let whole_req = encoding::xfer::decode_request(data);
    let whole_resp = encoding::xfer::decode_response(data);
    let whole_proof = encoding::xfer::decode_proof(data);
    for cut in 0..data.len().min(320) {
        if let Ok(Decoded::Done(..)) = encoding::xfer::decode_request(&data[..cut]) {
            // A complete request at a prefix must be the same request at the whole.
            assert_eq!(encoding::xfer::decode_request(&data[..cut]), whole_req);
        }
        let _ = encoding::xfer::decode_response(&data[..cut]);
        if let Ok(Decoded::Done(..)) = encoding::xfer::decode_proof(&data[..cut]) {
            assert_eq!(encoding::xfer::decode_proof(&data[..cut]), whole_proof);
        }
    }
    if let Ok(Decoded::Done(proof, n)) = whole_proof {
        assert_eq!(&encoding::xfer::encode_proof(&proof)[..], &data[..n]);
    }
    if let Ok(Decoded::Done(req, n)) = whole_req {
        assert_eq!(n, encoding::xfer::REQUEST_LEN);
        assert_eq!(&encoding::xfer::encode_request(&req)[..], &data[..n]);
    }
    match whole_resp {
        Ok(Decoded::Done(Response::Ok { size, digest, name, mac }, n)) => {
            // Version 2 always carries a name (maybe empty); version 1 never does.
            let version = if name.is_some() { encoding::xfer::VERSION } else { encoding::xfer::V1 };
            let mut out = [0u8; encoding::xfer::MAX_RESPONSE_HEAD];
            let name = name.as_deref().unwrap_or(&[]);
            let len = encoding::xfer::encode_ok_in(version, size, &digest, name, mac.as_ref().map(|m| &m.mac), &mut out);
            assert_eq!(&out[..len], &data[..n]);
        }
        Ok(Decoded::Done(Response::Challenge { nonce }, n)) => {
            assert_eq!(&encoding::xfer::encode_challenge(&nonce)[..], &data[..n]);
        }
        Ok(Decoded::Done(Response::Refused { status, reason, .. }, n)) => {
            assert!(n <= encoding::xfer::HEADER_LEN + encoding::xfer::MAX_REASON);
            assert!(reason.len() <= 3 * encoding::xfer::MAX_REASON, "lossy decoding may grow, but boundedly");
            assert_ne!(status, encoding::xfer::Status::Ok);
        }
        _ => {}
    }
});
