/*
 * tidegate's VTL acceptance client: drives the changer (LUN 0) and a drive (LUN 1) of a VTL
 * target through libiscsi, checking data and sense data as SSC-3/SMC-3 say.
 *
 *   vtl_client URL full     load a tape, write, space, locate, read back, unload
 *   vtl_client URL write    load a tape, write records + a filemark, leave it loaded
 *   vtl_client URL verify   read what `write` acknowledged (after a crash and restart)
 *   vtl_client URL elements print the changer's element status
 *   vtl_client URL bench    load a tape and measure throughput (VTL_LUN=n: a bare drive LUN)
 *   vtl_client URL unload   move the tape in the first full drive to an empty slot
 *   vtl_client URL eject    move the first tape in a storage slot to a mail slot
 *   vtl_client URL cycles   count the tapes, then load and unload VTL_CYCLES of them (scale bench)
 *   vtl_client URL readonly load a retrieved tape, read what `full` wrote, see writes refused
 *
 * URL is iscsi://host:port/iqn (no LUN). Prints "element ADDR TYPE BARCODE" for every full
 * element (before, with the tape loaded and after, for `full`, separated by "--"), "ok" at the
 * end; on a failed check prints
 * "FAIL: ..." and exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

static struct iscsi_context *iscsi;

#define CHANGER 0
/* The drive's LUN, from its element descriptor (LU VALID, LUN). */
static int DRIVE = 1;

struct result {
	int status;
	unsigned char data[1 << 20];
	int len;
	unsigned char sense[32];
	int sense_len;
	size_t residual;
	int underflow;
};
static struct result r;

static void fail(const char *what)
{
	printf("FAIL: %s\n", what);
	exit(1);
}

static void failf(const char *what, long a, long b)
{
	printf("FAIL: %s (got %ld, expected %ld)\n", what, a, b);
	exit(1);
}

/* Runs one CDB; dir 0 none, 1 read (len), 2 write (out, len). */
static int cmd(int lun, unsigned char *cdb, int cdb_len, int dir, unsigned char *out, int len)
{
	struct scsi_task *task;
	struct iscsi_data d;
	int xfer = dir == 1 ? SCSI_XFER_READ : dir == 2 ? SCSI_XFER_WRITE : SCSI_XFER_NONE;

	task = scsi_create_task(cdb_len, cdb, xfer, len);
	if (!task)
		fail("scsi_create_task");
	d.data = out;
	d.size = len;
	/* Data-In goes straight to r.data: with CHECK CONDITION libiscsi's datain holds the sense,
	 * and the data read before it (SSC-3 returns both) would be lost. */
	struct scsi_iovec iov = {r.data, (size_t)len};
	if (dir == 1) {
		if (len > (int)sizeof(r.data))
			fail("read longer than the buffer");
		memset(r.data, 0, len);
		scsi_task_set_iov_in(task, &iov, 1);
	}
	if (iscsi_scsi_command_sync(iscsi, lun, task, dir == 2 ? &d : NULL) == NULL) {
		printf("FAIL: transport: %s\n", iscsi_get_error(iscsi));
		exit(1);
	}
	r.status = task->status;
	r.len = 0;
	r.sense_len = 0;
	r.residual = task->residual;
	r.underflow = task->residual_status == SCSI_RESIDUAL_UNDERFLOW;
	if (task->status == SCSI_STATUS_CHECK_CONDITION) {
		/* libiscsi keeps the raw sense in datain after a 2-byte length (RFC 7143 11.4.7). */
		if (task->datain.size > 2) {
			r.sense_len = task->datain.size - 2;
			if (r.sense_len > (int)sizeof(r.sense))
				r.sense_len = sizeof(r.sense);
			memcpy(r.sense, task->datain.data + 2, r.sense_len);
		}
	}
	if (dir == 1)
		r.len = len - (r.underflow ? (int)r.residual : 0);
	scsi_free_scsi_task(task);
	return r.status;
}

