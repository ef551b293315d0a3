//! Product semantics, protocol-neutral: volumes, files, tapes, jobs. Front ends call it; it never
//! knows which protocol called.

pub mod block;
pub mod error;
pub mod files;
pub mod gc;
pub mod import;
pub mod library;
pub mod tapes;
pub mod volumes;

pub use error::GatewayError;
