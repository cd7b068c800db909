/* lrdc.c - the container: prefix, sha256, header (canonical JSON in columns) and its schema, stream and record
 * tiling, decoding every stream, CRC32 per record, widening stored dtypes, then the ONNX rebuild (onnx.c).
 * Mirrors pipeline/entropy/container.py (read_container + unpack_to_onnx); docs/lrdc-format.md is the spec. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lrdc.h"

#define PREFIX 15
#define TRAILER 32
#define MAX_NDIM 32
#define MAX_NAME_CHARS 4096
#define GRAPH_KEY "__lrdc_graph__"

typedef struct {
    const char *name;
    int onnx;
    unsigned size;
} dtype_info;

/* numpy dtype name -> ONNX TensorProto type and item size. */
static const dtype_info DTYPES[] = {
    {"float32", 1, 4}, {"uint8", 2, 1},  {"int8", 3, 1},     {"uint16", 4, 2},   {"int16", 5, 2},  {"int32", 6, 4},
    {"int64", 7, 8},   {"bool", 9, 1},   {"float16", 10, 2}, {"float64", 11, 8}, {"uint32", 12, 4}, {"uint64", 13, 8},
};
#define NDTYPES (sizeof DTYPES / sizeof DTYPES[0])

typedef struct {
    int64_t coder, offset, length, nbytes;
} stream_t;

typedef struct {
    const char *name;
    size_t name_len;
    int dtype, stored; /* indices into DTYPES */
    size_t shape_node; /* the shape array's node */
    size_t ndim;
    int64_t stream, start, nbytes, crc32;
} record_t;

static const jnode *node(const json_doc *d, size_t id) { return &d->nodes[id]; }
static size_t kid(const json_doc *d, size_t id, size_t j) { return d->kids[d->nodes[id].off + j]; }

static int str_is(const json_doc *d, size_t id, const char *s) {
    const jnode *n = node(d, id);
    return n->type == J_STR && n->len == strlen(s) && memcmp(d->strs + n->off, s, n->len) == 0;
}

static int dtype_of(const json_doc *d, size_t id) {
    size_t j;
    for (j = 0; j < NDTYPES; j++)
        if (str_is(d, id, DTYPES[j].name)) return (int)j;
    return -1;
}

static int narrowing_ok(int dtype, int stored) {
    const char *a = DTYPES[dtype].name, *b = DTYPES[stored].name;
    if (dtype == stored) return 1;
    if (!strcmp(a, "float32")) return !strcmp(b, "float16");
    if (!strcmp(a, "int64")) return !strcmp(b, "int32") || !strcmp(b, "int16") || !strcmp(b, "int8");
    if (!strcmp(a, "int32")) return !strcmp(b, "int16") || !strcmp(b, "int8");
    return 0;
}

/* Object `id` must have exactly the keys `keys` (sorted, as canonical JSON stores them); values into vals. */
static int exact_keys(const json_doc *d, size_t id, const char *const *keys, size_t nk, size_t *vals, const char *what,
                      lrdc_err *e) {
    size_t j;
    const jnode *n = node(d, id);
    if (n->type != J_OBJ || n->len != 2 * nk) return lrdc_fail(e, "LRDC header %s must be an object with exactly its fields", what);
    for (j = 0; j < nk; j++) {
        if (!str_is(d, kid(d, id, 2 * j), keys[j])) return lrdc_fail(e, "LRDC header %s has unknown or missing fields", what);
        vals[j] = kid(d, id, 2 * j + 1);
    }
    return 0;
}

/* Integer node in [lo, hi]. */
static int int_in(const json_doc *d, size_t id, int64_t lo, int64_t hi, int64_t *v) {
    const jnode *n = node(d, id);
    if (n->type != J_INT || n->i < lo || n->i > hi) return 0;
    *v = n->i;
    return 1;
}

/* Columns: every value an array, all of one length >= 1. */
static int columns(const json_doc *d, const size_t *cols, size_t nc, size_t *len, const char *what, lrdc_err *e) {
    size_t j;
    for (j = 0; j < nc; j++)
        if (node(d, cols[j])->type != J_ARR || node(d, cols[j])->len != node(d, cols[0])->len)
            return lrdc_fail(e, "LRDC header %s columns must be lists of one length (at least 1)", what);
    *len = node(d, cols[0])->len;
    if (*len < 1) return lrdc_fail(e, "LRDC header %s columns must be lists of one length (at least 1)", what);
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    const record_t *x = *(const record_t *const *)a, *y = *(const record_t *const *)b;
    size_t m = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, m);
    if (c) return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

