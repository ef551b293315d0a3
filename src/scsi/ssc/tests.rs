//! The drive and the changer together over a real catalog and cache: every stream command's
//! outcome and sense data, and the changer's element status and move errors.

use std::sync::Arc;

use super::*;
use crate::catalog::tapes::{ElementKind, TapeState};
use crate::gateway::library::{Layout, Library};
use crate::gateway::tapes::{CreateTapes, TapeLimits, testkit};
use crate::scsi::sbc::testkit::{nexus, run};
use crate::scsi::smc::Changer;

const TAPE: u64 = 8 << 20;

struct Vtl {
    rig: testkit::Rig,
    library: Arc<Library>,
    changer: Changer,
    drives: Vec<Drive>,
    n: Arc<Nexus>,
}

fn vtl() -> Vtl {
    let rig = testkit::rig();
    let layout = Layout {
        drives: 2,
        slots: 8,
        mail_slots: 2,
    };
    crate::gateway::tapes::create(
        &rig.catalog,
        &CreateTapes {
            prefix: "TST",
            count: 3,
            size_bytes: TAPE,
            retention: None,
        },
        TapeLimits {
            slots: 8,
            min_size: 1 << 20,
        },
        1,
    )
    .unwrap();
    let library =
        Arc::new(Library::open(layout, rig.catalog.clone(), rig.cache.clone(), "gw").unwrap());
    let drives: Vec<Drive> = library
        .bays()
        .iter()
        .map(|b| Drive::new(b.clone()))
        .collect();
    let changer = Changer::new(library.clone(), vec![1, 2]);
    Vtl {
        rig,
        library,
        changer,
        drives,
        n: nexus("a"),
    }
}

/// (status good?, data, sense key, asc, ascq, byte 2 flags, info)
#[derive(Debug)]
struct Out {
    data: Bytes,
    sense: Option<(u8, u8, u8, u8, u32)>,
}

async fn exec(lu: &dyn LogicalUnit, n: &Arc<Nexus>, cdb: &[u8], out: &[u8]) -> Out {
    let r = run(lu, n, cdb, out).await;
    Out {
        data: r.data_in.clone(),
        sense: r.sense.as_ref().map(|s| {
            (
                s[2] & 0x0f,
                s[12],
                s[13],
                s[2] & 0xe0,
                u32::from_be_bytes([s[3], s[4], s[5], s[6]]),
            )
        }),
    }
}

async fn good(lu: &dyn LogicalUnit, n: &Arc<Nexus>, cdb: &[u8], out: &[u8]) -> Bytes {
    let o = exec(lu, n, cdb, out).await;
    assert!(o.sense.is_none(), "{cdb:02x?}: {:?}", o.sense);
    o.data
}

