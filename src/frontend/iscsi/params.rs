//! Text keys (RFC 7143 §6.1) and the negotiation of operational parameters (§13).
//!
//! Owns the parsing of NUL-separated `key=value` pairs and the answer to each key the initiator
//! offers; it does not own login sequencing (`login.rs`) or authentication (`chap.rs`).
//! Invariant: every offered key gets exactly one answer, and the negotiated values in `Params`
//! never exceed what this target supports (ERL 0, our burst and segment limits).

use bytes::Bytes;

/// Limits of this target, in bytes unless named otherwise.
pub const OUR_MAX_RECV_DATA_SEGMENT_BYTES: u32 = 256 * 1024;
pub const OUR_MAX_BURST_BYTES: u32 = 16 * 1024 * 1024;
pub const OUR_FIRST_BURST_BYTES: u32 = 256 * 1024;
pub const OUR_MAX_CONNECTIONS: u32 = 4;
/// A login PDU's data segment is at most 8192 bytes until MaxRecvDataSegmentLength is in force
/// (§13.12 default).
pub const LOGIN_MAX_DATA_BYTES: u32 = 8192;

/// Splits a text data segment into pairs; a pair without '=' yields an empty value and is
/// answered as a protocol error by the caller. Invalid UTF-8 is replaced, never trusted.
pub fn parse(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s.into_owned(), String::new()),
            }
        })
        .collect()
}

/// Encodes pairs as a text data segment.
pub fn encode(pairs: &[(String, String)]) -> Bytes {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    Bytes::from(out)
}

/// The session and connection parameters in force, starting from the §13 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the initiator can receive from us per PDU (its declaration).
    pub initiator_max_recv_data_segment_bytes: u32,
    pub max_burst_bytes: u32,
    pub first_burst_bytes: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_data_segment_bytes: 8192,
            max_burst_bytes: 262_144,
            first_burst_bytes: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// The answer to one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Reply `key=value`.
    Reply(String),
    /// Not a negotiation key handled here (login keys, AuthMethod, CHAP_*): the caller decides.
    NotMine,
    /// No reply (declarative keys with nothing to say).
    Silent,
}

fn yes_no(v: bool) -> String {
    if v { "Yes" } else { "No" }.to_owned()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn parse_num(v: &str) -> Option<u32> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        v.parse().ok()
    }
}

fn digest_choice(offer: &str) -> Option<(bool, &'static str)> {
    // The initiator lists in preference order (§6.2); pick its first value we support.
    offer.split(',').find_map(|v| match v {
        "CRC32C" => Some((true, "CRC32C")),
        "None" => Some((false, "None")),
        _ => None,
    })
}

