//! `tidegate status`: a plain report; exit status 1 when something needs attention.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{ByteSize, Config, Origin};
use crate::daemon::status::{self, AreaStatus};
use crate::store::keycheck::Pairing;

pub fn run(config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    let mut s = rt.block_on(status::gather(config));
    // A running daemon's snapshot as of now, not of the last status file (up to a second old):
    // a failure it just recorded is a problem already. A user who cannot read the API token
    // still sees the file's.
    if let Ok(Some(session)) = crate::cli::client::Session::running(&s.config)
        && let Ok(now) = session.run(|m| m.status())
    {
        s.snapshot = now;
    }
    let mut out = std::io::stdout().lock();
    let c = &s.config;
    let snap = &s.snapshot;
    writeln!(
        out,
        "gateway:        {}{}",
        c.name,
        match (&s.gateway_id, s.activated_unix) {
            (Some(id), Some(at)) => format!(" (id {id}, activated {})", rfc3339(at)),
            _ => " (not activated yet)".to_owned(),
        }
    )?;
    writeln!(
        out,
        "config:         {}",
        match &c.origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Embedded => format!("embedded default (data dir {})", c.data_dir.display()),
        }
    )?;
    writeln!(
        out,
        "daemon:         {}",
        match &s.daemon {
            Some(r) => format!(
                "running (pid {}, since {}){}{}",
                r.pid,
                rfc3339(r.started_unix),
                r.iscsi
                    .as_ref()
                    .map_or(String::new(), |a| format!(", iSCSI {a}")),
                r.nfs
                    .as_ref()
                    .map_or(String::new(), |a| format!(", NFS {a}"))
            ),
            None => "not running".to_owned(),
        }
    )?;
    if let Some(r) = s.daemon.as_ref().and_then(|d| d.rpcbind.as_ref()) {
        writeln!(out, "rpcbind:        {r}")?;
    }
    writeln!(
        out,
        "bucket:         {} (endpoint {}): {}",
        snap.bucket,
        s.endpoint,
        match &s.bucket_state {
            Ok(Pairing::Verified | Pairing::Created) => "reachable, key check ok".to_owned(),
            Err(e) => format!("PROBLEM: {e}"),
        }
    )?;
    writeln!(
        out,
        "key file:       {} ({})",
        c.key_file.display(),
        match &s.key {
            Ok(fp) => format!("fingerprint {fp}"),
            Err(e) => format!("PROBLEM: {e}"),
        }
    )?;
    writeln!(
        out,
        "catalog:        {} ({})",
        c.catalog_path().display(),
        s.catalog_schema
            .map_or("not created yet".to_owned(), |v| format!("schema v{v}"))
    )?;
    // A running daemon sized its areas when it started: its figures, not this look's.
    let (cache_cap, buffer_cap) = if snap.running {
        (snap.cache.capacity, snap.upload_buffer.capacity)
    } else {
        (s.cache.capacity, s.upload_buffer.capacity)
    };
    writeln!(out, "cache:          {}", area(&s.cache, cache_cap))?;
    writeln!(out, "                {}", snap.cache.sizing)?;
    writeln!(
        out,
        "upload buffer:  {}",
        area(&s.upload_buffer, buffer_cap)
    )?;
    writeln!(out, "                {}", snap.upload_buffer.sizing)?;
    if snap.running {
        let c = &snap.cache;
        let lookups = c.hits + c.misses;
        writeln!(
            out,
            "live:           {} cached, {} dirty (oldest {} s), upload buffer {} of {}, \
             hit ratio {}, {} uploads, {} upload errors",
            ByteSize(c.bytes),
            ByteSize(c.dirty_bytes),
            c.oldest_dirty_secs,
            ByteSize(snap.upload_buffer.bytes),
            ByteSize(snap.upload_buffer.capacity),
            if lookups == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}%", 100.0 * c.hits as f64 / lookups as f64)
            },
            snap.uploads,
            snap.upload_errors
        )?;
        for v in &snap.stored {
            let mut parts = vec![format!("{} chunk(s) to upload", v.dirty_chunks)];
            if v.initial_total > 0 {
                parts.push(format!(
                    "initial upload {}/{} chunks ({:.0}%)",
                    v.initial_done,
                    v.initial_total,
                    100.0 * v.initial_done as f64 / v.initial_total as f64
                ));
            }
            if v.download_total > 0 {
                parts.push(format!(
                    "restore download {}/{} chunks",
                    v.download_total - v.download_pending,
                    v.download_total
                ));
            }
            if v.upload_errors > 0 {
                parts.push(format!("{} upload errors", v.upload_errors));
            }
            writeln!(out, "stored volume:  {}: {}", v.volume, parts.join(", "))?;
        }
        let f = &snap.files;
        writeln!(
            out,
            "files:          {} uploads ({} started early, {} early ones abandoned), {} upload errors, {} read from the bucket, {} from local copies ({} kept)",
            f.uploads,
            f.early_uploads,
            f.early_abandoned,
            f.upload_errors,
            ByteSize(f.download_bytes),
            ByteSize(f.clean_read_bytes),
            ByteSize(f.clean_bytes)
        )?;
        let grace = if f.lock_grace_secs > 0 {
            format!(
                "; grace period, {} s left: only clients of the last run may lock",
                f.lock_grace_secs
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "locks:          {} byte-range locks, {} share reservations held{grace}",
            f.locks_held, f.share_reservations
        )?;
    }
    for v in &snap.volumes {
        writeln!(
            out,
            "volume:         {} {} ({}, {} in bucket)",
            v.name,
            ByteSize(v.size_bytes),
            v.mode,
            ByteSize(v.in_bucket_bytes)
        )?;
    }
    for share in &snap.shares {
        writeln!(
            out,
            "share:          {} (/{}, {}): {} files / {} not yet uploaded, last upload {}",
            share.name,
            share.name,
            share.prefix,
            share.dirty_files,
            ByteSize(share.dirty_bytes),
            share.last_upload_unix.map_or("never".to_owned(), rfc3339)
        )?;
    }
    let counts: Vec<String> = snap
        .tape_states
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| {
            let label = crate::catalog::tapes::TapeState::parse(state)
                .map_or(state.as_str(), |s| s.label());
            format!("{n} {label}")
        })
        .collect();
    if !counts.is_empty() {
        writeln!(out, "tapes:          {}", counts.join(", "))?;
    }
    writeln!(
        out,
        "integrity:      {}",
        match &s.integrity.last {
            None => "no verification failures recorded".to_owned(),
            Some(last) => format!(
                "{} verification failure(s); last {} at {}: {}",
                s.integrity.count,
                last.object,
                rfc3339(last.at_unix),
                last.reason
            ),
        }
    )?;
    for p in &snap.problems {
        writeln!(out, "PROBLEM:        {p}")?;
    }
    for w in &snap.warnings {
        writeln!(out, "warning:        {w}")?;
    }
    Ok(if s.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn area(a: &AreaStatus, capacity: u64) -> String {
    match a.used {
        Some(used) => format!(
            "{}  {} of {} used",
            a.path.display(),
            ByteSize(used),
            ByteSize(capacity)
        ),
        None => format!(
            "{}  {} (not created yet)",
            a.path.display(),
            ByteSize(capacity)
        ),
    }
}

use crate::store::rfc3339;

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200), "2026-11-23T12:00:00Z");
    }
}