fn len3(n: usize) -> [u8; 3] {
    let b = (n as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

fn write6(fixed: bool, n: usize) -> Vec<u8> {
    let [a, b, c] = len3(n);
    vec![0x0a, u8::from(fixed), a, b, c, 0]
}

fn read6(fixed: bool, sili: bool, n: usize) -> Vec<u8> {
    let [a, b, c] = len3(n);
    vec![0x08, u8::from(fixed) | (u8::from(sili) << 1), a, b, c, 0]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// MOVE MEDIUM from storage slot `slot` to drive `drive`.
fn load(slot: u16, drive: u16) -> Vec<u8> {
    let s = (0x400 + slot).to_be_bytes();
    let d = (0x100 + drive).to_be_bytes();
    vec![0xa5, 0, 0, 0, s[0], s[1], d[0], d[1], 0, 0, 0, 0]
}

async fn settle(lu: &dyn LogicalUnit, n: &Arc<Nexus>) {
    // The power-on unit attention, then whatever TEST UNIT READY says.
    let o = exec(lu, n, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.1)), Some((6, 0x29)));
}

#[tokio::test]
async fn drive_reports_records_filemarks_and_end_of_data() {
    let v = vtl();
    let (d, n) = (&v.drives[0], &v.n);
    settle(d, n).await;
    // No tape: NOT READY, MEDIUM NOT PRESENT.
    let o = exec(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.1, s.2)), Some((2, 0x3a, 0)));
    settle(&v.changer, n).await;
    good(&v.changer, n, &load(0, 0), &[]).await;
    // The load is announced once: NOT READY TO READY CHANGE, then ready.
    let o = exec(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.1)), Some((6, 0x28)));
    good(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;

    let (r1, r2, r3) = (pattern(100, 1), pattern(200, 2), pattern(50, 3));
    good(d, n, &write6(false, 100), &r1).await;
    good(d, n, &write6(false, 200), &r2).await;
    good(d, n, &[0x10, 0, 0, 0, 1, 0], &[]).await;
    good(d, n, &write6(false, 50), &r3).await;
    good(d, n, &[0x10, 0, 0, 0, 2, 0], &[]).await;
    // READ POSITION long form: object 6, file 3.
    let p = good(d, n, &[0x34, 0x06, 0, 0, 0, 0, 0, 0, 32, 0], &[]).await;
    assert_eq!((p[15], p[23]), (6, 3));
    good(d, n, &[0x01, 0, 0, 0, 0, 0], &[]).await;

    // Exact length; then a longer record than asked: ILI, negative residue, data cut.
    assert_eq!(good(d, n, &read6(false, false, 100), &[]).await, r1);
    let o = exec(d, n, &read6(false, false, 150), &[]).await;
    assert_eq!(o.sense, Some((0, 0, 0, 0x20, (-50i32) as u32)));
    assert_eq!(o.data, r2[..150]);
    // Filemark: NO SENSE, FILEMARK, residue = the whole request.
    let o = exec(d, n, &read6(false, false, 100), &[]).await;
    assert_eq!(o.sense, Some((0, 0, 1, 0x80, 100)));
    // A shorter record with SILI: GOOD with the short data; without SILI: ILI, residue 50.
    assert_eq!(good(d, n, &read6(false, true, 100), &[]).await, r3);
    // SPACE one block back over it, and read it again without SILI.
    good(d, n, &[0x11, 0x00, 0xff, 0xff, 0xff, 0], &[]).await;
    let o = exec(d, n, &read6(false, false, 100), &[]).await;
    assert_eq!(o.sense, Some((0, 0, 0, 0x20, 50)));
    assert_eq!(o.data, r3);
    for _ in 0..2 {
        let o = exec(d, n, &read6(false, false, 10), &[]).await;
        assert_eq!(o.sense.map(|s| (s.2, s.3)), Some((1, 0x80)));
    }
    // End of data: BLANK CHECK, END-OF-DATA DETECTED.
    let o = exec(d, n, &read6(false, false, 10), &[]).await;
    assert_eq!(o.sense, Some((8, 0, 5, 0, 10)));

    // SPACE back one filemark (lands before it), then one block back crosses a filemark.
    good(d, n, &[0x11, 0x01, 0xff, 0xff, 0xff, 0], &[]).await;
    let p = good(d, n, &[0x34, 0x06, 0, 0, 0, 0, 0, 0, 32, 0], &[]).await;
    assert_eq!(p[15], 5);
    let o = exec(d, n, &[0x11, 0x00, 0xff, 0xff, 0xfe, 0], &[]).await;
    assert_eq!(o.sense, Some((0, 0, 1, 0x80, 2)));
    // Filemarks forward past the end: BLANK CHECK with the residue.
    good(d, n, &[0x01, 0, 0, 0, 0, 0], &[]).await;
    let o = exec(d, n, &[0x11, 0x01, 0, 0, 5, 0], &[]).await;
    assert_eq!(o.sense, Some((8, 0, 5, 0, 2)));
    // Blocks reverse at the beginning: EOM, BEGINNING-OF-PARTITION.
    good(d, n, &[0x01, 0, 0, 0, 0, 0], &[]).await;
    let o = exec(d, n, &[0x11, 0x00, 0xff, 0xff, 0xff, 0], &[]).await;
    assert_eq!(o.sense, Some((0, 0, 4, 0x40, 1)));

    // LOCATE(10) to object 1 reads the second record; LOCATE(16) to file 2 reads the third.
    good(d, n, &[0x2b, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(good(d, n, &read6(false, false, 200), &[]).await, r2);
    let mut l16 = vec![0x92, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    good(d, n, &l16, &[]).await;
    assert_eq!(good(d, n, &read6(false, false, 50), &[]).await, r3);
    l16[11] = 9;
    let o = exec(d, n, &l16, &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.2)), Some((8, 5)));

    // Writing in the middle cuts the tape there.
    good(d, n, &[0x2b, 0, 0, 0, 0, 0, 2, 0, 0, 0], &[]).await;
    good(d, n, &write6(false, 10), &pattern(10, 9)).await;
    let o = exec(d, n, &read6(false, false, 10), &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.2)), Some((8, 5)));
    // The cut is committed at once; the new record only once something syncs it.
    let t = v.rig.catalog.tape("TST00001").unwrap().unwrap();
    assert_eq!((t.objects, t.data_bytes), (2, 300));
    good(d, n, &[0x10, 0, 0, 0, 0, 0], &[]).await;
    let t = v.rig.catalog.tape("TST00001").unwrap().unwrap();
    assert_eq!((t.objects, t.data_bytes), (3, 310));
}