impl Params {
    /// Answers one operational key offered by the initiator and records the outcome.
    /// `leading` is true for keys valid only in the leading login (session-wide, §13).
    pub fn negotiate(&mut self, key: &str, value: &str) -> Answer {
        let reject = || Answer::Reply("Reject".to_owned());
        match key {
            "HeaderDigest" | "DataDigest" => match digest_choice(value) {
                Some((on, name)) => {
                    if key == "HeaderDigest" {
                        self.header_digest = on;
                    } else {
                        self.data_digest = on;
                    }
                    Answer::Reply(name.to_owned())
                }
                None => reject(),
            },
            "MaxConnections" => match parse_num(value).filter(|n| *n >= 1) {
                Some(n) => {
                    self.max_connections = n.min(OUR_MAX_CONNECTIONS);
                    Answer::Reply(self.max_connections.to_string())
                }
                None => reject(),
            },
            // InitialR2T is an OR and ImmediateData an AND (§13.10, §13.11); our own values are
            // No and Yes, so the result is whatever the initiator offered.
            "InitialR2T" => match parse_bool(value) {
                Some(v) => {
                    self.initial_r2t = v;
                    Answer::Reply(yes_no(v))
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(v) => {
                    self.immediate_data = v;
                    Answer::Reply(yes_no(v))
                }
                None => reject(),
            },
            // Declarative per direction (§13.12): the initiator's value bounds what we send; we
            // declare ours separately.
            "MaxRecvDataSegmentLength" => {
                match parse_num(value).filter(|n| (512..=16_777_215).contains(n)) {
                    Some(n) => {
                        self.initiator_max_recv_data_segment_bytes = n;
                        Answer::Silent
                    }
                    None => reject(),
                }
            }
            "MaxBurstLength" => match parse_num(value).filter(|n| (512..=16_777_215).contains(n)) {
                Some(n) => {
                    self.max_burst_bytes = n.min(OUR_MAX_BURST_BYTES);
                    self.first_burst_bytes = self.first_burst_bytes.min(self.max_burst_bytes);
                    Answer::Reply(self.max_burst_bytes.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match parse_num(value).filter(|n| (512..=16_777_215).contains(n))
            {
                Some(n) => {
                    self.first_burst_bytes = n.min(OUR_FIRST_BURST_BYTES).min(self.max_burst_bytes);
                    Answer::Reply(self.first_burst_bytes.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match parse_num(value).and_then(|n| u16::try_from(n).ok()) {
                Some(n) if n <= 3600 => {
                    self.default_time2wait = n.max(2);
                    Answer::Reply(self.default_time2wait.to_string())
                }
                _ => reject(),
            },
            "DefaultTime2Retain" => match parse_num(value).and_then(|n| u16::try_from(n).ok()) {
                Some(n) if n <= 3600 => {
                    // At ERL 0 nothing is retained after a connection drops (§6.3.5).
                    self.default_time2retain = 0;
                    Answer::Reply("0".to_owned())
                }
                _ => reject(),
            },
            "MaxOutstandingR2T" => match parse_num(value).filter(|n| (1..=65_535).contains(n)) {
                Some(_) => {
                    self.max_outstanding_r2t = 1;
                    Answer::Reply("1".to_owned())
                }
                None => reject(),
            },
            // Both are ORs and we want Yes, so the answer is Yes (§13.18, §13.19).
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                Some(_) => Answer::Reply("Yes".to_owned()),
                None => reject(),
            },
            "ErrorRecoveryLevel" => match parse_num(value).filter(|n| *n <= 2) {
                Some(_) => {
                    self.error_recovery_level = 0;
                    Answer::Reply("0".to_owned())
                }
                None => reject(),
            },
            // Markers were removed in RFC 7143 but older initiators still offer them.
            "IFMarker" | "OFMarker" => Answer::Reply("No".to_owned()),
            "IFMarkInt" | "OFMarkInt" => Answer::Reply("Irrelevant".to_owned()),
            // Keys only a target may send (§13.8, §13.9): an initiator offering them errs.
            "TargetAddress" | "TargetPortalGroupTag" => reject(),
            "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" | "TargetAlias"
            | "AuthMethod" | "SendTargets" => Answer::NotMine,
            k if k.starts_with("CHAP_") => Answer::NotMine,
            _ => Answer::Reply("NotUnderstood".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_pairs_and_skips_padding() {
        let pairs = parse(b"A=1\0B=x=y\0\0C\0");
        assert_eq!(
            pairs,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
        assert_eq!(parse(&encode(&pairs)), pairs);
    }

    #[test]
    fn negotiate_table() {
        let cases: &[(&str, &str, Answer)] = &[
            (
                "HeaderDigest",
                "CRC32C,None",
                Answer::Reply("CRC32C".into()),
            ),
            ("DataDigest", "None,CRC32C", Answer::Reply("None".into())),
            ("DataDigest", "MD5", Answer::Reply("Reject".into())),
            ("InitialR2T", "No", Answer::Reply("No".into())),
            ("ImmediateData", "Yes", Answer::Reply("Yes".into())),
            ("MaxBurstLength", "33554432", Answer::Reply("Reject".into())),
            (
                "MaxBurstLength",
                "16776192",
                Answer::Reply("16776192".into()),
            ),
            (
                "FirstBurstLength",
                "1048576",
                Answer::Reply("262144".into()),
            ),
            ("MaxOutstandingR2T", "8", Answer::Reply("1".into())),
            ("ErrorRecoveryLevel", "2", Answer::Reply("0".into())),
            ("DataPDUInOrder", "No", Answer::Reply("Yes".into())),
            ("MaxRecvDataSegmentLength", "65536", Answer::Silent),
            (
                "X-com.example.Foo",
                "1",
                Answer::Reply("NotUnderstood".into()),
            ),
            ("TargetName", "iqn.x", Answer::NotMine),
            ("MaxConnections", "16", Answer::Reply("4".into())),
        ];
        for (k, v, want) in cases {
            let mut p = Params::default();
            assert_eq!(&p.negotiate(k, v), want, "{k}={v}");
        }
    }

    #[test]
    fn negotiate_records_outcome() {
        let mut p = Params::default();
        p.negotiate("MaxRecvDataSegmentLength", "0x10000");
        p.negotiate("HeaderDigest", "CRC32C");
        p.negotiate("InitialR2T", "No");
        assert_eq!(p.initiator_max_recv_data_segment_bytes, 65536);
        assert!(p.header_digest && !p.initial_r2t);
    }
}
