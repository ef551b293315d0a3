//! `tidegate chunk put|get`: one chunk in or out, through the real codec and bucket.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::UsageError;
use crate::cli::args::ChunkCommand;
use crate::config::Config;
use crate::daemon::Engine;
use crate::store::{ChunkId, ChunkRef, StoreError};

const MAX_CHUNK: u64 = 64 << 20;

pub fn run(cmd: ChunkCommand, config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    rt.block_on(async {
        match cmd {
            ChunkCommand::Put { file } => {
                let size = std::fs::metadata(&file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .len();
                if size > MAX_CHUNK {
                    bail!(UsageError(format!(
                        "{} is larger than a chunk (64 MiB)",
                        file.display()
                    )));
                }
                let data =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let engine = Engine::open(config).await?;
                let id = engine.chunks.put(data.into()).await?;
                let mut out = std::io::stdout().lock();
                match id {
                    ChunkRef::Zero => writeln!(out, "zero")?,
                    ChunkRef::Stored(id) => writeln!(out, "{id}")?,
                }
            }
            ChunkCommand::Get { id, output } => {
                let id: ChunkId = id.parse().map_err(|e| UsageError(format!("{id:?}: {e}")))?;
                let engine = Engine::open(config).await?;
                let data = match engine.chunks.get(id).await {
                    Ok(d) => d,
                    Err(StoreError::Corrupt(e)) => {
                        engine
                            .catalog
                            .record_integrity_event(&id.object_key(), &e.to_string())?;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                };
                match output {
                    Some(path) => std::fs::write(&path, &data)
                        .with_context(|| format!("writing {}", path.display()))?,
                    None => std::io::stdout().lock().write_all(&data)?,
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
