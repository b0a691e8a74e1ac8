//! Where a client's token comes from at the handshake. Browsers cannot set headers
//! on a WebSocket, so besides `Authorization: Bearer` a token may come in a
//! subprotocol entry or a query parameter. None of these is ever logged.

use http::HeaderMap;

/// A subprotocol entry `kgate.bearer.<jwt>` carries a token (offered next to `kgate.v1.json`).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "kgate.bearer.";

/// The token of a request: the Authorization header first, then a bearer subprotocol
/// entry, then the query parameter `param`.
pub fn token_from_request(headers: &HeaderMap, query: &str, param: &str) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // An empty header (some clients send one) counts as none.
    if let Some(auth) = header("authorization").filter(|a| !a.trim().is_empty()) {
        let (scheme, token) = auth.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    let from_protocol = header("sec-websocket-protocol").and_then(|offered| {
        offered
            .split(',')
            .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
            .map(str::to_string)
    });
    from_protocol.or_else(|| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == param)
            .map(|(_, v)| v.into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn header_then_subprotocol_then_query() {
        let q = "access_token=q.q.q&x=1";
        let p = "access_token";
        assert_eq!(
            token_from_request(&headers(&[("authorization", "Bearer h.h.h")]), q, p).as_deref(),
            Some("h.h.h")
        );
        let offered = headers(&[(
            "sec-websocket-protocol",
            "kgate.v1.json, kgate.bearer.s.s.s",
        )]);
        assert_eq!(token_from_request(&offered, q, p).as_deref(), Some("s.s.s"));
        assert_eq!(
            token_from_request(&HeaderMap::new(), q, p).as_deref(),
            Some("q.q.q")
        );
        assert_eq!(token_from_request(&HeaderMap::new(), "x=1", p), None);
        // Another scheme is not a bearer token, and does not fall through to the query.
        assert_eq!(
            token_from_request(&headers(&[("authorization", "Basic abc")]), q, p),
            None
        );
    }
}