static unsigned key(void) { return r.sense_len > 2 ? r.sense[2] & 0x0f : 0xff; }
static unsigned flags(void) { return r.sense_len > 2 ? r.sense[2] & 0xe0 : 0; }
static unsigned asc(void) { return r.sense_len > 13 ? r.sense[12] : 0xff; }
static unsigned ascq(void) { return r.sense_len > 13 ? r.sense[13] : 0xff; }
static int32_t info(void)
{
	if (r.sense_len < 7 || !(r.sense[0] & 0x80))
		return 0x7fffffff;
	return (int32_t)((uint32_t)r.sense[3] << 24 | r.sense[4] << 16 | r.sense[5] << 8 | r.sense[6]);
}

static void expect_good(const char *what)
{
	if (r.status != SCSI_STATUS_GOOD) {
		printf("FAIL: %s: status %d sense %x/%02x/%02x\n", what, r.status, key(), asc(), ascq());
		exit(1);
	}
}

/* Expects CHECK CONDITION with this key, flags, ASC/ASCQ and INFORMATION. */
static void expect_sense(const char *what, unsigned k, unsigned f, unsigned a, unsigned q, int32_t inf)
{
	if (r.status != SCSI_STATUS_CHECK_CONDITION || key() != k || flags() != f || asc() != a ||
	    ascq() != q || info() != inf) {
		printf("FAIL: %s: status %d sense %x flags %02x %02x/%02x info %d; expected %x %02x %02x/%02x %d\n",
		       what, r.status, key(), flags(), asc(), ascq(), info(), k, f, a, q, inf);
		exit(1);
	}
}

/* Test unit ready until GOOD, accepting unit attentions on the way. */
static void ready(int lun)
{
	unsigned char tur[6] = {0};
	for (int i = 0; i < 10; i++) {
		if (cmd(lun, tur, 6, 0, NULL, 0) == SCSI_STATUS_GOOD)
			return;
		if (key() != 6)
			break;
	}
	printf("FAIL: unit %d not ready: sense %x/%02x/%02x\n", lun, key(), asc(), ascq());
	exit(1);
}

static void fill(unsigned char *buf, int len, int seed)
{
	for (int i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 7 + seed * 13 + (i >> 9));
}

static unsigned char wbuf[1 << 20];
static unsigned char want[1 << 20];

static void write_record(int len, int seed)
{
	unsigned char cdb[6] = {0x0a, 0, len >> 16, len >> 8, len, 0};
	fill(wbuf, len, seed);
	cmd(DRIVE, cdb, 6, 2, wbuf, len);
	expect_good("WRITE(6)");
}

static void write_filemarks(int n)
{
	unsigned char cdb[6] = {0x10, 0, n >> 16, n >> 8, n, 0};
	cmd(DRIVE, cdb, 6, 0, NULL, 0);
	expect_good("WRITE FILEMARKS(6)");
}

static int read_record(int len, int sili)
{
	unsigned char cdb[6] = {0x08, sili ? 2 : 0, len >> 16, len >> 8, len, 0};
	return cmd(DRIVE, cdb, 6, 1, NULL, len);
}

/* Reads a record of `len` bytes asking for exactly that, and compares it. */
static void read_exact(int len, int seed, const char *what)
{
	read_record(len, 0);
	expect_good(what);
	fill(want, len, seed);
	if (r.len != len)
		failf(what, r.len, len);
	if (memcmp(r.data, want, len) != 0)
		fail(what);
}

static void rewind_tape(void)
{
	unsigned char cdb[6] = {0x01, 0, 0, 0, 0, 0};
	cmd(DRIVE, cdb, 6, 0, NULL, 0);
	expect_good("REWIND");
}

static void space(int code, int count)
{
	unsigned char cdb[6] = {0x11, code, (count >> 16) & 0xff, (count >> 8) & 0xff, count & 0xff, 0};
	cmd(DRIVE, cdb, 6, 0, NULL, 0);
}

