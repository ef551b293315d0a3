//! NFSv4.1 against the running daemon through a raw client (support/nfs4.rs): data through
//! OPEN/WRITE/COMMIT/READ, locks across two clients (LOCK, LOCKT, LOCKU, lease expiry),
//! reclaim after kill -9 in the grace period, and bad input: truncated and oversized
//! COMPOUNDs, unknown operations, bad stateids, replayed and misordered SEQUENCEs, and a
//! seeded fuzz run, after which another client is still served.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::nfs::{Client, Enc};
use crate::support::nfs4::*;
use crate::support::{activate_with_dir_bucket, run, stderr, tidegate};

/// A gateway on a local-directory bucket with share `s` and a short NFSv4 lease, so tests of
/// expiry and grace take seconds.
fn gateway(dir: &Path, lease_secs: u64) -> Gateway {
    let data = dir.join("data");
    activate_with_dir_bucket(&data, &dir.join("bucket"));
    let config = data.join("tidegate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[nfs]\nlease_secs = {lease_secs}\n"));
    std::fs::write(&config, text).unwrap();
    let out = run(tidegate(&data).args(["share", "create", "s", "--squash", "none"]));
    assert!(out.status.success(), "{}", stderr(&out));
    start(&data)
}

fn start(data: &Path) -> Gateway {
    Gateway::start_with(data, None, &["--iscsi-listen", "127.0.0.1:0"]).unwrap()
}

fn addr(gw: &Gateway) -> String {
    gw.ready_value("nfs").unwrap()
}

#[test]
fn files_locks_and_lease_expiry_across_two_clients() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 5);
    let mut a = Session::new(&addr(&gw), b"client-a", false);
    let mut b = Session::new(&addr(&gw), b"client-b", false);
    let share = a.fh("/s").unwrap();

    // Data: OPEN (create), WRITE, COMMIT, READ back; the second client reads it too.
    let (sid_a, fh) = a.open(&share, "locked.db", b"open-a", true).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(a.write(&fh, &sid_a, 0, &data), NFS4_OK);
    assert_eq!(a.commit(&fh), NFS4_OK);
    assert_eq!(a.read(&fh, &sid_a, 0, 300_000).unwrap(), data);
    let (sid_b, fh_b) = b.open(&share, "locked.db", b"open-b", false).unwrap();
    assert_eq!(fh_b, fh, "one handle for one file");
    assert_eq!(b.read(&fh, &sid_b, 100, 10).unwrap(), data[100..110]);

    // A write lock through A blocks B's lock; LOCKT names A's lock owner.
    let lock_a = a.lock(&fh, &sid_a, b"owner-a", 0, u64::MAX, false).unwrap();
    // `status` (the status file, rewritten every second) counts it.
    let started = Instant::now();
    while gw.status_value("files.locks_held") != Some(1) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "locks_held never 1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, holder) = b.lock(&fh, &sid_b, b"owner-b", 10, 5, false).unwrap_err();
    assert_eq!(
        (status, holder.as_slice()),
        (NFS4ERR_DENIED, &b"owner-a"[..])
    );
    let (status, holder) = b.lockt(&fh, b"owner-b", 0, 1).unwrap_err();
    assert_eq!(
        (status, holder.as_slice()),
        (NFS4ERR_DENIED, &b"owner-a"[..])
    );

    // Unlocked: B gets it, and A's LOCKT now sees B.
    assert_eq!(a.locku(&fh, &lock_a, 0, u64::MAX), NFS4_OK);
    let lock_b = b.lock(&fh, &sid_b, b"owner-b", 0, 100, false).unwrap();
    assert!(a.lockt(&fh, b"owner-a", 50, 1).is_err());
    // The old lock stateid of A is stale after LOCKU bumped it.
    assert_eq!(a.locku(&fh, &lock_a, 0, u64::MAX), NFS4ERR_OLD_STATEID);

    // B goes silent (killed): after its lease, its lock is released and A may lock.
    let started = Instant::now();
    let lock_a = loop {
        // A keeps its own lease alive with each attempt.
        match a.lock(&fh, &sid_a, b"owner-a", 0, 100, false) {
            Ok(l) => break l,
            Err((NFS4ERR_DENIED, _)) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "B's lock outlived its lease"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((s, _)) => panic!("LOCK failed with {s}"),
        }
    };
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "B's lock was released before its lease could have run out"
    );
    // B's session and stateids died with its lease.
    let r = b.compound(0, &[]);
    assert_eq!(r.status, NFS4ERR_BADSESSION);
    let _ = lock_b;
    // CLOSE while a lock is held is refused (RFC 8881 §18.2.3); unlocked, it closes.
    assert_eq!(a.close(&fh, &sid_a), NFS4ERR_LOCKS_HELD);
    assert_eq!(a.locku(&fh, &lock_a, 0, 100), NFS4_OK);
    assert_eq!(a.close(&fh, &sid_a), NFS4_OK);
    let mut c = Session::new(&addr(&gw), b"client-c", false);
    assert_eq!(
        c.lockt(&fh, b"owner-c", 0, u64::MAX),
        Ok(()),
        "no lock left behind"
    );
    gw.stop();
}

