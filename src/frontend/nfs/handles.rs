//! NFSv3 file handles (RFC 1813 §2.5): opaque to clients, stable across gateway restarts.
//!
//! Layout, 17 bytes: format version (1), the gateway's handle generation (8 bytes, kept in the
//! catalog by `gateway::files`, so it survives restarts; a new catalog gets a new one), then
//! the file id (8 bytes, never reused). A handle of another layout is BADHANDLE; one from
//! another generation, or naming a file that no longer exists, is STALE. NFSv4.1 uses the same
//! handles for files (so v3 and v4.1 name a file alike), plus one of format 2 (9 bytes: format
//! and generation) for its pseudo-root, the directory that lists the exports.

use crate::gateway::files::FileId;

const FORMAT: u8 = 1;
const FORMAT_ROOT: u8 = 2;
pub const HANDLE_BYTES: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// Not a handle this server ever issued (NFS3ERR_BADHANDLE).
    Bad,
    /// Issued by an earlier catalog (NFS3ERR_STALE).
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handles {
    generation: u64,
}

impl Handles {
    pub fn new(generation: u64) -> Self {
        Self { generation }
    }

    pub fn encode(&self, id: FileId) -> Vec<u8> {
        let mut out = Vec::with_capacity(HANDLE_BYTES);
        out.push(FORMAT);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&id.0.to_be_bytes());
        out
    }

    /// The NFSv4 pseudo-root's handle.
    pub fn root(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(FORMAT_ROOT);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// Decodes a file's handle or the pseudo-root's (`None`).
    pub fn decode_any(&self, fh: &[u8]) -> Result<Option<FileId>, HandleError> {
        if fh.len() == 9 && fh[0] == FORMAT_ROOT {
            return if fh[1..9] == self.generation.to_be_bytes() {
                Ok(None)
            } else {
                Err(HandleError::Stale)
            };
        }
        self.decode(fh).map(Some)
    }

    pub fn decode(&self, fh: &[u8]) -> Result<FileId, HandleError> {
        if fh.len() != HANDLE_BYTES || fh[0] != FORMAT {
            return Err(HandleError::Bad);
        }
        let mut g = [0u8; 8];
        g.copy_from_slice(&fh[1..9]);
        if u64::from_be_bytes(g) != self.generation {
            return Err(HandleError::Stale);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&fh[9..17]);
        Ok(FileId(u64::from_be_bytes(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_others() {
        let h = Handles::new(42);
        let fh = h.encode(FileId(7));
        assert_eq!(h.decode(&fh), Ok(FileId(7)));
        assert_eq!(Handles::new(43).decode(&fh), Err(HandleError::Stale));
        assert_eq!(h.decode(&fh[..16]), Err(HandleError::Bad));
        assert_eq!(h.decode(&[]), Err(HandleError::Bad));
        let mut other = fh.clone();
        other[0] = 9;
        assert_eq!(h.decode(&other), Err(HandleError::Bad));
        assert_eq!(h.decode_any(&h.root()), Ok(None));
        assert_eq!(h.decode_any(&fh), Ok(Some(FileId(7))));
        assert_eq!(
            Handles::new(43).decode_any(&h.root()),
            Err(HandleError::Stale)
        );
        assert_eq!(h.decode(&h.root()), Err(HandleError::Bad));
    }
}
