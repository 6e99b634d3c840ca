//! Feeds arbitrary bytes to the HTTP request parser and the range parser. They must never
//! panic; a head accepted from a prefix must be the same head from the whole input; a
//! head never uses more than it was given nor more than the 8 KiB limit; a range is always
//! inside the file; the sniffer decides once and for good.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::encoding::Decoded;
use xfer::encoding::http::{self, Ranged};
use xfer::encoding::sniff::sniff;

fuzz_target!(|data: &[u8]| {
    let whole = http::parse(data);
    if let Ok(Decoded::Done(req, n)) = &whole {
        assert!(*n <= data.len() && *n <= http::MAX_HEAD);
        assert_eq!(http::parse(&data[..*n]), Ok(Decoded::Done(req.clone(), *n)));
        let _ = http::path_bytes(req.target);
    }
    for cut in 0..data.len().min(300) {
        if let Ok(Decoded::Done(req, n)) = http::parse(&data[..cut]) {
            assert_eq!(whole, Ok(Decoded::Done(req, n)), "a prefix decided differently");
        }
    }
    if let Some(p) = (0..=data.len().min(20)).find_map(|c| sniff(&data[..c])) {
        assert_eq!(sniff(data), Some(p));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let size = u64::from_le_bytes(data.iter().copied().chain([0; 8]).take(8).collect::<Vec<_>>().try_into().unwrap_or([0; 8]));
        if let Ranged::Part(a, b) = http::parse_range(text, size) {
            assert!(a < b && b <= size);
        }
    }
});