#[test]
fn a_lock_is_reclaimed_after_kill_9_and_others_wait_for_grace() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 10);
    let data_dir = gw.data_dir.clone();
    let mut a = Session::new(&addr(&gw), b"reclaimer", false);
    let share = a.fh("/s").unwrap();
    let (sid, fh) = a.open(&share, "journal", b"oo", true).unwrap();
    assert_eq!(
        a.write(&fh, &sid, 0, b"committed before the crash"),
        NFS4_OK
    );
    assert_eq!(a.commit(&fh), NFS4_OK);
    a.lock(&fh, &sid, b"lo", 0, 10, false).unwrap();
    gw.kill9();

    let gw = start(&data_dir);
    let nfs = addr(&gw);
    let started = Instant::now();
    while gw.status_value("files.lock_grace_secs").unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status shows no grace period"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second client, new to this server, may not lock in the grace period.
    let mut b = Session::new(&nfs, b"newcomer", false);
    assert_eq!(
        b.open_fh(&fh, b"ob", false),
        Err(NFS4ERR_GRACE),
        "a new OPEN in the grace period"
    );

    // The old client comes back: same handle (no STALE), reclaims its open and lock.
    let mut a = Session::new(&nfs, b"reclaimer", true);
    let sid = a.open_fh(&fh, b"oo", true).unwrap();
    a.lock(&fh, &sid, b"lo", 0, 10, true).unwrap();
    a.reclaim_complete();
    assert_eq!(
        a.read(&fh, &sid, 0, 100).unwrap(),
        b"committed before the crash"
    );

    // Grace is over (every recorded client reclaimed): B opens, and A's lock holds.
    let open_b = b.open_fh(&fh, b"ob", false).unwrap();
    let (status, holder) = b.lock(&fh, &open_b, b"lb", 5, 1, false).unwrap_err();
    assert_eq!((status, holder.as_slice()), (NFS4ERR_DENIED, &b"lo"[..]));
    gw.stop();
}

/// An EXCLUSIVE4_1 create keeps its verifier apart from the file's times (RFC 8881 §18.16.3):
/// the new file's mtime is the time of the create, not the verifier, and no time is flagged in
/// the attrset (a flagged time would make every Linux client send a SETATTR after each such
/// create). A retransmission with the same verifier opens the file, also after a kill -9 and
/// restart; another verifier finds it existing.
#[test]
fn exclusive_create_keeps_the_verifier_out_of_the_times() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 10);
    let data_dir = gw.data_dir.clone();
    let mut a = Session::new(&addr(&gw), b"exclusive", false);
    let share = a.fh("/s").unwrap();
    // A verifier that, read as a time, would be far from now (Linux sends jiffies and a pid).
    let verf = *b"\x00\x00\x00\x01\x00\x00\x04\xd2";
    let (sid, fh, attrset) = a.open_exclusive(&share, "x.db", b"oo", verf).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mtime = a.mtime_secs(&fh).unwrap();
    assert!(
        (mtime - now).abs() < 60,
        "mtime {mtime} is not the create time ({now})"
    );
    let time_bits = (1u32 << (FATTR4_TIME_ACCESS - 32)) | (1 << (FATTR4_TIME_MODIFY - 32));
    assert_eq!(
        attrset.get(1).copied().unwrap_or(0) & time_bits,
        0,
        "no time holds the verifier: {attrset:?}"
    );
    assert_eq!(a.close(&fh, &sid), NFS4_OK);
    let (_, again, _) = a.open_exclusive(&share, "x.db", b"oo", verf).unwrap();
    assert_eq!(again, fh, "a retransmission opens the same file");
    assert_eq!(
        a.open_exclusive(&share, "x.db", b"oo", *b"another!"),
        Err(NFS4ERR_EXIST)
    );
    gw.kill9();

    // After a restart, with the grace period over, the verifier still matches.
    let gw = start(&data_dir);
    let mut a = Session::new(&addr(&gw), b"exclusive", true);
    a.reclaim_complete();
    let (_, after, _) = a.open_exclusive(&share, "x.db", b"o2", verf).unwrap();
    assert_eq!(after, fh);
    assert_eq!(
        a.open_exclusive(&share, "x.db", b"o2", *b"another!"),
        Err(NFS4ERR_EXIST)
    );
    assert_eq!(
        a.mtime_secs(&fh).unwrap(),
        mtime,
        "the verifier never became the mtime"
    );
    gw.stop();
}

