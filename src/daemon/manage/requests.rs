//! Request types checked and turned into what the gateway takes: sizes with units, octal
//! modes, CIDRs, enum names. A request that does not make sense is the caller's error (400,
//! `bad_request`) and names the field.

use std::str::FromStr;

use crate::catalog::shares::Squash;
use crate::catalog::tapes::LockMode;
use crate::catalog::volumes::VolumeMode;
use crate::config::ByteSize;
use crate::frontend::api::ApiError;
use crate::frontend::api::types::{CreateShare, CreateTapes, Mode, Size};
use crate::gateway::files::{Cidr, ShareSpec};

pub fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", message)
}

/// A size as bytes; `field` names it in the error.
pub fn size(v: &Size, field: &str) -> Result<u64, ApiError> {
    match v {
        Size::Bytes(n) => Ok(*n),
        Size::Text(s) => ByteSize::from_str(s)
            .map(ByteSize::bytes)
            .map_err(|e| bad(format!("`{field}`: {e}"))),
    }
}

pub fn optional_size(v: Option<&Size>, field: &str) -> Result<Option<u64>, ApiError> {
    v.map(|s| size(s, field)).transpose()
}

pub fn volume_mode(mode: Option<&str>) -> Result<VolumeMode, ApiError> {
    match mode {
        None | Some("cached") => Ok(VolumeMode::Cached),
        Some("stored") => Ok(VolumeMode::Stored),
        Some(other) => Err(bad(format!("`mode` {other:?}: use cached or stored"))),
    }
}

/// Modes as octal strings ("0644", "0o644"), as people write them, or plain numbers.
fn mode(v: &Mode, field: &str) -> Result<u32, ApiError> {
    let m = match v {
        Mode::Number(n) => Some(*n),
        Mode::Octal(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
    };
    m.filter(|m| *m <= 0o7777)
        .ok_or_else(|| bad(format!("`{field}` {v:?} is not a file mode")))
}

pub fn share_spec(r: &CreateShare) -> Result<ShareSpec, ApiError> {
    let mut spec = ShareSpec::new(&r.name);
    spec.bucket_prefix = r.prefix.clone().filter(|p| !p.is_empty());
    spec.read_only = r.read_only;
    if let Some(sq) = &r.squash {
        spec.squash = Squash::parse(sq)
            .ok_or_else(|| bad(format!("`squash` {sq:?}: use root, all or none")))?;
    }
    if let Some(list) = &r.allowed_clients {
        spec.allowed_clients = list
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| Cidr::parse(c).map_err(super::api_error))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = r.default_uid {
        spec.default_uid = v;
    }
    if let Some(v) = r.default_gid {
        spec.default_gid = v;
    }
    if let Some(v) = &r.default_mode {
        spec.default_file_mode = mode(v, "default_mode")?;
    }
    if let Some(v) = &r.default_dir_mode {
        spec.default_dir_mode = mode(v, "default_dir_mode")?;
    }
    if let Some(v) = r.refresh_secs {
        spec.refresh = std::time::Duration::from_secs(v);
    }
    Ok(spec)
}

/// What `CreateTapes` asks for, checked (the gateway's `CreateTapes` borrows the prefix).
#[derive(Debug)]
pub struct TapeRequest {
    pub count: u32,
    pub size_bytes: u64,
    pub retention: Option<(u32, LockMode)>,
}

pub fn tape_request(r: &CreateTapes) -> Result<TapeRequest, ApiError> {
    let size_bytes =
        optional_size(r.size.as_ref(), "size")?.ok_or_else(|| bad("`size` is required"))?;
    let lock = r
        .lock
        .as_deref()
        .map(|l| {
            LockMode::parse(l)
                .ok_or_else(|| bad(format!("`lock` {l:?}: use governance or compliance")))
        })
        .transpose()?;
    let retention = match (r.retention_days, lock) {
        (Some(d), Some(l)) => Some((d, l)),
        (None, None) => None,
        _ => return Err(bad("`retention_days` and `lock` go together")),
    };
    Ok(TapeRequest {
        count: r.count.unwrap_or(1),
        size_bytes,
        retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_bytes_or_units() {
        assert_eq!(size(&Size::Bytes(7), "s").unwrap(), 7);
        assert_eq!(size(&Size::Text("16MiB".into()), "s").unwrap(), 16 << 20);
        let e = size(&Size::Text("lots".into()), "size").unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "bad_request"));
        assert!(e.message.starts_with("`size`"), "{}", e.message);
    }

    #[test]
    fn share_modes_are_octal_text_or_numbers() {
        let cases = [
            (Mode::Octal("0640".into()), Some(0o640)),
            (Mode::Octal("0o755".into()), Some(0o755)),
            (Mode::Number(0o600), Some(0o600)),
            (Mode::Octal("rw-".into()), None),
            (Mode::Number(0o10000), None),
        ];
        for (m, want) in cases {
            let r = CreateShare {
                name: "s".into(),
                default_mode: Some(m.clone()),
                ..CreateShare::default()
            };
            let got = share_spec(&r).map(|s| s.default_file_mode).ok();
            assert_eq!(got, want, "{m:?}");
        }
    }

    #[test]
    fn share_requests_check_squash_and_clients() {
        let ok = CreateShare {
            name: "s".into(),
            squash: Some("all".into()),
            allowed_clients: Some(vec!["10.0.0.0/8".into(), " ".into()]),
            ..CreateShare::default()
        };
        let spec = share_spec(&ok).unwrap();
        assert_eq!(spec.squash, Squash::All);
        assert_eq!(spec.allowed_clients.len(), 1);
        for bad in [
            CreateShare {
                squash: Some("some".into()),
                ..ok.clone()
            },
            CreateShare {
                allowed_clients: Some(vec!["nonsense".into()]),
                ..ok.clone()
            },
        ] {
            assert_eq!(share_spec(&bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn tape_requests_need_a_size_and_retention_with_its_lock() {
        let base = CreateTapes {
            barcode_prefix: "T".into(),
            size: Some(Size::Text("100GiB".into())),
            ..CreateTapes::default()
        };
        let r = tape_request(&base).unwrap();
        assert_eq!((r.count, r.retention), (1, None));
        let locked = CreateTapes {
            retention_days: Some(3),
            lock: Some("compliance".into()),
            ..base.clone()
        };
        assert_eq!(
            tape_request(&locked).unwrap().retention,
            Some((3, LockMode::Compliance))
        );
        for bad in [
            CreateTapes {
                size: None,
                ..base.clone()
            },
            CreateTapes {
                retention_days: Some(3),
                ..base.clone()
            },
            CreateTapes {
                lock: Some("forever".into()),
                ..base.clone()
            },
        ] {
            assert_eq!(
                tape_request(&bad).unwrap_err().code,
                "bad_request",
                "{bad:?}"
            );
        }
    }
}