#[tokio::test]
async fn fixed_blocks_early_warning_and_overflow() {
    let v = vtl();
    let (d, n) = (&v.drives[1], &v.n);
    settle(d, n).await;
    settle(&v.changer, n).await;
    good(&v.changer, n, &load(1, 1), &[]).await;
    let _ = exec(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;
    // MODE SELECT(6): 1 MiB fixed blocks.
    let sel = [0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0x10, 0, 0];
    good(d, n, &[0x15, 0x10, 0, 0, 12, 0], &sel).await;
    let m = good(d, n, &[0x1a, 0, 0, 0, 255, 0], &[]).await;
    assert_eq!(&m[9..12], &[0x10, 0, 0]);
    // SILI with FIXED is illegal; fixed mode with block size 0 is refused.
    let o = exec(d, n, &read6(true, true, 1), &[]).await;
    assert_eq!(o.sense.map(|s| s.1), Some(0x24));
    let mib = 1 << 20;
    good(d, n, &write6(true, 7), &pattern(7 * mib, 4)).await;
    // The 8th MiB crosses early warning: written, then NO SENSE + EOM.
    let o = exec(d, n, &write6(true, 1), &pattern(mib, 5)).await;
    assert_eq!(o.sense, Some((0, 0, 2, 0x40, 0)));
    // The tape is full: VOLUME OVERFLOW, EOM, residue = blocks not written.
    let o = exec(d, n, &write6(true, 2), &pattern(2 * mib, 6)).await;
    assert_eq!(o.sense, Some((0x0d, 0, 2, 0x40, 2)));
    let p = good(d, n, &[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!((p[0] & 0x01, p[7]), (1, 8), "BPEW and position 8");
    good(d, n, &[0x01, 0, 0, 0, 0, 0], &[]).await;
    let back = good(d, n, &read6(true, false, 7), &[]).await;
    assert_eq!(back, pattern(7 * mib, 4));
    // Reading more blocks than are left: the data there, then BLANK CHECK with the residue.
    let o = exec(d, n, &read6(true, false, 3), &[]).await;
    assert_eq!(o.sense, Some((8, 0, 5, 0, 2)));
    assert_eq!(o.data, pattern(mib, 5));
    // Variable-mode read of a 1 MiB record into 512 KiB: ILI, negative residue.
    good(
        d,
        n,
        &[0x15, 0x10, 0, 0, 12, 0],
        &[0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .await;
    good(d, n, &[0x01, 0, 0, 0, 0, 0], &[]).await;
    let o = exec(d, n, &read6(false, false, mib / 2), &[]).await;
    assert_eq!(
        o.sense.map(|s| (s.3, s.4)),
        Some((0x20, (-(mib as i32 / 2)) as u32))
    );
    // Unload: not ready until loaded again.
    good(d, n, &[0x1b, 0, 0, 0, 0, 0], &[]).await;
    let o = exec(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(o.sense.map(|s| (s.0, s.1)), Some((2, 0x3a)));
    good(d, n, &[0x1b, 0, 0, 0, 1, 0], &[]).await;
    good(d, n, &[0, 0, 0, 0, 0, 0], &[]).await;
}

/// Barcodes in READ ELEMENT STATUS (VOLTAG, all types), by element address.
async fn barcodes(v: &Vtl) -> Vec<(u16, u8, String)> {
    let d = good(
        &v.changer,
        &v.n,
        &[0xb8, 0x10, 0, 0, 0xff, 0xff, 0x01, 0, 0xff, 0xff, 0, 0],
        &[],
    )
    .await;
    let total = u32::from_be_bytes([0, d[5], d[6], d[7]]) as usize;
    assert_eq!(total + 8, d.len());
    let mut out = Vec::new();
    let mut at = 8;
    while at < d.len() {
        let t = d[at];
        let dl = u16::from_be_bytes([d[at + 2], d[at + 3]]) as usize;
        let n = u32::from_be_bytes([0, d[at + 5], d[at + 6], d[at + 7]]) as usize;
        assert_eq!(d[at + 1], 0x80, "PVOLTAG");
        let mut e = at + 8;
        while e < at + 8 + n {
            let addr = u16::from_be_bytes([d[e], d[e + 1]]);
            let full = d[e + 2] & 1 == 1;
            let tag = String::from_utf8_lossy(&d[e + 12..e + 44])
                .trim_matches([' ', '\0'])
                .to_owned();
            assert_eq!(full, !tag.is_empty(), "element {addr:#x}");
            if full {
                out.push((addr, t, tag));
            }
            e += dl;
        }
        at += 8 + n;
    }
    out
}

#[tokio::test]
async fn changer_lists_each_barcode_once_and_refuses_bad_moves() {
    let v = vtl();
    let n = &v.n;
    settle(&v.changer, n).await;
    let inq = good(&v.changer, n, &[0x12, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(
        (inq[0], &inq[8..11], &inq[16..20]),
        (8, &b"STK"[..], &b"L700"[..])
    );
    let got = barcodes(&v).await;
    let want: Vec<(u16, u8, String)> = (0..3)
        .map(|i| (0x400 + i, 2, format!("TST{:05}", i + 1)))
        .collect();
    assert_eq!(got, want);
    good(&v.changer, n, &load(1, 0), &[]).await;
    let got = barcodes(&v).await;
    assert_eq!(got.len(), 3);
    assert!(got.contains(&(0x100, 4, "TST00002".into())));
    // Errors: source empty, destination full, invalid address, removal prevented.
    let cases: [(Vec<u8>, (u8, u8, u8)); 3] = [
        (load(1, 1), (5, 0x3b, 0x0e)),
        (load(0, 0), (5, 0x3b, 0x0d)),
        (load(3000, 0), (5, 0x21, 0x01)),
    ];
    for (cdb, want) in cases {
        let o = exec(&v.changer, n, &cdb, &[]).await;
        assert_eq!(o.sense.map(|s| (s.0, s.1, s.2)), Some(want), "{cdb:02x?}");
    }
    let d = &v.drives[0];
    settle(d, n).await;
    good(d, n, &[0x1e, 0, 0, 0, 1, 0], &[]).await;
    let unload = [0xa5, 0, 0, 0, 0x01, 0x00, 0x04, 0x05, 0, 0, 0, 0];
    let o = exec(&v.changer, n, &unload, &[]).await;
    assert_eq!(o.sense.map(|s| (s.1, s.2)), Some((0x53, 0x02)));
    good(d, n, &[0x1e, 0, 0, 0, 0, 0], &[]).await;
    good(&v.changer, n, &unload, &[]).await;
    // A move to a mail slot ejects the tape: gone from the library, on its way to the shelf.
    let eject = [0xa5, 0, 0, 0, 0x04, 0x05, 0x00, 0x10, 0, 0, 0, 0];
    good(&v.changer, n, &eject, &[]).await;
    let got = barcodes(&v).await;
    assert!(got.iter().all(|(_, _, b)| b != "TST00002"), "{got:?}");
    let t = v.rig.catalog.tape("TST00002").unwrap().unwrap();
    assert_eq!((t.state, t.location), (TapeState::InTransit, None));
    // MODE SENSE 1Dh: the element address assignment.
    let m = good(&v.changer, n, &[0x1a, 0x08, 0x1d, 0, 255, 0], &[]).await;
    assert_eq!(&m[4..8], &[0x1d, 0x12, 0, 0]);
    assert_eq!(&m[10..14], &[0x04, 0x00, 0, 8]);
    assert_eq!(&m[18..22], &[0x01, 0x00, 0, 2]);
    // Only storage elements, from slot 2 on.
    let d2 = good(
        &v.changer,
        n,
        &[0xb8, 0x02, 0x04, 0x02, 0, 2, 0, 0, 0xff, 0xff, 0, 0],
        &[],
    )
    .await;
    assert_eq!((d2[0], d2[1], d2[3], d2[8]), (0x04, 0x02, 2, 2));
    let _ = v.library.status().unwrap();
    assert!(matches!(
        v.rig.catalog.tape("TST00001").unwrap().unwrap().location,
        Some((ElementKind::Slot, 0))
    ));
}