/// A tiny deterministic generator (xorshift), so a failing fuzz case can be replayed from its
/// seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The fuzz run's seed; recorded here so a failure is replayed exactly.
const FUZZ_SEED: u64 = 0x7e5a_11d0_2026_1206;

#[test]
fn bad_compounds_get_their_errors_and_other_clients_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 30);
    let nfs = addr(&gw);
    let mut good = Session::new(&nfs, b"bystander", false);
    let share = good.fh("/s").unwrap();
    let (sid, fh) = good.open(&share, "steady", b"o", true).unwrap();
    assert_eq!(good.write(&fh, &sid, 0, b"steady"), NFS4_OK);

    let mut s = Session::new(&nfs, b"troublemaker", false);
    // Minor version 0 and 2 are refused; so is an operation outside SEQUENCE.
    for minor in [0, 2] {
        let r = compound_raw(&mut s.c, minor, 0, &[]);
        assert_eq!(r.status, NFS4ERR_MINOR_VERS_MISMATCH);
    }
    let r = compound_raw(&mut s.c, 1, 1, &Enc::default().u32(OP_PUTROOTFH).0);
    assert_eq!(r.status, NFS4ERR_OP_NOT_IN_SESSION);
    // A huge op count, and a COMPOUND cut short.
    let seq = s.sequence().0;
    let r = compound_raw(&mut s.c, 1, 1_000_000, &seq);
    assert_eq!(r.status, NFS4ERR_TOO_MANY_OPS);
    // Refused before SEQUENCE ran: the slot did not move.
    s.seq -= 1;
    let r = s.compound(3, &Enc::default().u32(OP_PUTROOTFH).0);
    assert_eq!(r.status, NFS4ERR_BADXDR);
    let r = s.compound(
        2,
        &Enc::default().u32(OP_PUTROOTFH).u32(OP_GETATTR).u32(9).0,
    );
    assert_eq!(r.status, NFS4ERR_BADXDR, "a bitmap claiming 9 words");
    // Unknown operations, and SEQUENCE out of place.
    let r = s.compound(1, &Enc::default().u32(9999).0);
    assert_eq!(r.results.last(), Some(&(10044, NFS4ERR_OP_ILLEGAL)));
    let inner = s.sequence().0;
    s.seq -= 1;
    let r = s.compound(1, &inner);
    assert_eq!(r.status, NFS4ERR_SEQUENCE_POS);
    // Stateids: made up, from another run, and another client's.
    let made_up = StateId(1, vec![0xab; 12]);
    assert_eq!(s.write(&fh, &made_up, 0, b"x"), NFS4ERR_STALE_STATEID);
    let mut other = sid.1.clone();
    other[11] ^= 0x40;
    assert_eq!(
        s.write(&fh, &StateId(1, other), 0, b"x"),
        NFS4ERR_BAD_STATEID
    );
    assert_eq!(s.write(&fh, &sid, 0, b"x"), NFS4ERR_BAD_STATEID);

    // A replayed SEQUENCE gets the cached reply, byte for byte, without running again; one
    // from the future is misordered.
    let req = s.sequence().u32(OP_PUTROOTFH).u32(OP_GETFH);
    let first = compound_raw(&mut s.c, 1, 3, &req.0);
    let again = compound_raw(&mut s.c, 1, 3, &req.0);
    assert_eq!(first.status, NFS4_OK);
    assert_eq!(first.raw, again.raw);
    s.seq += 5;
    let r = s.compound(0, &[]);
    assert_eq!(r.status, NFS4ERR_SEQ_MISORDERED);
    s.seq -= 6;

    // Fuzz: valid COMPOUNDs with bytes flipped, cut or appended, on raw connections.
    let mut rng = Rng(FUZZ_SEED);
    for case in 0..400 {
        let mut c = Client::connect(&nfs);
        let mut body = s.sequence().u32(OP_PUTFH).opaque(&fh).u32(OP_READ).u32(0);
        body = body.raw(&[0; 12]).u64(0).u32(64);
        let mut args = Enc::default().opaque(b"f").u32(1).u32(3).raw(&body.0).0;
        match rng.below(3) {
            0 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(args.len() as u64) as usize;
                    args[i] ^= 1 << rng.below(8);
                }
            }
            1 => args.truncate(rng.below(args.len() as u64) as usize),
            _ => args.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        }
        // Any RPC-level answer (success with an NFS status, or GARBAGE_ARGS) is fine; a
        // closed connection is not: the server must answer every call.
        let (stat, _) = c.call(100_003, 4, 1, &args);
        assert!(
            stat == 0 || stat == 4,
            "fuzz case {case} (seed {FUZZ_SEED:#x}): {stat}"
        );
    }
    // The slot may be anywhere now; the bystander is served as before.
    assert_eq!(good.read(&fh, &sid, 0, 100).unwrap(), b"steady");
    gw.stop();
}

