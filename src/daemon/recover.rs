//! `tidegate recover`: rebuilds a lost gateway on a fresh data dir from its bucket and key.
//!
//! Order: check the bucket and the key (the key check must verify: recovering with the wrong
//! key would only produce unreadable volumes), restore the newest encrypted catalog copy,
//! settle snapshots the old gateway left mid-way, adopt committed snapshots the copy does not
//! know (taken after it), and, with no catalog copy at all, recreate each volume from its
//! newest snapshot. The config is written last, as `activate` does, so a failed recovery
//! leaves nothing `serve` would pick up.

use std::collections::BTreeMap;
use std::path::Path;

use crate::catalog::Catalog;
use crate::catalog::snapshots::{SnapshotRow, SnapshotState};
use crate::catalog::volumes::{VolumeMode, VolumeRow};
use crate::config::Config;
use crate::daemon::{DaemonError, activate, io, write_atomically};
use crate::gateway::GatewayError;
use crate::gateway::volumes::{manifest, snapshot};
use crate::store::keycheck;
use crate::store::keys::{catalog_backup, parse_catalog_backup};
use crate::store::{Bucket, ChunkStore, Codec, MasterKey, StoreError};

#[derive(Debug)]
pub struct Recovery {
    pub config: Config,
    pub gateway_id: String,
    /// The catalog copy used: its generation (milliseconds since the epoch).
    pub catalog_generation: Option<u64>,
    pub volumes: Vec<VolumeRow>,
    pub snapshots: Vec<SnapshotRow>,
    /// Snapshots found in the bucket but not in the catalog copy.
    pub adopted: usize,
    /// Stored volumes whose local disk is missing here, recovered as cached volumes.
    pub converted: Vec<String>,
    /// Share files whose writes were not uploaded when the catalog copy was taken.
    pub reverted_files: Vec<crate::catalog::journal::RevertedFile>,
}

fn gateway(e: GatewayError) -> DaemonError {
    DaemonError::Io {
        what: "recovering".into(),
        source: std::io::Error::other(crate::error_chain::one_line(&e)),
    }
}

fn refuse(what: String, why: &str) -> DaemonError {
    DaemonError::Io {
        what,
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, why.to_owned()),
    }
}

