//! Serving volumes: each volume is one iSCSI target with the disk at LUN 0 (as the commercial
//! gateway does: one target per volume), named from the gateway and the volume.

use crate::config::Config;

/// IQN prefix: the naming authority is the project's domain with the month it was registered
/// for this use (RFC 3720 §3.2.6.3.1).
pub const IQN_PREFIX: &str = "iqn.2026-11.org.tidegate";

/// `iqn.2026-11.org.tidegate:<gateway>.<volume>`; gateway names may hold upper case and '_',
/// which IQNs do not, so they are folded.
pub fn target_name(config: &Config, volume: &str) -> String {
    let gateway: String = config
        .name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            '_' => '-',
            c => c,
        })
        .collect();
    format!("{IQN_PREFIX}:{gateway}.{volume}")
}