#[test]
fn flock_through_fuse_and_nfs4_locks_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _unmount = crate::fuse::Unmount(mnt.clone());
    let gw = Gateway::start_with(
        &dir.path().join("data"),
        None,
        &[
            "--iscsi-listen",
            "127.0.0.1:0",
            "--fuse",
            &format!("share={}", mnt.display()),
        ],
    )
    .unwrap();
    let flock = crate::support::tool("flock");
    let try_flock = |path: &Path| {
        std::process::Command::new(&flock)
            .args(["-n", "-x"])
            .arg(path)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    let mut s = Session::new(&addr(&gw), b"nfs-client", false);
    let share = s.fh("/share").unwrap();
    let (sid, fh) = s.open(&share, "shared.lock", b"o", true).unwrap();
    let file = mnt.join("shared.lock");

    // An NFSv4.1 lock blocks flock through FUSE, and its release lets it through.
    let lock = s.lock(&fh, &sid, b"lo", 0, u64::MAX, false).unwrap();
    assert!(!try_flock(&file), "flock got a file locked over NFSv4.1");
    assert_eq!(s.locku(&fh, &lock, 0, u64::MAX), NFS4_OK);
    assert!(try_flock(&file), "flock refused after the NFSv4.1 unlock");

    // A flock held through FUSE is seen by NFSv4.1's LOCKT and LOCK, until it is let go.
    let mut holder = std::process::Command::new(&flock)
        .args(["-x"])
        .arg(&file)
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while s.lockt(&fh, b"lo", 0, 1).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "flock never taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = s.lock(&fh, &sid, b"lo", 0, 10, false).unwrap_err();
    assert_eq!(status, NFS4ERR_DENIED);
    holder.wait().unwrap();
    // The kernel sends FUSE's RELEASE (which drops a flock) after the process has exited, not
    // before wait() returns: the lock goes within moments.
    let released = Instant::now();
    while s.lockt(&fh, b"lo", 0, u64::MAX).is_err() {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "flock not released at close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.lock(&fh, &sid, b"lo", 0, 10, false).unwrap();
    gw.stop();
}

/// One COMPOUND's GETATTR after an operation that changed the file reports the change: the
/// attributes an earlier operation of the same COMPOUND read are never served stale (the
/// server reuses them between operations to save catalog reads).
#[test]
fn a_getattr_after_write_or_setattr_in_one_compound_sees_the_change() {
    const OP_SETATTR: u32 = 34;
    const SIZE: u32 = 4;
    const MODE: u32 = 33;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 90);
    let mut s = Session::new(&addr(&gw), b"compound-attrs", false);
    let share = s.fh("/s").unwrap();
    let (sid, fh) = s.open(&share, "f", b"o", true).unwrap();
    // A bitmap4 of one attribute.
    let bitmap = |e: Enc, attr: u32| match attr {
        0..32 => e.u32(1).u32(1 << attr),
        _ => e.u32(2).u32(0).u32(1 << (attr - 32)),
    };
    let getattr = |e: Enc, attr: u32| bitmap(e.u32(OP_GETATTR), attr);
    // GETATTR4resok's value of the one attribute asked for.
    let value = |d: &mut crate::support::nfs::Dec, op: u32| {
        assert_eq!((d.u32(), d.u32()), (op, NFS4_OK));
        let words = d.u32() as usize;
        d.fixed(4 * words);
        d.opaque()
    };

    // PUTFH, GETATTR(size), WRITE 5 bytes at 100, GETATTR(size).
    let e = getattr(Enc::default().u32(OP_PUTFH).opaque(&fh), SIZE).u32(OP_WRITE);
    let e = sid.enc(e).u64(100).u32(FILE_SYNC4).opaque(b"hello");
    let r = s.compound(4, &getattr(e, SIZE).0);
    assert_eq!(r.status, NFS4_OK);
    assert_eq!(r.results.last(), Some(&(OP_PUTFH, NFS4_OK)));
    let mut d = crate::support::nfs::Dec::new(&r.tail);
    assert_eq!(value(&mut d, OP_GETATTR), 0u64.to_be_bytes(), "size before");
    assert_eq!((d.u32(), d.u32()), (OP_WRITE, NFS4_OK));
    d.fixed(4 + 4 + 8);
    assert_eq!(
        value(&mut d, OP_GETATTR),
        105u64.to_be_bytes(),
        "size after"
    );

    // PUTFH, GETATTR(mode), SETATTR mode 0600, GETATTR(mode).
    let e = getattr(Enc::default().u32(OP_PUTFH).opaque(&fh), MODE).u32(OP_SETATTR);
    let e = bitmap(StateId(0, vec![0; 12]).enc(e), MODE).opaque(&0o600u32.to_be_bytes());
    let r = s.compound(4, &getattr(e, MODE).0);
    assert_eq!(r.status, NFS4_OK);
    assert_eq!(r.results.last(), Some(&(OP_PUTFH, NFS4_OK)));
    let mut d = crate::support::nfs::Dec::new(&r.tail);
    assert_eq!(
        value(&mut d, OP_GETATTR),
        0o644u32.to_be_bytes(),
        "mode before"
    );
    assert_eq!((d.u32(), d.u32()), (OP_SETATTR, NFS4_OK));
    let words = d.u32() as usize;
    d.fixed(4 * words);
    assert_eq!(
        value(&mut d, OP_GETATTR),
        0o600u32.to_be_bytes(),
        "mode after"
    );
    assert_eq!(s.close(&fh, &sid), NFS4_OK);
}

