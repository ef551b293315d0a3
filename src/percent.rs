//! Percent-encoding (RFC 3986 §2.1) of everything but the unreserved characters: what SigV4's
//! canonical URI wants (`store`), what an API path segment needs (`cli`), and what keeps an
//! object key a valid header value (`gateway::import`).
//!
//! A leaf: it imports nothing of tidegate, so any layer may use it. Invariant: the output is
//! ASCII, and only `A–Z a–z 0–9 - . _ ~` (and `/` when kept) appear unescaped.

/// Escapes every byte of `s` but RFC 3986's unreserved characters, as `%XX` in upper-case hex;
/// `/` is kept as is when `keep_slash` (a key or path of several segments) and escaped
/// otherwise (one segment).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn unreserved_kept_everything_else_escaped() {
        let cases = [
            ("a b/c~d%é", true, "a%20b/c~d%25%C3%A9"),
            ("a/b", false, "a%2Fb"),
            ("a/b c.txt", true, "a/b%20c.txt"),
            ("AZaz09-._~", false, "AZaz09-._~"),
            ("?&=+", true, "%3F%26%3D%2B"),
            ("", false, ""),
        ];
        for (input, keep_slash, want) in cases {
            assert_eq!(encode(input, keep_slash), want, "{input:?} {keep_slash}");
        }
    }
}
