//! NFSv3 file handles (RFC 1813 §2.5): opaque to clients, stable across gateway restarts.
//!
//! Layout, 17 bytes: format version (1), the gateway's handle generation (8 bytes, kept in the
//! catalog by `gateway::files`, so it survives restarts; a new catalog gets a new one), then
//! the file id (8 bytes, never reused). A handle of another layout is BADHANDLE; one from
//! another generation, or naming a file that no longer exists, is STALE.

use crate::gateway::files::FileId;

const FORMAT: u8 = 1;
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
    }
}
