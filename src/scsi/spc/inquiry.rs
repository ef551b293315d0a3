//! INQUIRY (SPC-4 §6.6): standard data and the VPD pages of a disk LU (SPC-4 §7.8, SBC-4
//! §6.6), plus the block limits tidegate advertises, which `sbc` enforces.
//!
//! Must not change LU state. Invariant: every page's length field matches the bytes sent
//! before truncation to the allocation length, and VPD 00h lists exactly the pages served.

use crate::gateway::block::DeviceIdentity;

use super::super::Nexus;
use super::super::sense::Sense;
use super::put_len;

pub const VENDOR: &str = "TIDEGATE";
pub const DISK_PRODUCT: &str = "VOLUME";
pub const REVISION: &str = env!("CARGO_PKG_VERSION");

/// Peripheral device type of a direct-access block device (SPC-4 §6.6.2).
pub const TYPE_DISK: u8 = 0x00;

/// VPD pages we serve, ascending (SPC-4 §7.8.13 requires the order).
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Limits advertised in VPD B0h, in bytes so they hold for any block size.
pub mod limits {
    /// Largest READ/WRITE accepted: bounds the buffer one command can make us allocate. 32 MiB
    /// because initiators do send that much in one command regardless of this page (libiscsi's
    /// WRITE SAME tests write 65536 blocks at once; tgt has no limit at all); the iSCSI layer
    /// grows a command's buffer only as data arrives.
    pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
    /// The size the cache handles best (its write granularity).
    pub const OPTIMAL_TRANSFER_BYTES: u64 = 1 << 20;
    pub const OPTIMAL_GRANULARITY_BYTES: u64 = 4096;
    /// UNMAP and WRITE SAME per command: large enough for fast discards, small enough
    /// (libiscsi checks at most 2^20 blocks) that one command cannot stall the LU for long.
    pub const MAX_UNMAP_BYTES: u64 = 256 << 20;
    pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    /// COMPARE AND WRITE holds the LU's write lock while it reads, compares and writes.
    pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
}

/// Limits in logical blocks for a given block size.
#[derive(Debug, Clone, Copy)]
pub struct BlockLimits {
    pub max_transfer: u32,
    pub optimal_transfer: u32,
    pub granularity: u16,
    pub max_unmap: u32,
    pub max_write_same: u64,
}

impl BlockLimits {
    pub fn new(block_size: u32) -> Self {
        let bs = u64::from(block_size.max(1));
        let blocks32 = |bytes: u64| u32::try_from((bytes / bs).max(1)).unwrap_or(u32::MAX);
        Self {
            max_transfer: blocks32(limits::MAX_TRANSFER_BYTES),
            optimal_transfer: blocks32(limits::OPTIMAL_TRANSFER_BYTES),
            granularity: u16::try_from((limits::OPTIMAL_GRANULARITY_BYTES / bs).max(1))
                .unwrap_or(u16::MAX),
            max_unmap: blocks32(limits::MAX_UNMAP_BYTES),
            max_write_same: u64::from(blocks32(limits::MAX_UNMAP_BYTES)),
        }
    }
}

pub(crate) fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// What standard INQUIRY data says about a LU (SPC-4 §6.6.2).
#[derive(Debug, Clone, Copy)]
pub struct Product<'a> {
    pub peripheral: u8,
    /// RMB: the medium is removable (tape drives, changers).
    pub removable: bool,
    pub vendor: &'a str,
    pub product: &'a str,
    pub revision: &'a str,
    /// Version descriptors after SAM-5, iSCSI and SPC-4 (SPC-4 §6.6.2 table 150).
    pub command_set: u16,
}

/// Standard INQUIRY data for a LU with this peripheral byte and product.
pub fn standard(peripheral: u8, product: &str) -> Vec<u8> {
    // SBC-3's version descriptor.
    standard_for(&Product {
        peripheral,
        removable: false,
        vendor: VENDOR,
        product,
        revision: REVISION,
        command_set: 0x04c0,
    })
}

