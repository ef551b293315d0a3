//! What a function may ask for on its stdout: derived objects and user metadata (docs/device.md,
//! "Functions on PUT"). A pure codec: bytes in, typed directives out, no I/O.
//!
//! One JSON object per line; blank lines are skipped; anything else is a protocol error, so a
//! function that prints by mistake is reported rather than half applied. Invariant: a run's
//! directives are accepted only as a whole, after every line parsed and every limit held.

use base64::Engine as _;
use serde::Deserialize;

/// The most a function may print on stdout, in bytes (the whole of it is held in memory).
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Derived objects one run may write.
pub const MAX_DERIVED_OBJECTS: usize = 100;
/// S3 caps a user metadata header block at 2 KiB; names and values together stay below it.
pub const MAX_METADATA_BYTES: usize = 2048;
/// Metadata names a function may not use: the device's own.
pub const RESERVED_PREFIX: &str = "tidegate-";

/// A derived object: stored as `<the object's key><suffix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub suffix: String,
    pub data: Vec<u8>,
    pub content_type: Option<String>,
}

/// Everything one run asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub derived: Vec<Derived>,
    /// User metadata to add to the object, names lower-cased.
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("stdout is over {MAX_OUTPUT_BYTES} bytes")]
    TooLarge,
    #[error("stdout line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("more than {MAX_DERIVED_OBJECTS} derived objects")]
    TooManyObjects,
    #[error("user metadata over {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    suffix: Option<String>,
    text: Option<String>,
    base64: Option<String>,
    content_type: Option<String>,
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// Parses a run's stdout.
pub fn parse(out: &[u8]) -> Result<Directives, ProtocolError> {
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(ProtocolError::TooLarge);
    }
    let mut dirs = Directives::default();
    for (n, raw) in out.split(|b| *b == b'\n').enumerate() {
        let line = n + 1;
        let bad = |reason: String| ProtocolError::Malformed { line, reason };
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Line = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
        match (parsed.suffix, parsed.metadata) {
            (Some(suffix), None) => {
                dirs.derived.push(
                    derived(suffix, parsed.text, parsed.base64, parsed.content_type)
                        .map_err(bad)?,
                );
                if dirs.derived.len() > MAX_DERIVED_OBJECTS {
                    return Err(ProtocolError::TooManyObjects);
                }
            }
            (None, Some(meta)) if parsed.text.is_none() && parsed.base64.is_none() => {
                for (name, value) in meta {
                    let name = check_metadata(&name, &value).map_err(bad)?;
                    dirs.metadata.retain(|(n, _)| *n != name);
                    dirs.metadata.push((name, value));
                }
            }
            _ => {
                return Err(bad(
                    "expected {\"suffix\", \"text\" or \"base64\"} or {\"metadata\"}".into(),
                ));
            }
        }
    }
    dirs.metadata.sort();
    let meta_bytes: usize = dirs.metadata.iter().map(|(n, v)| n.len() + v.len()).sum();
    if meta_bytes > MAX_METADATA_BYTES {
        return Err(ProtocolError::MetadataTooLarge);
    }
    Ok(dirs)
}

fn derived(
    suffix: String,
    text: Option<String>,
    b64: Option<String>,
    content_type: Option<String>,
) -> Result<Derived, String> {
    if suffix.is_empty() || suffix.contains('\0') {
        return Err("a suffix must be non-empty and hold no NUL".into());
    }
    let data = match (text, b64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| format!("base64: {e}"))?,
        _ => return Err("a derived object needs exactly one of \"text\" and \"base64\"".into()),
    };
    if let Some(t) = &content_type
        && !header_safe(t)
    {
        return Err(format!("content type {t:?} is not printable ASCII"));
    }
    Ok(Derived {
        suffix,
        data,
        content_type,
    })
}

/// A metadata name as S3 stores it (lower case), if the name and value are acceptable.
fn check_metadata(name: &str, value: &str) -> Result<String, String> {
    let name = name.to_ascii_lowercase();
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(format!(
            "metadata name {name:?}: use letters, digits, '-' and '_'"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "metadata name {name:?}: {RESERVED_PREFIX}* is the device's"
        ));
    }
    if !header_safe(value) {
        return Err(format!(
            "metadata {name:?}: the value is not printable ASCII"
        ));
    }
    Ok(name)
}

/// Printable ASCII: what survives an HTTP header unencoded.
fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_directives_or_name_the_bad_line() {
        let ok = b"\n{\"suffix\": \".lines\", \"text\": \"3\\n\"}\n{\"suffix\": \".bin\", \"base64\": \"AAEC\", \"content_type\": \"application/octet-stream\"}\n{\"metadata\": {\"Lines\": \"3\", \"kind\": \"text\"}}\n";
        let dirs = parse(ok).unwrap();
        assert_eq!(
            dirs.derived,
            vec![
                Derived {
                    suffix: ".lines".into(),
                    data: b"3\n".to_vec(),
                    content_type: None
                },
                Derived {
                    suffix: ".bin".into(),
                    data: vec![0, 1, 2],
                    content_type: Some("application/octet-stream".into())
                },
            ]
        );
        assert_eq!(
            dirs.metadata,
            vec![("kind".into(), "text".into()), ("lines".into(), "3".into())]
        );
        let cases: [(&[u8], usize); 7] = [
            (b"hello\n", 1),
            (b"{}\n", 1),
            (b"\n{\"suffix\": \"\", \"text\": \"x\"}", 2),
            (
                b"{\"suffix\": \".a\", \"text\": \"x\", \"base64\": \"eA==\"}",
                1,
            ),
            (b"{\"metadata\": {\"tidegate-derived-from\": \"x\"}}", 1),
            (b"{\"metadata\": {\"a b\": \"x\"}}", 1),
            (b"{\"suffix\": \".a\", \"text\": \"x\", \"extra\": 1}", 1),
        ];
        for (out, line) in cases {
            match parse(out) {
                Err(ProtocolError::Malformed { line: l, .. }) => {
                    assert_eq!(l, line, "{}", String::from_utf8_lossy(out))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(out)),
            }
        }
        assert_eq!(parse(b"").unwrap(), Directives::default());
    }

    #[test]
    fn limits_are_enforced() {
        let many: String = (0..=MAX_DERIVED_OBJECTS)
            .map(|i| format!("{{\"suffix\": \".{i}\", \"text\": \"\"}}\n"))
            .collect();
        assert_eq!(parse(many.as_bytes()), Err(ProtocolError::TooManyObjects));
        let big = format!("{{\"metadata\": {{\"a\": \"{}\"}}}}", "x".repeat(3000));
        assert_eq!(parse(big.as_bytes()), Err(ProtocolError::MetadataTooLarge));
        assert_eq!(
            parse(&vec![b'\n'; MAX_OUTPUT_BYTES + 1]),
            Err(ProtocolError::TooLarge)
        );
    }
}
