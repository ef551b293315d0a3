//! CHAP authentication for the login security stage (RFC 7143 §12.1.3, RFC 1994), MD5 only
//! (CHAP_A=5), one-way and mutual.
//!
//! Owns the challenge it issues and the verification of the initiator's answer; it never sees
//! PDUs. Invariant: `Chap::authenticated` is true only after a CHAP_R matching our own fresh
//! challenge under the configured secret, and a mutual challenge equal to ours (a reflection
//! attack, §12.1.3) is refused.

use md5::{Digest, Md5};

use super::ChapConfig;

/// Challenge length in bytes; RFC 7143 §12.1.3 asks for at least the secret's entropy.
const CHALLENGE_BYTES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChapError {
    #[error("initiator offers no supported CHAP algorithm")]
    NoAlgorithm,
    #[error("CHAP message out of order")]
    OutOfOrder,
    #[error("CHAP value is not valid hex or base64")]
    BadEncoding,
    #[error("CHAP name or response does not match")]
    Mismatch,
    #[error("mutual CHAP requested but the target has no mutual secret")]
    NoMutualSecret,
    #[error("mutual CHAP challenge reflects ours")]
    Reflected,
    #[error("no randomness available")]
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for CHAP_A.
    Start,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    Challenged,
    Done,
}

#[derive(Debug)]
pub struct Chap {
    state: State,
    id: u8,
    challenge: [u8; CHALLENGE_BYTES],
}

fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Decodes a CHAP binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Result<Vec<u8>, ChapError> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() {
            return Err(ChapError::BadEncoding);
        }
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex.to_owned()
        };
        (0..padded.len())
            .step_by(2)
            .map(|i| {
                padded
                    .get(i..i + 2)
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or(ChapError::BadEncoding)
            })
            .collect()
    } else if let Some(b64) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        decode_base64(b64)
    } else {
        Err(ChapError::BadEncoding)
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, ChapError> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(ChapError::BadEncoding),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Fills `buf` from the kernel's CSPRNG. The crypto crates belong to `store` alone (the
/// layering test enforces it) and front ends may not import `store`, so the challenge comes
/// straight from /dev/urandom, which never blocks once the system is up.
fn fill_random(buf: &mut [u8]) -> Result<(), ChapError> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|_| ChapError::Random)
}

pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn find<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Chap {
    pub fn new() -> Result<Self, ChapError> {
        let mut random = [0u8; CHALLENGE_BYTES + 1];
        fill_random(&mut random)?;
        let mut challenge = [0u8; CHALLENGE_BYTES];
        challenge.copy_from_slice(&random[1..]);
        Ok(Self {
            state: State::Start,
            id: random[0],
            challenge,
        })
    }

    pub fn authenticated(&self) -> bool {
        self.state == State::Done
    }

    /// Handles the CHAP keys of one login request and returns the keys to answer with.
    pub fn step(
        &mut self,
        pairs: &[(String, String)],
        cfg: &ChapConfig,
    ) -> Result<Vec<(String, String)>, ChapError> {
        match self.state {
            State::Start => {
                let Some(algs) = find(pairs, "CHAP_A") else {
                    // Nothing CHAP-related yet (e.g. only AuthMethod was offered).
                    return Ok(Vec::new());
                };
                if !algs.split(',').any(|a| a == "5") {
                    return Err(ChapError::NoAlgorithm);
                }
                self.state = State::Challenged;
                Ok(vec![
                    ("CHAP_A".into(), "5".into()),
                    ("CHAP_I".into(), self.id.to_string()),
                    ("CHAP_C".into(), encode_hex(&self.challenge)),
                ])
            }
            State::Challenged => {
                let (Some(name), Some(resp)) = (find(pairs, "CHAP_N"), find(pairs, "CHAP_R"))
                else {
                    return Err(ChapError::OutOfOrder);
                };
                let resp = decode_binary(resp)?;
                let want = md5_response(self.id, cfg.secret.as_bytes(), &self.challenge);
                // Compare without an early exit so timing says nothing about the secret.
                let same = resp.len() == want.len()
                    && resp
                        .iter()
                        .zip(want.iter())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0;
                if name != cfg.user || !same {
                    return Err(ChapError::Mismatch);
                }
                let mut reply = Vec::new();
                if let Some(their_c) = find(pairs, "CHAP_C") {
                    let their_c = decode_binary(their_c)?;
                    let their_i = find(pairs, "CHAP_I")
                        .and_then(|i| i.parse::<u8>().ok())
                        .ok_or(ChapError::BadEncoding)?;
                    if their_c == self.challenge {
                        return Err(ChapError::Reflected);
                    }
                    let (user, secret) = cfg.mutual.as_ref().ok_or(ChapError::NoMutualSecret)?;
                    let r = md5_response(their_i, secret.as_bytes(), &their_c);
                    reply.push(("CHAP_N".into(), user.clone()));
                    reply.push(("CHAP_R".into(), encode_hex(&r)));
                }
                self.state = State::Done;
                Ok(reply)
            }
            State::Done => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mutual: bool) -> ChapConfig {
        ChapConfig {
            user: "alice".into(),
            secret: "alicesecret1".into(),
            mutual: mutual.then(|| ("target".into(), "targetsecret".into())),
        }
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn challenge(chap: &mut Chap, cfg: &ChapConfig) -> (u8, Vec<u8>) {
        let r = chap.step(&kv(&[("CHAP_A", "7,5")]), cfg).unwrap();
        let id = find(&r, "CHAP_I").unwrap().parse().unwrap();
        (id, decode_binary(find(&r, "CHAP_C").unwrap()).unwrap())
    }

    #[test]
    fn one_way_correct_response_authenticates() {
        let cfg = cfg(false);
        let mut chap = Chap::new().unwrap();
        let (id, c) = challenge(&mut chap, &cfg);
        let r = encode_hex(&md5_response(id, b"alicesecret1", &c));
        let reply = chap
            .step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &r)]), &cfg)
            .unwrap();
        assert!(reply.is_empty() && chap.authenticated());
    }

    #[test]
    fn wrong_secret_is_mismatch() {
        let cfg = cfg(false);
        let mut chap = Chap::new().unwrap();
        let (id, c) = challenge(&mut chap, &cfg);
        let r = encode_hex(&md5_response(id, b"wrong", &c));
        let err = chap.step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &r)]), &cfg);
        assert_eq!(err, Err(ChapError::Mismatch));
        assert!(!chap.authenticated());
    }

    #[test]
    fn mutual_answers_and_refuses_reflection() {
        let cfg = cfg(true);
        let mut chap = Chap::new().unwrap();
        let (id, c) = challenge(&mut chap, &cfg);
        let r = encode_hex(&md5_response(id, b"alicesecret1", &c));
        let mine = [9u8; 16];
        let reply = chap
            .step(
                &kv(&[
                    ("CHAP_N", "alice"),
                    ("CHAP_R", &r),
                    ("CHAP_I", "3"),
                    ("CHAP_C", &encode_hex(&mine)),
                ]),
                &cfg,
            )
            .unwrap();
        assert_eq!(find(&reply, "CHAP_N"), Some("target"));
        let want = encode_hex(&md5_response(3, b"targetsecret", &mine));
        assert_eq!(find(&reply, "CHAP_R"), Some(want.as_str()));

        let mut chap = Chap::new().unwrap();
        let (id, c) = challenge(&mut chap, &cfg);
        let r = encode_hex(&md5_response(id, b"alicesecret1", &c));
        let err = chap.step(
            &kv(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "3"),
                ("CHAP_C", &encode_hex(&c)),
            ]),
            &cfg,
        );
        assert_eq!(err, Err(ChapError::Reflected));
    }

    #[test]
    fn challenges_differ_between_logins() {
        let (a, b) = (Chap::new().unwrap(), Chap::new().unwrap());
        assert_ne!(a.challenge, b.challenge);
    }

    #[test]
    fn binary_values_decode_hex_and_base64() {
        assert_eq!(decode_binary("0x0a0B"), Ok(vec![10, 11]));
        assert_eq!(decode_binary("0bAQID"), Ok(vec![1, 2, 3]));
        assert_eq!(decode_binary("12"), Err(ChapError::BadEncoding));
        assert_eq!(decode_binary("0xzz"), Err(ChapError::BadEncoding));
    }
}
