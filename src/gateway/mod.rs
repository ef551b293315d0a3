//! Product semantics, protocol-neutral: volumes, files, tapes, jobs. Front ends call it; it never
//! knows which protocol called. For now it holds the error kind every front end must map.

pub mod error;

pub use error::GatewayError;
