//! NFSv4 owner strings (RFC 8881 §5.9): `owner` and `owner_group` are strings, not numbers.
//!
//! Without an id domain the gateway sends and takes plain numbers (`"1000"`), what Linux
//! clients send and expect with id mapping off (their default for AUTH_SYS). With a domain,
//! owners go out as `name@domain` for ids this machine's passwd/group files name (numbers for
//! the rest, which RFC 8881 allows), and `name@domain` coming in is mapped back through the same
//! files. Numbers, `N@domain`, `root` and `nobody` are always understood. Loaded once at start;
//! lookups are pure.

use std::collections::HashMap;

use super::consts::{NFS4ERR_BADCHAR, NFS4ERR_BADOWNER};
use crate::gateway::files::ANONYMOUS_ID;

#[derive(Debug, Clone, Default)]
struct Names {
    by_id: HashMap<u32, String>,
    by_name: HashMap<String, u32>,
}

impl Names {
    /// Reads `name:x:id:...` lines (passwd(5), group(5)); malformed lines are skipped.
    fn parse(text: &str) -> Self {
        let mut n = Self::default();
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else {
                continue;
            };
            if name.is_empty() || name.starts_with('#') {
                continue;
            }
            n.by_id.entry(id).or_insert_with(|| name.to_owned());
            n.by_name.entry(name.to_owned()).or_insert(id);
        }
        n
    }
}

/// How owner strings map to ids.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    domain: Option<String>,
    users: Names,
    groups: Names,
}

impl IdMap {
    /// Numbers only (no domain).
    pub fn numeric() -> Self {
        Self::default()
    }

    /// With a domain, from passwd and group file contents.
    pub fn with_domain(domain: &str, passwd: &str, group: &str) -> Self {
        Self {
            domain: Some(domain.to_owned()),
            users: Names::parse(passwd),
            groups: Names::parse(group),
        }
    }

    /// With a domain, from this machine's /etc/passwd and /etc/group (missing files: numbers).
    pub fn load(domain: Option<&str>) -> Self {
        match domain {
            None => Self::numeric(),
            Some(d) => {
                let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
                Self::with_domain(d, &read("/etc/passwd"), &read("/etc/group"))
            }
        }
    }

    fn names(&self, group: bool) -> &Names {
        if group { &self.groups } else { &self.users }
    }

    /// The string an id goes out as.
    pub fn to_string(&self, id: u32, group: bool) -> String {
        match &self.domain {
            None => id.to_string(),
            Some(d) => match self.names(group).by_id.get(&id) {
                Some(name) => format!("{name}@{d}"),
                None => id.to_string(),
            },
        }
    }

    /// The id a client's string names.
    pub fn parse(&self, s: &[u8], group: bool) -> Result<u32, u32> {
        let s = std::str::from_utf8(s).map_err(|_| NFS4ERR_BADCHAR)?;
        let (name, at) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = at
            && self
                .domain
                .as_deref()
                .is_none_or(|ours| !ours.eq_ignore_ascii_case(d))
        {
            return Err(NFS4ERR_BADOWNER);
        }
        if let Ok(id) = name.parse::<u32>() {
            return Ok(id);
        }
        match name {
            "root" => Ok(0),
            "nobody" => Ok(ANONYMOUS_ID),
            _ => self
                .names(group)
                .by_name
                .get(name)
                .copied()
                .ok_or(NFS4ERR_BADOWNER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:alice\n";

    #[test]
    fn numbers_without_a_domain() {
        let m = IdMap::numeric();
        assert_eq!(m.to_string(1000, false), "1000");
        assert_eq!(m.parse(b"1000", false), Ok(1000));
        assert_eq!(m.parse(b"nobody", true), Ok(ANONYMOUS_ID));
        assert_eq!(m.parse(b"1000@example.org", false), Err(NFS4ERR_BADOWNER));
        assert_eq!(m.parse(b"alice", false), Err(NFS4ERR_BADOWNER));
        assert_eq!(m.parse(&[0xff], false), Err(NFS4ERR_BADCHAR));
    }

    #[test]
    fn names_at_the_domain_both_ways() {
        let m = IdMap::with_domain("example.org", PASSWD, GROUP);
        assert_eq!(m.to_string(1000, false), "alice@example.org");
        assert_eq!(m.to_string(50, true), "staff@example.org");
        assert_eq!(m.to_string(4242, false), "4242");
        assert_eq!(m.parse(b"alice@EXAMPLE.org", false), Ok(1000));
        assert_eq!(m.parse(b"staff@example.org", true), Ok(50));
        assert_eq!(m.parse(b"42@example.org", false), Ok(42));
        assert_eq!(m.parse(b"alice@other.org", false), Err(NFS4ERR_BADOWNER));
        assert_eq!(
            m.parse(b"mallory@example.org", false),
            Err(NFS4ERR_BADOWNER)
        );
    }
}
