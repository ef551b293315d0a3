/* The file benchmark's client (benches/files.sh): writes and reads the same data set through
 * an NFS export with libnfs (one connection, one mount for every file) or through a local
 * directory (a FUSE mount of rclone or s3fs) with plain POSIX calls. Either way it is one
 * thread doing one file after another with 1 MiB requests, so the two sides get the same
 * client behaviour:
 *   NFS:   CREATE, WRITE (UNSTABLE) ..., COMMIT (libnfs's close sends it) -- what a kernel
 *          client sends for open/write/close.
 *   POSIX: open(O_CREAT|O_TRUNC), write ..., close -- the kernel's FUSE client does the rest.
 * File contents come from a seeded PRNG (no source file is read, so its disk does not count)
 * and reads are checked against them byte for byte.
 *
 * Usage:
 *   files-client write-big  TARGET SIZE_MIB SEED
 *   files-client read-big   TARGET SIZE_MIB SEED
 *   files-client write-small TARGET COUNT SEED
 *   files-client read-small  TARGET COUNT SEED
 *   files-client manifest    COUNT SEED SIZE_MIB   (prints "relative/path size" per file)
 * Metadata alone, on the small files' names (benches/nfs-cache.sh), one call each in turn:
 *   files-client create-empty TARGET COUNT SEED  (CREATE, no data)
 *   files-client stat-small   TARGET COUNT SEED  (GETATTR by path)
 *   files-client remove-small TARGET COUNT SEED  (REMOVE)
 * TARGET is nfs://HOST/EXPORT?nfsport=N&mountport=N or a directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nfsc/libnfs.h>

#define IO_BYTES (1u << 20)
#define FILES_PER_DIR 100
#define SMALL_MIN (4u << 10)
#define SMALL_MAX (64u << 10)

static struct nfs_context *nfs;
static const char *root;

static void die(const char *what, const char *path, const char *detail)
{
    fprintf(stderr, "files-client: %s %s: %s\n", what, path, detail);
    exit(1);
}

/* xorshift64*: fast enough that generating data never limits the client. */
static uint64_t next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void fill(uint64_t *s, unsigned char *buf, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = next(s);
        memcpy(buf + i, &v, 8);
    }
    for (; i < n; i++)
        buf[i] = (unsigned char)next(s);
}

static uint64_t seed_of(uint64_t seed, uint64_t file)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + file + 1;
    return s ? s : 1;
}

static uint32_t small_size(uint64_t seed, uint64_t i)
{
    uint64_t s = seed_of(seed ^ 0x5151, i);
    return SMALL_MIN + (uint32_t)(next(&s) % (SMALL_MAX - SMALL_MIN + 1));
}

static void small_path(char *out, size_t n, uint64_t i)
{
    snprintf(out, n, "small/d%03" PRIu64 "/f%05" PRIu64, i / FILES_PER_DIR, i);
}

/* One open file on either side. */
struct handle {
    struct nfsfh *fh;
    int fd;
    const char *path;
};

static void full_path(char *out, size_t n, const char *rel)
{
    if (nfs)
        snprintf(out, n, "/%s", rel);
    else
        snprintf(out, n, "%s/%s", root, rel);
}

static void make_dir(const char *rel)
{
    char p[4096];
    full_path(p, sizeof p, rel);
    int rc = nfs ? nfs_mkdir(nfs, p) : (mkdir(p, 0755) ? -errno : 0);
    if (rc && rc != -EEXIST)
        die("mkdir", p, nfs ? nfs_get_error(nfs) : strerror(-rc));
}

static struct handle open_file(const char *rel, int writing)
{
    static char p[4096];
    full_path(p, sizeof p, rel);
    struct handle h = { NULL, -1, p };
    if (nfs) {
        int rc = writing ? nfs_create(nfs, p, O_TRUNC, 0644, &h.fh) : nfs_open(nfs, p, O_RDONLY, &h.fh);
        if (rc)
            die(writing ? "create" : "open", p, nfs_get_error(nfs));
    } else {
        h.fd = writing ? open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(p, O_RDONLY);
        if (h.fd < 0)
            die(writing ? "create" : "open", p, strerror(errno));
    }
    return h;
}

static void write_at(struct handle *h, uint64_t off, const unsigned char *buf, size_t n)
{
    while (n) {
        long rc = nfs ? nfs_pwrite(nfs, h->fh, off, n, buf) : pwrite(h->fd, buf, n, (off_t)off);
        if (rc <= 0)
            die("write", h->path, nfs ? nfs_get_error(nfs) : strerror(errno));
        off += (uint64_t)rc;
        buf += rc;
        n -= (size_t)rc;
    }
}

static size_t read_at(struct handle *h, uint64_t off, unsigned char *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        long rc = nfs ? nfs_pread(nfs, h->fh, off + done, n - done, buf + done)
                      : pread(h->fd, buf + done, n - done, (off_t)(off + done));
        if (rc < 0)
            die("read", h->path, nfs ? nfs_get_error(nfs) : strerror(errno));
        if (rc == 0)
            break;
        done += (size_t)rc;
    }
    return done;
}