pub async fn recover(
    config_text: &str,
    config_path: &Path,
    default_data_dir: &Path,
    gateway_id: Option<&str>,
) -> Result<Recovery, DaemonError> {
    if config_path.exists() {
        return Err(refuse(
            format!("{} already exists", config_path.display()),
            "recover into a fresh data dir",
        ));
    }
    let config = Config::parse(config_text, config_path, default_data_dir)?;
    if config.catalog_path().exists() {
        return Err(refuse(
            format!("{} already exists", config.catalog_path().display()),
            "recover into a fresh data dir",
        ));
    }
    let bucket = Bucket::open(&config.bucket, false)?;
    bucket.check().await?;
    let key = MasterKey::load(&config.key_file)?;
    let codec = Codec::new(key.clone());
    keycheck::ensure(&bucket, &codec, false)
        .await
        .map_err(|e| match e {
            StoreError::WrongKey { .. } => DaemonError::WrongKey {
                key_file: config.key_file.clone(),
                source: e,
            },
            other => DaemonError::Store(other),
        })?;
    let chunks = ChunkStore::new(std::sync::Arc::new(bucket), codec);

    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for o in chunks.bucket().list("gateway/").await? {
        if let Some((id, generation)) = parse_catalog_backup(&o.key) {
            let e = newest.entry(id.to_owned()).or_default();
            *e = (*e).max(generation);
        }
    }
    let chosen = match gateway_id {
        Some(id) => Some((
            id.to_owned(),
            *newest.get(id).ok_or_else(|| {
                DaemonError::NotActivated(format!(
                    "the bucket holds no catalog copy of gateway {id} (found: {})",
                    list_or_none(&newest)
                ))
            })?,
        )),
        None if newest.len() > 1 => {
            return Err(DaemonError::NotActivated(format!(
                "the bucket holds catalogs of several gateways ({}); choose one with --gateway-id",
                list_or_none(&newest)
            )));
        }
        None => newest.into_iter().next(),
    };

    std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
        "creating data dir {}",
        config.data_dir.display()
    )))?;
    if let Some((id, generation)) = &chosen {
        // Streamed part by part (either copy format, store::parted), never whole in memory.
        let tmp = config.catalog_path().with_extension("recovering");
        chunks
            .get_sealed_file(&catalog_backup(id, *generation), &tmp)
            .await?;
        std::fs::rename(&tmp, config.catalog_path()).map_err(io(format!(
            "installing {}",
            config.catalog_path().display()
        )))?;
    }
    let catalog = Catalog::open(&config.catalog_path())?;
    let gateway_id = activate::record_identity(&catalog, &config, &key)?;

    // The old gateway's unfinished work: requests die with it, interrupted snapshots are
    // decided by their manifests.
    for row in catalog.snapshots_in_state(SnapshotState::Requested)? {
        catalog.move_snapshot(
            &row.id,
            SnapshotState::Requested,
            SnapshotState::Failed,
            Some("not taken before the gateway was lost"),
        )?;
    }
    snapshot::settle_interrupted(&catalog, &chunks)
        .await
        .map_err(gateway)?;
    let committed = manifest::list_committed(&chunks).await.map_err(gateway)?;
    for row in catalog.snapshots_in_state(SnapshotState::Complete)? {
        if !committed.contains(&row.id) {
            catalog.move_snapshot(
                &row.id,
                SnapshotState::Complete,
                SnapshotState::Failed,
                Some("its manifest is missing from the bucket"),
            )?;
        }
    }
    let mut adopted = 0;
    for id in &committed {
        if catalog.snapshot(id)?.is_some() {
            continue;
        }
        let h = manifest::read_header(&chunks, id).await.map_err(gateway)?;
        let volume_id = catalog
            .volume_by_name(&h.volume_name)?
            .filter(|v| crate::store::keys::hex(&v.uuid) == h.volume_uuid)
            .map_or(0, |v| v.id);
        catalog.insert_snapshot(&SnapshotRow {
            id: id.clone(),
            volume_id,
            volume_name: h.volume_name,
            size_bytes: h.size_bytes,
            description: h.description,
            scheduled: h.scheduled,
            state: SnapshotState::Complete,
            error: None,
            requested_unix: h.created_unix,
            completed_unix: Some(h.created_unix),
            chunks: h.chunks,
            new_chunks: 0,
            uploaded_bytes: 0,
        })?;
        adopted += 1;
    }
    // Files the old machine had staged are not here: they come back as uploaded.
    let reverted_files = catalog.forget_local_files()?;
    // A stored volume whose local disk is not on this machine comes back as a cached volume
    // over what it had uploaded.
    let mut converted = Vec::new();
    for v in catalog.volumes()? {
        if v.mode == VolumeMode::Stored
            && !v
                .local_path
                .as_deref()
                .is_some_and(|p| Path::new(p).exists())
            && catalog.stored_to_cached(v.id)?
        {
            converted.push(v.name);
        }
    }
    if chosen.is_none() {
        // No catalog copy: the volumes come back as their newest snapshots.
        let mut newest_of: BTreeMap<String, SnapshotRow> = BTreeMap::new();
        for row in catalog.snapshots_in_state(SnapshotState::Complete)? {
            newest_of.insert(row.volume_name.clone(), row);
        }
        for (name, row) in newest_of {
            snapshot::restore(&catalog, &chunks, &row.id, &name, VolumeMode::Cached, None)
                .await
                .map_err(gateway)?;
        }
    }

    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    write_atomically(config_path, config_text.as_bytes())?;
    Ok(Recovery {
        volumes: catalog.volumes()?,
        snapshots: catalog.snapshots(None)?,
        config,
        gateway_id,
        catalog_generation: chosen.map(|(_, g)| g),
        adopted,
        converted,
        reverted_files,
    })
}

fn list_or_none(found: &BTreeMap<String, u64>) -> String {
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
