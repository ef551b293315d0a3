//! Path ↔ key: a file's object key is its share's bucket prefix plus its path, byte for byte.
//!
//! Limits (docs/design.md §2, issue 6): names are UTF-8, 1 to 255 bytes, never `.` or `..`, no `/`
//! and no control characters (object_store cannot express them and S3 tools mangle them); a whole
//! key is at most 1024 bytes, S3's own limit. Pure functions, no I/O.

use crate::gateway::GatewayError;

pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks one path component as a client sends it.
pub fn validate_name(name: &[u8]) -> Result<&str, GatewayError> {
    let shown = String::from_utf8_lossy(name);
    if name.len() > MAX_NAME_BYTES {
        return Err(GatewayError::NameTooLong(format!(
            "{shown:?} is {} bytes (at most {MAX_NAME_BYTES})",
            name.len()
        )));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| GatewayError::InvalidArgument(format!("{shown:?} is not UTF-8")))?;
    if name.is_empty() || name == "." || name == ".." {
        return Err(GatewayError::InvalidArgument(format!(
            "{name:?} is not a usable file name"
        )));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(GatewayError::InvalidArgument(format!(
            "{name:?}: names may not contain '/' or control characters"
        )));
    }
    Ok(name)
}

/// The path of `name` inside the directory at `dir_path` ('' is the share root).
pub fn join(dir_path: &str, name: &str) -> String {
    if dir_path.is_empty() {
        name.to_owned()
    } else {
        format!("{dir_path}/{name}")
    }
}

/// The object key of a path, checked against the key-length limit.
pub fn key(prefix: &str, path: &str) -> Result<String, GatewayError> {
    let key = format!("{prefix}{path}");
    if key.len() > MAX_KEY_BYTES {
        return Err(GatewayError::NameTooLong(format!(
            "object key for {path:?} would be {} bytes (at most {MAX_KEY_BYTES})",
            key.len()
        )));
    }
    Ok(key)
}

/// The listing prefix of a directory: `prefix/path/`, or the share prefix for the root.
pub fn dir_prefix(prefix: &str, dir_path: &str) -> String {
    if dir_path.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}{dir_path}/")
    }
}

/// A share's bucket prefix, normalised to end in `/`; `shares/<name>/` when none is given.
pub fn bucket_prefix(share: &str, given: Option<&str>) -> Result<String, GatewayError> {
    let raw = given.map_or_else(|| format!("shares/{share}"), str::to_owned);
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || trimmed.chars().any(char::is_control)
    {
        return Err(GatewayError::InvalidArgument(format!(
            "bucket prefix {raw:?}: use non-empty '/'-separated segments, no '.' or '..'"
        )));
    }
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_against_the_limits() {
        let long = vec![b'a'; 256];
        let cases: [(&[u8], bool); 9] = [
            (b"a", true),
            (b"caf\xc3\xa9 #%?.txt", true),
            (b"", false),
            (b".", false),
            (b"..", false),
            (b"a/b", false),
            (b"a\nb", false),
            (b"\xff", false),
            (&long, false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
        }
        assert!(matches!(
            validate_name(&long),
            Err(GatewayError::NameTooLong(_))
        ));
        assert!(validate_name(&long[..255]).is_ok());
    }

    #[test]
    fn keys_are_prefix_plus_path() {
        assert_eq!(key("shares/s/", "a/b").unwrap(), "shares/s/a/b");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(dir_prefix("p/", ""), "p/");
        assert_eq!(dir_prefix("p/", "d"), "p/d/");
        assert!(key("p/", &"x".repeat(1100)).is_err());
        assert_eq!(bucket_prefix("s", None).unwrap(), "shares/s/");
        assert_eq!(bucket_prefix("s", Some("/x/y/")).unwrap(), "x/y/");
        assert!(bucket_prefix("s", Some("a/../b")).is_err());
    }
}