static void close_file(struct handle *h, int writing)
{
    if (nfs) {
        /* libnfs's close sends COMMIT for a file it wrote, as a kernel client does on close(2). */
        (void)writing;
        if (nfs_close(nfs, h->fh))
            die("close", h->path, nfs_get_error(nfs));
    } else if (close(h->fd)) {
        die("close", h->path, strerror(errno));
    }
}

/* Writes (or reads and checks) one file of `size` bytes whose content comes from `s`. */
static void one_file(const char *rel, uint64_t size, uint64_t s, int writing,
                     unsigned char *buf, unsigned char *got)
{
    struct handle h = open_file(rel, writing);
    for (uint64_t off = 0; off < size; off += IO_BYTES) {
        size_t n = size - off < IO_BYTES ? (size_t)(size - off) : IO_BYTES;
        fill(&s, buf, n);
        if (writing) {
            write_at(&h, off, buf, n);
        } else if (read_at(&h, off, got, n) != n || memcmp(buf, got, n)) {
            die("verify", h.path, "content differs from what was written");
        }
    }
    if (!writing && read_at(&h, size, got, 1) != 0)
        die("verify", h.path, "longer than what was written");
    close_file(&h, writing);
}

/* One metadata call per small file's name: create (empty, as a new file), stat or remove. */
static void metadata(const char *mode, uint64_t count)
{
    char rel[256], p[4096];
    if (!strcmp(mode, "create-empty"))
        make_dir("small");
    for (uint64_t i = 0; i < count; i++) {
        if (!strcmp(mode, "create-empty") && i % FILES_PER_DIR == 0) {
            snprintf(rel, sizeof rel, "small/d%03" PRIu64, i / FILES_PER_DIR);
            make_dir(rel);
        }
        small_path(rel, sizeof rel, i);
        full_path(p, sizeof p, rel);
        int rc;
        if (!strcmp(mode, "create-empty")) {
            struct nfsfh *fh;
            rc = nfs ? nfs_create(nfs, p, O_TRUNC, 0644, &fh) : 0;
            if (!rc && nfs)
                rc = nfs_close(nfs, fh);
            if (!nfs) {
                int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                rc = fd < 0 ? -errno : close(fd);
            }
        } else if (!strcmp(mode, "stat-small")) {
            struct nfs_stat_64 st;
            struct stat lst;
            rc = nfs ? nfs_stat64(nfs, p, &st) : (stat(p, &lst) ? -errno : 0);
        } else {
            rc = nfs ? nfs_unlink(nfs, p) : (unlink(p) ? -errno : 0);
        }
        if (rc)
            die(mode, p, nfs ? nfs_get_error(nfs) : strerror(-rc));
    }
}

static void connect_nfs(const char *url)
{
    nfs = nfs_init_context();
    if (!nfs)
        die("init", url, "no libnfs context");
    struct nfs_url *u = nfs_parse_url_dir(nfs, url);
    if (!u)
        die("parse", url, nfs_get_error(nfs));
    if (nfs_mount(nfs, u->server, u->path))
        die("mount", url, nfs_get_error(nfs));
    nfs_destroy_url(u);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: files-client write-big|read-big|write-small|read-small TARGET N SEED\n"
                        "       files-client manifest COUNT SEED SIZE_MIB\n");
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "manifest")) {
        uint64_t count = strtoull(argv[2], NULL, 10), seed = strtoull(argv[3], NULL, 10);
        uint64_t big = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
        char p[256];
        if (big)
            printf("big.bin %" PRIu64 "\n", big << 20);
        for (uint64_t i = 0; i < count; i++) {
            small_path(p, sizeof p, i);
            printf("%s %u\n", p, small_size(seed, i));
        }
        return 0;
    }
    if (argc < 5) {
        fprintf(stderr, "files-client %s: give TARGET N SEED\n", mode);
        return 2;
    }
    const char *target = argv[2];
    uint64_t n = strtoull(argv[3], NULL, 10), seed = strtoull(argv[4], NULL, 10);
    if (!strncmp(target, "nfs://", 6))
        connect_nfs(target);
    else
        root = target;
    unsigned char *buf = malloc(IO_BYTES), *got = malloc(IO_BYTES);
    if (!buf || !got)
        die("alloc", "buffers", "out of memory");
    int writing = !strncmp(mode, "write", 5);
    if (!strcmp(mode, "create-empty") || !strcmp(mode, "stat-small") || !strcmp(mode, "remove-small")) {
        metadata(mode, n);
    } else if (!strcmp(mode, "write-big") || !strcmp(mode, "read-big")) {
        one_file("big.bin", n << 20, seed_of(seed, UINT64_MAX - 1), writing, buf, got);
    } else if (!strcmp(mode, "write-small") || !strcmp(mode, "read-small")) {
        char p[256];
        if (writing)
            make_dir("small");
        for (uint64_t i = 0; i < n; i++) {
            if (writing && i % FILES_PER_DIR == 0) {
                snprintf(p, sizeof p, "small/d%03" PRIu64, i / FILES_PER_DIR);
                make_dir(p);
            }
            small_path(p, sizeof p, i);
            one_file(p, small_size(seed, i), seed_of(seed, i), writing, buf, got);
        }
    } else {
        fprintf(stderr, "files-client: unknown mode %s\n", mode);
        return 2;
    }
    if (nfs)
        nfs_destroy_context(nfs);
    return 0;
}
