//! The last hour of traffic, sampled every ten seconds, for the web console's graph.

use std::collections::VecDeque;
use std::sync::Mutex;

pub use crate::frontend::api::types::Sample;

/// Samples kept: an hour at one per ten seconds.
const KEEP: usize = 360;
pub const EVERY_SECS: i64 = 10;

#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn record(&self, s: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_hour() {
        let h = History::default();
        for i in 0..(KEEP as i64 + 5) {
            h.record(Sample {
                unix: i,
                upload_bytes: 0,
                download_bytes: 0,
                read_bytes: 0,
                write_bytes: 0,
                buffer_bytes: 0,
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), KEEP);
        assert_eq!(s[0].unix, 5);
    }
}