/* READ POSITION long form: logical object number and file number. */
static void position(long *object, long *file)
{
	unsigned char cdb[10] = {0x34, 0x06, 0, 0, 0, 0, 0, 0, 32, 0};
	cmd(DRIVE, cdb, 10, 1, NULL, 32);
	expect_good("READ POSITION");
	*object = 0;
	*file = 0;
	for (int i = 8; i < 16; i++)
		*object = *object << 8 | r.data[i];
	for (int i = 16; i < 24; i++)
		*file = *file << 8 | r.data[i];
}

struct element {
	int addr, type, full, lun;
	char tag[33];
};
static struct element elements[2000];
static int n_elements;

static void element_status(void)
{
	unsigned char cdb[12] = {0xb8, 0x10, 0, 0, 0xff, 0xff, 0x01, 0x0f, 0xff, 0xff, 0, 0};
	cmd(CHANGER, cdb, 12, 1, NULL, 0x0fffff);
	expect_good("READ ELEMENT STATUS");
	n_elements = 0;
	int total = r.data[5] << 16 | r.data[6] << 8 | r.data[7];
	if (total + 8 != r.len)
		failf("element status length", r.len, total + 8);
	int at = 8;
	while (at < r.len) {
		int type = r.data[at];
		int dl = r.data[at + 2] << 8 | r.data[at + 3];
		int n = r.data[at + 5] << 16 | r.data[at + 6] << 8 | r.data[at + 7];
		if (!(r.data[at + 1] & 0x80))
			fail("PVOLTAG not set");
		for (int e = at + 8; e < at + 8 + n; e += dl) {
			struct element *el = &elements[n_elements++];
			el->addr = r.data[e] << 8 | r.data[e + 1];
			el->type = type;
			el->full = r.data[e + 2] & 1;
			el->lun = (r.data[e + 6] & 0x10) ? (r.data[e + 6] & 0x07) : -1;
			memcpy(el->tag, r.data + e + 12, 32);
			el->tag[32] = 0;
			for (int k = 31; k >= 0 && (el->tag[k] == ' ' || el->tag[k] == 0); k--)
				el->tag[k] = 0;
			if (el->full != (el->tag[0] != 0))
				fail("full flag and volume tag disagree");
		}
		at += 8 + n;
	}
}

static void print_elements(void)
{
	element_status();
	for (int i = 0; i < n_elements; i++)
		if (elements[i].full)
			printf("element %d %d %s\n", elements[i].addr, elements[i].type, elements[i].tag);
}

static void move_medium(int src, int dst)
{
	unsigned char cdb[12] = {0xa5, 0, 0, 0, src >> 8, src, dst >> 8, dst, 0, 0, 0, 0};
	cmd(CHANGER, cdb, 12, 0, NULL, 0);
}

static struct element *find(int type, int full)
{
	for (int i = 0; i < n_elements; i++)
		if (elements[i].type == type && elements[i].full == full)
			return &elements[i];
	fail("no such element");
	return NULL;
}

static int first(int type, int full)
{
	return find(type, full)->addr;
}

static int loaded_drive;

/* Loads the first tape in a storage slot into the first empty drive; returns the slot. */
static int load(void)
{
	element_status();
	int slot = first(2, 1);
	struct element *d = find(4, 0);
	int drive = d->addr;
	loaded_drive = drive;
	if (d->lun < 0)
		fail("the drive's element descriptor has no LU VALID");
	DRIVE = d->lun;
	move_medium(slot, drive);
	expect_good("MOVE MEDIUM slot to drive");
	/* The drive announces the new tape (UNIT ATTENTION 28/00), then is ready. */
	ready(DRIVE);
	return slot;
}

static const int sizes[] = {1000, 65536, 7, 300000, 512};