/// The ACCESS a client puts after OPEN in one COMPOUND answers from what OPEN read, but never
/// past an operation that may change it: after a SETATTR that adds the execute bits, ACCESS
/// grants EXECUTE (the server reuses OPEN's reading to save a catalog read).
#[test]
fn access_after_open_and_setattr_in_one_compound_sees_the_new_mode() {
    const OP_ACCESS: u32 = 3;
    const OP_SETATTR: u32 = 34;
    const MODE: u32 = 33;
    const READ: u32 = 0x01;
    const MODIFY: u32 = 0x04;
    const EXECUTE: u32 = 0x20;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), 90);
    let mut s = Session::new(&addr(&gw), b"compound-access", false);
    let share = s.fh("/s").unwrap();
    // PUTFH, OPEN (create, 0644), ACCESS, SETATTR mode 0755, ACCESS.
    let access = READ | MODIFY | EXECUTE;
    let e = s
        .open_ops(&share, "tool", b"o", true)
        .u32(OP_ACCESS)
        .u32(access)
        .u32(OP_SETATTR);
    let e = StateId(0, vec![0; 12])
        .enc(e)
        .u32(2)
        .u32(0)
        .u32(1 << (MODE - 32))
        .opaque(&0o755u32.to_be_bytes())
        .u32(OP_ACCESS)
        .u32(access);
    let r = s.compound(5, &e.0);
    assert_eq!(r.status, NFS4_OK);
    assert_eq!(r.results.last(), Some(&(OP_PUTFH, NFS4_OK)));
    let mut d = crate::support::nfs::Dec::new(&r.tail);
    assert_eq!((d.u32(), d.u32()), (OP_OPEN, NFS4_OK));
    // OPEN4resok: stateid, change_info4, rflags, attrset, delegation (none).
    d.fixed(16 + 4 + 16 + 4);
    let words = d.u32() as usize;
    d.fixed(4 * words);
    assert_eq!(d.u32(), 0, "no delegation");
    assert_eq!((d.u32(), d.u32()), (OP_ACCESS, NFS4_OK));
    assert_eq!(
        (d.u32(), d.u32()),
        (access, READ | MODIFY),
        "root on a 0644 file: no execute"
    );
    assert_eq!((d.u32(), d.u32()), (OP_SETATTR, NFS4_OK));
    let words = d.u32() as usize;
    d.fixed(4 * words);
    assert_eq!((d.u32(), d.u32()), (OP_ACCESS, NFS4_OK));
    assert_eq!(
        (d.u32(), d.u32()),
        (access, READ | MODIFY | EXECUTE),
        "after chmod 0755 in the same COMPOUND"
    );
}
