//! One file per subcommand: each parses nothing, prints its own output, returns an exit code.

pub mod activate;
pub mod bench;
pub mod chunk;
pub mod device;
pub mod function;
pub mod gc;
pub mod job;
pub mod recover;
pub mod scrub;
pub mod serve;
pub mod share;
pub mod snapshot;
pub mod status;
pub mod tape;
pub mod treehash;
pub mod volume;
