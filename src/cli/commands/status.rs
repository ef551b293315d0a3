//! `tidegate status`: a plain report; exit status 1 when something needs attention.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{ByteSize, Config, Origin};
use crate::daemon::status::{self, AreaStatus};
use crate::store::keycheck::Pairing;

pub fn run(config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    let s = rt.block_on(status::gather(config));
    let mut out = std::io::stdout().lock();
    let c = &s.config;
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
        s.bucket,
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
    writeln!(out, "cache:          {}", area(&s.cache))?;
    writeln!(out, "upload buffer:  {}", area(&s.upload_buffer))?;
    if let Some(l) = &s.live {
        let lookups = l.hits + l.misses;
        writeln!(
            out,
            "live:           {} cached, {} dirty (oldest {} s), upload buffer {} of {}, \
             hit ratio {}, {} uploads, {} upload errors",
            ByteSize(l.cache_bytes),
            ByteSize(l.dirty_bytes),
            l.oldest_dirty_secs,
            ByteSize(l.buffer_bytes),
            ByteSize(l.buffer_capacity),
            if lookups == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}%", 100.0 * l.hits as f64 / lookups as f64)
            },
            l.uploads,
            l.upload_errors
        )?;
        for v in &l.stored {
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
        writeln!(
            out,
            "files:          {} uploads ({} started early, {} early ones abandoned), {} upload errors, {} read from the bucket",
            l.files_uploads,
            l.files_early_uploads,
            l.files_early_abandoned,
            l.files_upload_errors,
            ByteSize(l.files_download_bytes)
        )?;
    }
    for v in &s.volumes {
        writeln!(
            out,
            "volume:         {} {} ({}, {} in bucket)",
            v.row.name,
            ByteSize(v.row.size_bytes),
            v.row.mode.as_str(),
            ByteSize(v.mapped_chunks * v.row.chunk_size)
        )?;
    }
    for (share, st) in &s.shares {
        writeln!(
            out,
            "share:          {} (/{}, {}): {} files / {} not yet uploaded, last upload {}",
            share.name,
            share.name,
            share.bucket_prefix,
            st.dirty_files,
            ByteSize(st.dirty_bytes),
            st.last_upload_unix.map_or("never".to_owned(), rfc3339)
        )?;
    }
    if !s.tapes.is_empty() {
        let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &s.tapes {
            *by_state.entry(t.state.label()).or_default() += 1;
        }
        let counts: Vec<String> = by_state.iter().map(|(k, n)| format!("{n} {k}")).collect();
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
    for p in &s.problems {
        writeln!(out, "PROBLEM:        {p}")?;
    }
    Ok(if s.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn area(a: &AreaStatus) -> String {
    match a.used {
        Some(used) => format!(
            "{}  {} of {} used",
            a.path.display(),
            ByteSize(used),
            ByteSize(a.capacity)
        ),
        None => format!(
            "{}  {} (not created yet)",
            a.path.display(),
            ByteSize(a.capacity)
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