/* numpy's float16 -> float32 (npy_halfbits_to_floatbits): exact, NaN payloads kept, signalling NaNs not quieted. */
static uint32_t half_to_float(uint16_t h) {
    uint32_t sgn = (uint32_t)(h & 0x8000u) << 16, hexp = h & 0x7C00u, sig = h & 0x03FFu;
    if (hexp == 0) {
        uint32_t e = 0;
        if (!sig) return sgn;
        sig <<= 1;
        while (!(sig & 0x400u)) { sig <<= 1; e++; }
        return sgn + ((127 - 15 - e) << 23) + ((sig & 0x3FFu) << 13);
    }
    if (hexp == 0x7C00u) return sgn + 0x7F800000u + (sig << 13);
    return sgn + (((uint32_t)(h & 0x7FFFu) + 0x1C000u) << 13);
}

/* Stored little-endian bytes -> the logical dtype's little-endian bytes (dst holds count * logical size). */
static void widen(const uint8_t *src, uint8_t *dst, size_t count, const dtype_info *from, const dtype_info *to) {
    size_t i;
    unsigned b;
    if (from == to) { if (count) memcpy(dst, src, count * from->size); return; }
    if (!strcmp(from->name, "float16")) {
        for (i = 0; i < count; i++) {
            uint32_t f = half_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
            for (b = 0; b < 4; b++) dst[4 * i + b] = (uint8_t)(f >> (8 * b));
        }
        return;
    }
    for (i = 0; i < count; i++) { /* signed integer narrowing: sign-extend */
        const uint8_t *s = src + i * from->size;
        uint8_t fill = (s[from->size - 1] & 0x80) ? 0xFF : 0x00;
        for (b = 0; b < to->size; b++) dst[i * to->size + b] = b < from->size ? s[b] : fill;
    }
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static int decode(const uint8_t *in, size_t n, uint8_t **out, size_t *out_n, lrdc_err *e) {
    static const char *const TOP[] = {"format", "producer", "records", "streams", "version", "zstd_level"};
    static const char *const SCOLS[] = {"coder", "length", "nbytes", "offset"};
    static const char *const RCOLS[] = {"crc32", "dtype", "name", "nbytes", "shape", "start", "stored_dtype", "stream"};
    uint32_t hlen, clen;
    uint8_t digest[32], *hraw = NULL, **bufs = NULL, *logical = NULL;
    json_doc d;
    size_t top[6], sc[4], rc[8], ns, nr, j, r, start, area;
    stream_t *st = NULL;
    record_t *rec = NULL, **byname = NULL;
    lrdc_tensor *tens = NULL;
    int64_t *shapes = NULL, *filled = NULL;
    unsigned char *used = NULL;
    uint64_t total = 0, off = 0, logical_total = 0;
    int ret = -1;
    memset(&d, 0, sizeof d);

    /* ---- prefix, trailer */
    if (n < PREFIX + TRAILER) return lrdc_fail(e, "container is %lu bytes, shorter than the minimal %d; truncated?", (unsigned long)n, PREFIX + TRAILER);
    if (memcmp(in, "LRDC", 4)) return lrdc_fail(e, "not an LRDC container (bad magic)");
    if ((in[4] | in[5] << 8) != LRDC_FORMAT_VERSION)
        return lrdc_fail(e, "LRDC version %d is not supported by this decoder (supports %d); re-pack the model", in[4] | in[5] << 8, LRDC_FORMAT_VERSION);
    hlen = rd32(in + 6);
    clen = rd32(in + 11);
    if (hlen < 1 || hlen > LRDC_MAX_HEADER) return lrdc_fail(e, "LRDC header length %lu outside 1..%lu", (unsigned long)hlen, (unsigned long)LRDC_MAX_HEADER);
    if (in[10] > 1) return lrdc_fail(e, "LRDC header coder %u is not one of (0, 1) (raw, zstd)", in[10]);
    if (clen < 1 || clen > n - TRAILER - PREFIX) return lrdc_fail(e, "LRDC coded header length %lu outside 1..%lu (the bytes available); truncated file?", (unsigned long)clen, (unsigned long)(n - PREFIX - TRAILER));
    lrdc_sha256(in, n - TRAILER, digest);
    if (memcmp(digest, in + n - TRAILER, 32)) return lrdc_fail(e, "LRDC sha256 mismatch: the file is corrupt, truncated or was modified");

    /* ---- header */
    hraw = (uint8_t *)malloc(hlen);
    if (!hraw) return lrdc_oom(e);
    if (lrdc_decode_stream(in[10], in + PREFIX, clen, hraw, hlen, e)) goto done;
    if (lrdc_json_parse(hraw, hlen, &d, e)) goto done;
    if (exact_keys(&d, 0, TOP, 6, top, "", e)) goto done;
    if (!str_is(&d, top[0], "LRDC") || !((node(&d, top[4])->type == J_INT && node(&d, top[4])->i == LRDC_FORMAT_VERSION) || node(&d, top[4])->type == J_F3)) {
        lrdc_fail(e, "LRDC header format/version disagree with the file prefix");
        goto done;
    }
    if (node(&d, top[1])->type != J_STR || node(&d, top[1])->chars > 1024) { lrdc_fail(e, "LRDC header producer must be a string of <= 1024 chars"); goto done; }
    {
        int64_t lvl;
        if (!int_in(&d, top[5], -131072, 22, &lvl)) { lrdc_fail(e, "container header: zstd_level must be an integer in [-131072, 22]"); goto done; }
    }
    /* streams */
    if (exact_keys(&d, top[3], SCOLS, 4, sc, "streams", e) || columns(&d, sc, 4, &ns, "streams", e)) goto done;
    st = (stream_t *)calloc(ns, sizeof *st);
    if (!st) { lrdc_oom(e); goto done; }
    for (j = 0; j < ns; j++) {
        if (!int_in(&d, kid(&d, sc[0], j), 0, 255, &st[j].coder) || !int_in(&d, kid(&d, sc[1], j), 0, INT64_MAX, &st[j].length) ||
            !int_in(&d, kid(&d, sc[2], j), 0, INT64_MAX, &st[j].nbytes) || !int_in(&d, kid(&d, sc[3], j), 0, INT64_MAX, &st[j].offset)) {
            lrdc_fail(e, "container header: streams[%lu] has a field that is not an integer in range", (unsigned long)j);
            goto done;
        }
    }
    /* records */
    if (exact_keys(&d, top[2], RCOLS, 8, rc, "records", e) || columns(&d, rc, 8, &nr, "records", e)) goto done;
    rec = (record_t *)calloc(nr, sizeof *rec);
    if (!rec) { lrdc_oom(e); goto done; }
    for (r = 0; r < nr; r++) {
        record_t *x = &rec[r];
        size_t nm = kid(&d, rc[2], r), sh = kid(&d, rc[4], r), q;
        uint64_t prod = 1;
        int zero = 0, overflow = 0;
        if (node(&d, nm)->type != J_STR || node(&d, nm)->chars < 1 || node(&d, nm)->chars > MAX_NAME_CHARS) {
            lrdc_fail(e, "container header: records[%lu] name must be a non-empty string of <= %d chars", (unsigned long)r, MAX_NAME_CHARS);
            goto done;
        }
        x->name = d.strs + node(&d, nm)->off;
        x->name_len = node(&d, nm)->len;
        x->dtype = dtype_of(&d, kid(&d, rc[1], r));
        x->stored = dtype_of(&d, kid(&d, rc[6], r));
        if (x->dtype < 0 || x->stored < 0 || !narrowing_ok(x->dtype, x->stored)) {
            lrdc_fail(e, "container header: records[%lu] has an unsupported dtype or storage", (unsigned long)r);
            goto done;
        }
        if (node(&d, sh)->type != J_ARR || node(&d, sh)->len > MAX_NDIM) {
            lrdc_fail(e, "container header: records[%lu] shape must be a list of <= %d dims", (unsigned long)r, MAX_NDIM);
            goto done;
        }
        x->shape_node = sh;
        x->ndim = node(&d, sh)->len;
        for (q = 0; q < x->ndim; q++) {
            int64_t dim;
            if (!int_in(&d, kid(&d, sh, q), 0, (int64_t)LRDC_MAX_TOTAL, &dim)) {
                lrdc_fail(e, "container header: records[%lu] shape entry must be an integer in [0, %lu]", (unsigned long)r, (unsigned long)LRDC_MAX_TOTAL);
                goto done;
            }
            if (dim == 0) zero = 1;
            else if (prod > UINT64_MAX / (uint64_t)dim) overflow = 1;
            else prod *= (uint64_t)dim;
        }
        if (!int_in(&d, kid(&d, rc[7], r), 0, INT64_MAX, &x->stream) || !int_in(&d, kid(&d, rc[5], r), 0, INT64_MAX, &x->start) ||
            !int_in(&d, kid(&d, rc[3], r), 0, INT64_MAX, &x->nbytes) || !int_in(&d, kid(&d, rc[0], r), 0, 0xFFFFFFFFll, &x->crc32)) {
            lrdc_fail(e, "container header: records[%lu] stream/start/nbytes/crc32 must be non-negative integers", (unsigned long)r);
            goto done;
        }
        if (zero) prod = 0;
        else if (overflow || prod > UINT64_MAX / DTYPES[x->stored].size) prod = UINT64_MAX;
        else prod *= DTYPES[x->stored].size;
        if (prod == UINT64_MAX || (uint64_t)x->nbytes != prod) {
            lrdc_fail(e, "container header: records[%lu] nbytes != prod(shape) * itemsize", (unsigned long)r);
            goto done;
        }
    }
    if (rec[0].name_len != strlen(GRAPH_KEY) || memcmp(rec[0].name, GRAPH_KEY, rec[0].name_len)) { lrdc_fail(e, "LRDC record 0 must be the graph, named '" GRAPH_KEY "'"); goto done; }
    if (strcmp(DTYPES[rec[0].dtype].name, "uint8") || rec[0].stored != rec[0].dtype || rec[0].ndim != 1) { lrdc_fail(e, "LRDC graph record must be a 1-D uint8 byte string"); goto done; }
    byname = (record_t **)malloc(nr * sizeof *byname);
    if (!byname) { lrdc_oom(e); goto done; }
    for (r = 0; r < nr; r++) byname[r] = &rec[r];
    qsort(byname + 1, nr - 1, sizeof *byname, cmp_name);
    for (r = 1; r < nr; r++) {
        if ((byname[r]->name_len == rec[0].name_len && !memcmp(byname[r]->name, rec[0].name, rec[0].name_len)) ||
            (r > 1 && !cmp_name(&byname[r - 1], &byname[r]))) {
            lrdc_fail(e, "LRDC tensor names must be unique and not '" GRAPH_KEY "'");
            goto done;
        }
    }
    /* payload tiling */
    start = PREFIX + clen;
    area = n - TRAILER - start;
    for (j = 0; j < ns; j++) {
        if ((uint64_t)st[j].offset != off) { lrdc_fail(e, "LRDC stream %lu: offset is not where the previous one ends (payloads must be sorted and contiguous)", (unsigned long)j); goto done; }
        if ((uint64_t)st[j].length > area - off) { lrdc_fail(e, "LRDC stream %lu: length runs past the payload area", (unsigned long)j); goto done; }
        off += (uint64_t)st[j].length;
    }
    if (off != area) { lrdc_fail(e, "LRDC payload area has %lu bytes not covered by any stream", (unsigned long)(area - off)); goto done; }
    filled = (int64_t *)calloc(ns, sizeof *filled);
    used = (unsigned char *)calloc(ns, 1);
    if (!filled || !used) { lrdc_oom(e); goto done; }
    for (r = 0; r < nr; r++) {
        int64_t s = rec[r].stream;
        if ((uint64_t)s >= ns) { lrdc_fail(e, "LRDC record %lu: stream %lld does not exist (%lu streams)", (unsigned long)r, (long long)s, (unsigned long)ns); goto done; }
        if (rec[r].start != filled[s]) { lrdc_fail(e, "LRDC record %lu: does not start where the previous record of its stream ends", (unsigned long)r); goto done; }
        if (rec[r].nbytes > (int64_t)LRDC_MAX_TOTAL || filled[s] > (int64_t)LRDC_MAX_TOTAL) { lrdc_fail(e, "LRDC tensors would decode to more than the %lu-byte cap", (unsigned long)LRDC_MAX_TOTAL); goto done; }
        filled[s] += rec[r].nbytes;
        used[s] = 1;
    }
    for (j = 0; j < ns; j++) {
        if (filled[j] != st[j].nbytes || !used[j]) { lrdc_fail(e, "LRDC stream %lu: its records do not cover it exactly (or no record uses it)", (unsigned long)j); goto done; }
        total += (uint64_t)st[j].nbytes;
        if (total > LRDC_MAX_TOTAL) { lrdc_fail(e, "LRDC tensors would decode to more than the %lu-byte cap", (unsigned long)LRDC_MAX_TOTAL); goto done; }
    }

    /* ---- streams, CRC32s */
    bufs = (uint8_t **)calloc(ns, sizeof *bufs);
    if (!bufs) { lrdc_oom(e); goto done; }
    for (j = 0; j < ns; j++) {
        bufs[j] = (uint8_t *)malloc(st[j].nbytes ? (size_t)st[j].nbytes : 1);
        if (!bufs[j]) { lrdc_oom(e); goto done; }
        if (lrdc_decode_stream((int)st[j].coder, in + start + st[j].offset, (size_t)st[j].length, bufs[j], (size_t)st[j].nbytes, e)) goto done;
    }
    for (r = 0; r < nr; r++) {
        const uint8_t *b = bufs[rec[r].stream] + rec[r].start;
        size_t nb = (size_t)rec[r].nbytes, q;
        uint32_t c = lrdc_crc32(0, b, nb);
        if (c != (uint32_t)rec[r].crc32) { lrdc_fail(e, "LRDC record '%.*s': CRC32 mismatch after decoding (corrupt payload)", (int)(rec[r].name_len > 200 ? 200 : rec[r].name_len), rec[r].name); goto done; }
        if (!strcmp(DTYPES[rec[r].stored].name, "bool"))
            for (q = 0; q < nb; q++)
                if (b[q] > 1) { lrdc_fail(e, "LRDC record '%.*s': bool tensor holds values other than 0/1", (int)(rec[r].name_len > 200 ? 200 : rec[r].name_len), rec[r].name); goto done; }
        logical_total += nb / DTYPES[rec[r].stored].size * DTYPES[rec[r].dtype].size;
    }
    if (logical_total > ((uint64_t)0x7FFFFFFF)) { lrdc_fail(e, "rebuilt ONNX model would exceed protobuf's 2 GiB limit"); goto done; }

    /* ---- tensors in their logical dtype, then the ONNX model */
    logical = (uint8_t *)malloc(logical_total ? (size_t)logical_total : 1);
    tens = (lrdc_tensor *)calloc(nr, sizeof *tens);
    {
        size_t dims = 0; /* at most one per header byte: no overflow */
        for (r = 0; r < nr; r++) dims += rec[r].ndim;
        shapes = (int64_t *)calloc(dims + 1, sizeof *shapes);
    }
    if (!logical || !tens || !shapes) { lrdc_oom(e); goto done; }
    {
        size_t at = 0, dim_at = 0;
        for (r = 1; r < nr; r++) {
            const record_t *x = &rec[r];
            lrdc_tensor *t = &tens[r - 1];
            size_t count = (size_t)x->nbytes / DTYPES[x->stored].size, q;
            for (q = 0; q < x->ndim; q++) shapes[dim_at + q] = node(&d, kid(&d, x->shape_node, q))->i;
            t->name = x->name;
            t->name_len = x->name_len;
            t->onnx_type = DTYPES[x->dtype].onnx;
            t->shape = shapes + dim_at;
            dim_at += x->ndim;
            t->ndim = x->ndim;
            t->data = logical + at;
            t->nbytes = count * DTYPES[x->dtype].size;
            widen(bufs[x->stream] + x->start, logical + at, count, &DTYPES[x->stored], &DTYPES[x->dtype]);
            at += t->nbytes;
        }
    }
    ret = lrdc_onnx_join(bufs[rec[0].stream] + rec[0].start, (size_t)rec[0].nbytes, tens, nr - 1, out, out_n, e);
done:
    if (bufs) for (j = 0; j < ns; j++) free(bufs[j]);
    free(bufs);
    free(hraw);
    free(st);
    free(rec);
    free(byname);
    free(tens);
    free(shapes);
    free(filled);
    free(used);
    free(logical);
    lrdc_json_free(&d);
    return ret;
}

int lrdc_decode(const uint8_t *in, size_t n, uint8_t **out, size_t *out_n, char *err, size_t errlen) {
    lrdc_err e;
    uint8_t *o = NULL;
    size_t on = 0;
    e.buf = err; e.len = errlen; e.set = 0; e.nomem = 0;
    if (err && errlen) err[0] = 0;
    if (!out || !out_n || (!in && n)) {
        lrdc_fail(&e, "lrdc_decode: NULL argument");
        return LRDC_EINVALID;
    }
    *out = NULL;
    *out_n = 0;
    if ((uint64_t)n > LRDC_MAX_INPUT_BYTES) {
        lrdc_fail(&e, "container of %lu bytes is larger than any container this decoder accepts", (unsigned long)n);
        return LRDC_EINVALID;
    }
    if (decode(in, n, &o, &on, &e)) {
        free(o);
        return e.nomem ? LRDC_ENOMEM : LRDC_EINVALID;
    }
    *out = o;
    *out_n = on;
    return LRDC_OK;
}

void lrdc_free(uint8_t *p) { free(p); }
