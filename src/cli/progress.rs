//! Progress of long commands on stderr: a bar redrawn in place on a terminal, plain lines every
//! few seconds elsewhere (CI logs), and one summary line per stage either way.
//!
//! Owned by the CLI, the only layer that prints; gateway code reports through its `Progress`
//! trait and never knows how (or whether) it is shown.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::config::ByteSize;
use crate::gateway::volumes::image::Progress;

/// Redraw interval on a terminal: smooth enough, cheap enough.
const TERMINAL_REDRAW: Duration = Duration::from_millis(200);
/// Interval between plain lines when stderr is a file or pipe: a log line every few seconds.
const LOG_INTERVAL: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 30;
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug)]
pub struct Bar {
    terminal: bool,
    stage: Option<Stage>,
}

#[derive(Debug)]
struct Stage {
    name: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Instant,
}

impl Stage {
    fn rate(&self) -> f64 {
        self.done as f64 / MIB / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn line(&self) -> String {
        let fraction = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (fraction * BAR_WIDTH as f64) as usize;
        let rate = self.rate();
        let eta = if rate > 0.0 && self.done < self.total {
            let secs = (self.total - self.done) as f64 / MIB / rate;
            let secs = secs as u64;
            format!("ETA {}:{:02}", secs / 60, secs % 60)
        } else {
            "ETA -:--".to_owned()
        };
        format!(
            "{:<11} [{}{}] {} / {} {:>7.1} MiB/s {}",
            self.name,
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            ByteSize(self.done),
            ByteSize(self.total),
            rate,
            eta
        )
    }

    fn summary(&self) -> String {
        format!(
            "{}: {} in {:.1} s ({:.1} MiB/s)",
            self.name,
            ByteSize(self.done),
            self.started.elapsed().as_secs_f64(),
            self.rate()
        )
    }
}

impl Bar {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            stage: None,
        }
    }

    /// Ends the current stage with its summary line.
    pub fn finish(&mut self) {
        if let Some(stage) = self.stage.take() {
            let mut err = std::io::stderr().lock();
            if self.terminal {
                // Clear the bar before the summary takes its place.
                let _ = write!(err, "\r\x1b[2K");
            }
            let _ = writeln!(err, "{}", stage.summary());
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn stage(&mut self, name: &'static str, total_bytes: u64) {
        self.finish();
        let now = Instant::now();
        self.stage = Some(Stage {
            name,
            total: total_bytes,
            done: 0,
            started: now,
            drawn: now,
        });
    }

    fn advance(&mut self, bytes: u64) {
        let Some(stage) = self.stage.as_mut() else {
            return;
        };
        stage.done = stage.done.saturating_add(bytes);
        let interval = if self.terminal {
            TERMINAL_REDRAW
        } else {
            LOG_INTERVAL
        };
        if stage.drawn.elapsed() < interval {
            return;
        }
        stage.drawn = Instant::now();
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{}", stage.line())
        } else {
            writeln!(err, "{}", stage.line())
        };
        let _ = err.flush();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // A failed command still leaves its bar's line finished, not half drawn.
        if self.terminal && self.stage.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_bytes_rate_and_eta() {
        let stage = Stage {
            name: "uploading",
            total: 64 << 20,
            done: 16 << 20,
            started: Instant::now() - Duration::from_secs(2),
            drawn: Instant::now(),
        };
        let line = stage.line();
        assert!(line.starts_with("uploading   [#######-"), "{line}");
        assert!(line.contains("16 MiB / 64 MiB"), "{line}");
        assert!(line.contains("MiB/s ETA 0:0"), "{line}");
        assert!(stage.summary().starts_with("uploading: 16 MiB in 2."));
    }
}