static void full(void)
{
	long object, file;
	unsigned char mode[12] = {0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 0};
	unsigned char select[6] = {0x15, 0x10, 0, 0, 12, 0};
	int slot = load();
	int drive = loaded_drive;
	printf("--\n");
	print_elements();

	/* Errors from the changer: source empty, destination full. */
	move_medium(first(2, 0), first(4, 0));
	expect_sense("MOVE from an empty slot", 5, 0, 0x3b, 0x0e, 0x7fffffff);
	move_medium(first(2, 1), drive);
	expect_sense("MOVE to a full drive", 5, 0, 0x3b, 0x0d, 0x7fffffff);

	cmd(DRIVE, select, 6, 2, mode, 12);
	expect_good("MODE SELECT variable blocks");
	for (int i = 0; i < 5; i++)
		write_record(sizes[i], i);
	write_filemarks(1);
	write_record(4096, 10);
	write_record(10, 11);
	write_filemarks(2);
	position(&object, &file);
	if (object != 10 || file != 3)
		failf("position after writing", object * 100 + file, 1003);

	rewind_tape();
	/* At the beginning, spacing back one block: NO SENSE, EOM, BEGINNING-OF-PARTITION. */
	space(0, -1);
	expect_sense("SPACE -1 at BOT", 0, 0x40, 0x00, 0x04, 1);
	read_exact(1000, 0, "record 1");
	/* Asking for less than the record: ILI, INFORMATION = asked - actual (negative). */
	read_record(1000, 0);
	expect_sense("short read of record 2", 0, 0x20, 0, 0, 1000 - 65536);
	fill(want, 65536, 1);
	if (r.len != 1000 || memcmp(r.data, want, 1000) != 0)
		fail("record 2: the first 1000 bytes come with the ILI sense");
	/* More than the record with SILI: GOOD, 7 bytes, underflow residual 93. */
	read_record(100, 1);
	expect_good("SILI read of record 3");
	if (!r.underflow || r.residual != 93)
		failf("residual of the SILI read", (long)r.residual, 93);
	fill(want, 7, 2);
	if (r.len != 7 || memcmp(r.data, want, 7) != 0)
		fail("record 3 data");
	read_exact(300000, 3, "record 4");
	/* More than the record without SILI: ILI with a positive residue. */
	read_record(600, 0);
	expect_sense("long read of record 5", 0, 0x20, 0, 0, 600 - 512);
	/* The filemark: NO SENSE, FILEMARK, residue = the whole request. */
	read_record(4096, 0);
	expect_sense("read at the filemark", 0, 0x80, 0, 1, 4096);

	/* Back over the filemark (lands before it), then two blocks back: record 4. */
	space(1, -1);
	expect_good("SPACE -1 filemark");
	space(0, -2);
	expect_good("SPACE -2 blocks");
	read_exact(300000, 3, "record 4 after SPACE");
	/* Forward over blocks into the filemark: stops after it, FILEMARK, residue 4. */
	space(0, 5);
	expect_sense("SPACE 5 blocks into the filemark", 0, 0x80, 0, 1, 4);
	read_exact(4096, 10, "record 6 after the filemark");

	/* LOCATE(10) to object 6 and LOCATE(16) to file 1 both reach record 6. */
	{
		unsigned char loc[10] = {0x2b, 0, 0, 0, 0, 0, 6, 0, 0, 0};
		cmd(DRIVE, loc, 10, 0, NULL, 0);
		expect_good("LOCATE(10)");
		read_exact(4096, 10, "record 6 after LOCATE(10)");
		read_exact(10, 11, "record 7");
		read_record(10, 0);
		expect_sense("filemark 2", 0, 0x80, 0, 1, 10);
		read_record(10, 0);
		expect_sense("filemark 3", 0, 0x80, 0, 1, 10);
		read_record(10, 0);
		expect_sense("end of data", 8, 0, 0, 5, 10);
	}
	{
		unsigned char loc[16] = {0x92, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
		cmd(DRIVE, loc, 16, 0, NULL, 0);
		expect_good("LOCATE(16) to file 1");
		read_exact(4096, 10, "record 6 after LOCATE(16)");
		loc[11] = 7;
		cmd(DRIVE, loc, 16, 0, NULL, 0);
		expect_sense("LOCATE(16) past the last file", 8, 0, 0, 5, 0x7fffffff);
	}
	space(3, 0);
	expect_good("SPACE to end of data");
	position(&object, &file);
	if (object != 10)
		failf("position at end of data", object, 10);
	space(1, 1);
	expect_sense("SPACE filemark past end of data", 8, 0, 0, 5, 1);

	/* Unload through the changer back to the slot it came from. */
	move_medium(drive, slot);
	expect_good("MOVE MEDIUM drive to slot");
	{
		unsigned char tur[6] = {0};
		cmd(DRIVE, tur, 6, 0, NULL, 0);
		expect_sense("drive without a tape", 2, 0, 0x3a, 0, 0x7fffffff);
	}
}

static void write_only(void)
{
	load();
	for (int i = 0; i < 5; i++)
		write_record(sizes[i], i);
	write_filemarks(1);
}

/* Loads a retrieved tape and reads what `full` wrote; a write must be refused. */
static void read_only(void)
{
	unsigned char sense6[6] = {0x1a, 0, 0, 0, 255, 0};
	load();
	cmd(DRIVE, sense6, 6, 1, NULL, 255);
	expect_good("MODE SENSE(6)");
	if (!(r.data[2] & 0x80))
		fail("WP not set for a retrieved tape");
	for (int i = 0; i < 5; i++)
		read_exact(sizes[i], i, "retrieved record");
	read_record(10, 0);
	expect_sense("retrieved filemark", 0, 0x80, 0, 1, 10);
	read_exact(4096, 10, "retrieved record 6");
	read_exact(10, 11, "retrieved record 7");
	{
		unsigned char cdb[6] = {0x0a, 0, 0, 0, 10, 0};
		cmd(DRIVE, cdb, 6, 2, wbuf, 10);
		expect_sense("a write to a retrieved tape", 7, 0, 0x27, 0, 0x7fffffff);
	}
}

/* Moves the first tape in a storage slot to the first mail slot: an eject. */
static void eject(void)
{
	element_status();
	move_medium(first(2, 1), first(3, 0));
	expect_good("MOVE MEDIUM slot to mail slot");
}

/* Moves the tape in the first full drive to the first empty storage slot. */
static void unload(void)
{
	element_status();
	move_medium(first(4, 1), first(2, 0));
	expect_good("MOVE MEDIUM drive to slot");
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Throughput: VTL_MIB MiB (default 1024) in VTL_BLOCK-byte variable records (default 256 KiB)
 * written, a filemark, rewound and read back; prints MB/s (10^6 bytes) of each. */
static void bench(void)
{
	int mib = getenv("VTL_MIB") ? atoi(getenv("VTL_MIB")) : 1024;
	int block = getenv("VTL_BLOCK") ? atoi(getenv("VTL_BLOCK")) : 256 << 10;
	long long total = (long long)mib << 20;
	long n = total / block;
	unsigned char mode[12] = {0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 0};
	unsigned char select[6] = {0x15, 0x10, 0, 0, 12, 0};
	if (block <= 0 || block > (int)sizeof(wbuf))
		fail("VTL_BLOCK out of range");
	cmd(DRIVE, select, 6, 2, mode, 12);
	expect_good("MODE SELECT variable blocks");
	rewind_tape();
	fill(wbuf, block, 5);
	double t0 = now();
	for (long i = 0; i < n; i++) {
		unsigned char cdb[6] = {0x0a, 0, block >> 16, block >> 8, block, 0};
		cmd(DRIVE, cdb, 6, 2, wbuf, block);
		expect_good("bench WRITE(6)");
	}
	write_filemarks(1);
	double t1 = now();
	rewind_tape();
	double t2 = now();
	for (long i = 0; i < n; i++) {
		read_record(block, 0);
		expect_good("bench READ(6)");
	}
	double t3 = now();
	printf("write_mbps %.1f\nread_mbps %.1f\n", n * (double)block / (t1 - t0) / 1e6,
	       n * (double)block / (t3 - t2) / 1e6);
}

/* Scale: VTL_CYCLES (default 10) loads and unloads, each choosing its tape and drive with a
 * READ ELEMENT STATUS over the whole library; prints the count of full storage slots, the time
 * of one element status and of the cycles. */
static void cycles(void)
{
	int n = getenv("VTL_CYCLES") ? atoi(getenv("VTL_CYCLES")) : 10;
	double t0 = now();
	element_status();
	double t1 = now();
	int tapes = 0;
	for (int i = 0; i < n_elements; i++)
		tapes += elements[i].type == 2 && elements[i].full;
	for (int i = 0; i < n; i++) {
		int slot = load();
		move_medium(loaded_drive, slot);
		expect_good("MOVE MEDIUM drive to slot");
	}
	printf("tapes %d\nelement_status_seconds %.3f\ncycles %d\ncycle_seconds %.3f\n", tapes,
	       t1 - t0, n, now() - t1);
}

static void verify(void)
{
	element_status();
	DRIVE = find(4, 1)->lun;
	if (DRIVE < 0)
		fail("the drive's element descriptor has no LU VALID");
	ready(DRIVE);
	rewind_tape();
	for (int i = 0; i < 5; i++)
		read_exact(sizes[i], i, "record after restart");
	read_record(10, 0);
	expect_sense("the acknowledged filemark", 0, 0x80, 0, 1, 10);
}

int main(int argc, char **argv)
{
	struct iscsi_url *url;

	if (argc != 3) {
		fprintf(stderr, "usage: %s iscsi://host:port/iqn full|write|verify|elements\n", argv[0]);
		return 2;
	}
	iscsi = iscsi_create_context("iqn.2026-11.org.tidegate:vtl-test");
	if (!iscsi)
		fail("iscsi_create_context");
	(void)url;
	{
		/* iscsi://host:port/iqn, split by hand: libiscsi's URL parsers want a LUN or none. */
		char portal[256], target[256];
		if (sscanf(argv[1], "iscsi://%255[^/]/%255s", portal, target) != 2)
			fail("bad URL");
		iscsi_set_targetname(iscsi, target);
		iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
		iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
		if (iscsi_full_connect_sync(iscsi, portal, CHANGER) != 0) {
			printf("FAIL: login: %s\n", iscsi_get_error(iscsi));
			return 1;
		}
	}
	if (getenv("VTL_LUN")) {
		/* A bare drive LUN with its tape loaded (tgt's VTL): no changer. */
		DRIVE = atoi(getenv("VTL_LUN"));
		ready(DRIVE);
		bench();
		printf("ok\n");
		return 0;
	}
	ready(CHANGER);
	if (!strcmp(argv[2], "bench")) {
		load();
		bench();
	} else if (!strcmp(argv[2], "elements")) {
		print_elements();
	} else if (!strcmp(argv[2], "full")) {
		print_elements();
		full();
		printf("--\n");
		print_elements();
	} else if (!strcmp(argv[2], "write")) {
		write_only();
	} else if (!strcmp(argv[2], "verify")) {
		verify();
	} else if (!strcmp(argv[2], "readonly")) {
		read_only();
	} else if (!strcmp(argv[2], "unload")) {
		unload();
	} else if (!strcmp(argv[2], "eject")) {
		eject();
	} else if (!strcmp(argv[2], "cycles")) {
		cycles();
	} else {
		fail("unknown mode");
	}
	iscsi_logout_sync(iscsi);
	iscsi_destroy_context(iscsi);
	printf("ok\n");
	return 0;
}
