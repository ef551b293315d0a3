//! tidegate-cache: the write-back cache and upload buffer on the appliance's local disks.
//!
//! It caches and buffers byte ranges of named objects and knows nothing of volumes, files or
//! tapes; dirty ranges go to a sink that the gateway implements. Key invariant (once the write
//! path lands): a write is acknowledged only after its bytes and its index entry are durable.
//!
//! For now the crate owns the on-disk area itself: a directory with a versioned layout marker and
//! a configured capacity, so a gateway never mistakes another program's directory (or a future
//! layout) for its cache.

mod layout;

pub use layout::{Area, AreaError, LAYOUT_VERSION};
