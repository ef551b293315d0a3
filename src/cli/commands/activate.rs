//! `tidegate activate`: builds the config file from the flags and pairs bucket and key.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::args::ActivateArgs;
use crate::config::defaults;
use crate::config::file::{BucketSection, DiskSection, FileConfig, GatewaySection};
use crate::config::sizing::Role;
use crate::store::keycheck::Pairing;

/// Where `activate` and `recover` write the config.
pub fn config_path(config: Option<&Path>, data_dir: &Path) -> std::path::PathBuf {
    config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(defaults::CONFIG_FILE))
}

pub fn run(args: ActivateArgs, config: Option<&Path>, data_dir: &Path) -> Result<ExitCode> {
    let config_path = config_path(config, data_dir);
    let text = config_text(args, data_dir, "activate")?;
    let rt = crate::cli::runtime()?;
    let done = rt.block_on(crate::daemon::activate::activate(
        &text,
        &config_path,
        data_dir,
    ))?;
    print_activation(&done)
}

/// The config file `activate` (or `recover`) writes, from the flags.
pub fn config_text(args: ActivateArgs, data_dir: &Path, by: &str) -> Result<String> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let disk = |path: Option<std::path::PathBuf>, size: Option<crate::config::ByteSize>| {
        (path.is_some() || size.is_some()).then(|| DiskSection {
            path: path.as_deref().map(absolute),
            size,
        })
    };
    let file = FileConfig {
        gateway: Some(GatewaySection {
            name: Some(args.bucket.name),
            data_dir: Some(data_dir.to_path_buf()),
            key_file: args.key_file.as_deref().map(absolute),
        }),
        bucket: Some(BucketSection {
            url: args.bucket.bucket,
            endpoint: args.bucket.endpoint,
            region: args.bucket.region,
            path_style: args.bucket.virtual_hosted.then_some(false),
            credentials_file: args.bucket.credentials_file.as_deref().map(absolute),
            upload_limit: args.upload_limit,
            download_limit: args.download_limit,
            ..BucketSection::default()
        }),
        cache: disk(args.cache_path, args.cache_size),
        upload_buffer: disk(args.upload_buffer_path, args.upload_buffer_size),
        iscsi: None,
        api: None,
        bandwidth: None,
        nfs: None,
        files: None,
        library: None,
    };
    Ok(format!(
        "# Written by `tidegate {by}`; see docs/operations.md for every key.\n{}",
        toml::to_string(&file).context("rendering the config")?
    ))
}

fn print_activation(done: &crate::daemon::activate::Activation) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "activated gateway {} (id {})",
        done.config.name, done.gateway_id
    )?;
    writeln!(out, "  config:  {}", done.config_path.display())?;
    writeln!(
        out,
        "  bucket:  {} ({})",
        done.config.bucket.location,
        match done.pairing {
            Pairing::Created => "paired with this key",
            Pairing::Verified => "already paired with this key",
        }
    )?;
    writeln!(
        out,
        "  key:     {} (fingerprint {}{})",
        done.config.key_file.display(),
        done.fingerprint,
        if done.key_created { ", new" } else { "" }
    )?;
    for (what, disk, role) in [
        ("cache:  ", &done.config.cache, Role::Cache),
        ("buffer: ", &done.config.upload_buffer, Role::UploadBuffer),
    ] {
        writeln!(
            out,
            "  {what} {} at {} ({})",
            disk.size,
            disk.path.display(),
            disk.sizing.describe(role, disk.size.bytes())
        )?;
    }
    if done.key_created {
        writeln!(
            out,
            "Back up the key file now: without it nothing in the bucket can be read."
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
