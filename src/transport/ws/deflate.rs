//! permessage-deflate negotiation (RFC 7692 §5, §7.1). kgate accepts an offer only on
//! terms that let one compressed frame serve every recipient (no server context
//! takeover, the full window) and asks clients to compress without context too, so no
//! connection keeps compressor or inflater state between messages.

/// The `Sec-WebSocket-Extensions` answer to an accepted offer.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// True when one of the offered extensions (the `Sec-WebSocket-Extensions` values) is a
/// permessage-deflate offer kgate can accept.
pub fn accepts<'a>(offers: impl IntoIterator<Item = &'a str>) -> bool {
    offers
        .into_iter()
        .flat_map(|header| header.split(','))
        .any(acceptable)
}

fn acceptable(offer: &str) -> bool {
    let mut params = offer.split(';').map(str::trim);
    if params.next() != Some("permessage-deflate") {
        return false;
    }
    // A parameter given twice makes the offer invalid (§7).
    let mut seen: Vec<&str> = Vec::new();
    params.all(|param| {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // Frames are compressed once for everyone with the full window; an offer
            // asking for a smaller one is declined (the connection goes uncompressed).
            ("server_max_window_bits", Some(bits)) => bits == "15",
            // Inflating with the full window reads a stream made with any smaller one.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => {
                bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_and_library_offers_are_accepted() {
        // Chromium, Firefox, Python's websockets.
        assert!(accepts(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts(["permessage-deflate"]));
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits=12"
        ]));
        // A second, acceptable offer after one that is not.
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(accepts(["x-webkit-deflate-frame", "permessage-deflate"]));
    }

    #[test]
    fn offers_kgate_cannot_honour_are_declined() {
        assert!(!accepts([]));
        assert!(!accepts(["x-webkit-deflate-frame"]));
        assert!(!accepts(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!accepts(["permessage-deflate; client_max_window_bits=16"]));
        assert!(!accepts(["permessage-deflate; mystery"]));
        assert!(!accepts([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
    }
}