pub fn standard_for(p: &Product<'_>) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = p.peripheral;
    d[1] = if p.removable { 0x80 } else { 0 };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = 74 - 5;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&padded(p.vendor, 8));
    d[16..32].copy_from_slice(&padded(p.product, 16));
    d[32..36].copy_from_slice(&padded(p.revision, 4));
    // Version descriptors (SPC-4 §6.6.2 table 150): SAM-5, iSCSI, SPC-4, the command set.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, p.command_set]
        .iter()
        .enumerate()
    {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// INQUIRY of a LU with only the identification VPD pages (00h, 80h, 83h): tape drives and
/// changers.
pub fn identified(
    product: &Product<'_>,
    id: &DeviceIdentity,
    nexus: &Nexus,
    evpd: bool,
    code: u8,
) -> Result<Vec<u8>, Sense> {
    if !evpd {
        return Ok(standard_for(product));
    }
    let body = match code {
        0x00 => vec![0x00, 0x80, 0x83],
        0x80 => padded(&id.serial, id.serial.len()),
        0x83 => device_identification(id, nexus),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    Ok(page_for(product.peripheral, code, &body))
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    page_for(TYPE_DISK, code, body)
}

/// A VPD page with its 4-byte header for a LU of peripheral type `peripheral`.
pub fn page_for(peripheral: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![peripheral, code, 0, 0];
    put_len::<2>(&mut d, 2, body.len());
    d.extend_from_slice(body);
    d
}

/// The VPD page `code` of a disk, or INVALID FIELD IN CDB for one we do not have.
pub fn vpd(
    code: u8,
    id: &DeviceIdentity,
    nexus: &Nexus,
    lim: &BlockLimits,
) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(code, &VPD_PAGES),
        0x80 => page(code, &padded(&id.serial, id.serial.len().min(32))),
        0x83 => page(code, &device_identification(id, nexus)),
        0xb0 => page(code, &block_limits(lim)),
        // Block device characteristics (SBC-4 §6.6.2): MEDIUM ROTATION RATE 1 = non-rotating.
        0xb1 => {
            let mut b = [0u8; 0x3c];
            b[1] = 0x01;
            page(code, &b)
        }
        // Logical block provisioning (SBC-4 §6.6.4): LBPU, LBPWS, LBPWS10, LBPRZ=001b since
        // unmapped blocks read as zeros; provisioning type 010b (thin).
        0xb2 => page(code, &[0x00, 0xe4, 0x02, 0x00]),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    })
}

fn block_limits(lim: &BlockLimits) -> [u8; 0x3c] {
    // Offsets below are page offsets minus the 4-byte header (SBC-4 §6.6.3 table 217).
    let mut b = [0u8; 0x3c];
    b[0] = 0x01; // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is rejected
    b[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS;
    b[2..4].copy_from_slice(&lim.granularity.to_be_bytes());
    b[4..8].copy_from_slice(&lim.max_transfer.to_be_bytes());
    b[8..12].copy_from_slice(&lim.optimal_transfer.to_be_bytes());
    b[16..20].copy_from_slice(&lim.max_unmap.to_be_bytes());
    b[20..24].copy_from_slice(&limits::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    b[24..28].copy_from_slice(&u32::from(lim.granularity).to_be_bytes());
    b[28] = 0x80; // UGAVALID, alignment 0
    b[32..40].copy_from_slice(&lim.max_write_same.to_be_bytes());
    b
}

/// VPD 83h designators (SPC-4 §7.8.6): NAA, T10 vendor ID, relative target port, target
/// port name.
pub fn device_identification(id: &DeviceIdentity, nexus: &Nexus) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    // NAA IEEE Registered Extended (NAA 6, §7.8.6.6.6): we own no OUI, so the 124 bits after
    // the NAA nibble come from the device UUID, which is unique per volume.
    let mut naa = id.uuid;
    naa[0] = 0x60 | (naa[0] & 0x0f);
    out.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    out.extend_from_slice(&naa);
    // T10 vendor ID (§7.8.6.4): vendor then the serial number.
    let mut t10 = padded(VENDOR, 8);
    t10.extend_from_slice(&padded(&id.serial, id.serial.len().min(32)));
    out.extend_from_slice(&[0x02, 0x01, 0x00, u8::try_from(t10.len()).unwrap_or(0)]);
    out.extend_from_slice(&t10);
    // Relative target port (§7.8.6.7), PIV=1, association target port, protocol iSCSI.
    out.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0]);
    out.extend_from_slice(&nexus.relative_port.to_be_bytes());
    // SCSI name string of the target port (§7.8.6.11), UTF-8, NUL-padded to 4n bytes.
    let mut name = nexus.target_port.as_bytes().to_vec();
    name.truncate(251);
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    out.extend_from_slice(&[0x53, 0x98, 0x00, u8::try_from(name.len()).unwrap_or(0)]);
    out.extend_from_slice(&name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_inquiry_fields() {
        let d = standard(TYPE_DISK, DISK_PRODUCT);
        assert_eq!(usize::from(d[4]) + 5, d.len());
        assert_eq!(&d[8..16], b"TIDEGATE");
        assert_eq!(&d[16..32], b"VOLUME          ");
        assert_eq!(d[2], 6);
        assert_eq!(d[3] & 0x0f, 2);
        assert_eq!(&d[62..66], &[0x04, 0x60, 0x04, 0xc0]);
    }

    #[test]
    fn limits_scale_with_block_size() {
        let cases = [(512, 65536, 8, 524288), (4096, 8192, 1, 65536)];
        for (bs, max_xfer, gran, unmap) in cases {
            let l = BlockLimits::new(bs);
            assert_eq!(
                (l.max_transfer, l.granularity, l.max_unmap),
                (max_xfer, gran, unmap)
            );
        }
    }
}
