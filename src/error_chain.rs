//! An error and its causes on one line, each cause once, for places that show an error as text
//! rather than hand it to the binary's chain printer (`status` lines, log fields, replies).
//!
//! A leaf: it depends on nothing else in tidegate. Error messages never embed their own
//! `#[source]` (CONTRIBUTING.md, "Errors"), so walking `source()` is the only way a cause is
//! shown; a message that already contains its cause's text (an error from another crate that
//! repeats it) is not extended with it again.

use std::error::Error;

/// Longest line returned, in characters: a bucket's XML error body can be kilobytes.
const MAX_CHARS: usize = 400;

/// `outer: cause: root cause`, each cause once, whole: what the binary prints before exiting.
/// A cause whose text repeats the one before it with more detail (rusqlite's "file is not a
/// database" over "Error code 26: file is not a database") takes its place.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut last_start = 0;
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if next.contains(&text[last_start..]) {
            text.truncate(last_start);
        } else if text.contains(&next) {
            source = s.source();
            continue;
        } else {
            text.push_str(": ");
        }
        last_start = text.len();
        text.push_str(&next);
        source = s.source();
    }
    text
}

/// [`chain`] with whitespace collapsed, cut at [`MAX_CHARS`]: for logs and status lines.
pub fn one_line(e: &dyn Error) -> String {
    let text = chain(e).split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_CHARS {
        let mut cut: String = text.chars().take(MAX_CHARS).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

/// The root cause alone (e.g. "Connection refused (os error 111)").
pub fn innermost(e: &dyn Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn each_cause_appears_once() {
        let e = Outer("x", std::io::Error::other("disk on fire"));
        assert_eq!(one_line(&e), "opening x: disk on fire");
        assert_eq!(innermost(&e), "disk on fire");
    }

    #[test]
    fn a_cause_already_in_the_text_is_not_repeated() {
        // rusqlite shows a failure without a message as its source's text, and returns it
        // as the source too.
        let e = Outer(
            "x",
            std::io::Error::other(Outer("y", std::io::Error::other("y"))),
        );
        assert_eq!(chain(&e), "opening x: opening y");
        let e = Outer(
            "x",
            std::io::Error::other(Outer("y", std::io::Error::other("code 5: y"))),
        );
        assert_eq!(chain(&e), "opening x: opening y: code 5: y");
        let e = Outer(
            "x",
            std::io::Error::other(std::io::Error::other("code 5: opening x")),
        );
        assert_eq!(chain(&e), "code 5: opening x");
    }

    #[test]
    fn long_chains_are_cut() {
        let e = Outer("x", std::io::Error::other("y".repeat(1000)));
        assert_eq!(one_line(&e).chars().count(), MAX_CHARS + 1);
    }
}
