/* internal.h - shared declarations of the LRDC decoder's modules (not part of the public API). */
#ifndef LRDC_INTERNAL_H
#define LRDC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define LRDC_MAX_HEADER ((size_t)16 << 20)
#define LRDC_MAX_TOTAL ((uint64_t)2 << 30) /* one ONNX protobuf cannot exceed 2 GiB */

/* Error sink: the first message wins (later ones are consequences). */
typedef struct {
    char *buf;
    size_t len;
    int set;
    int nomem;
} lrdc_err;

/* Record a formatted message; always returns -1 so callers can `return lrdc_fail(...)`. */
int lrdc_fail(lrdc_err *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
int lrdc_oom(lrdc_err *e);

/* Coders: decode payload[0..len) into out[0..n) (exactly n bytes) or fail. coder ids: 0 raw, 1 zstd, 2 rans,
 * 3 huffman, 4 planes, 5 rans16, 6 rans16ch. */
int lrdc_decode_stream(int coder, const uint8_t *payload, size_t len, uint8_t *out, size_t n, lrdc_err *e);
int lrdc_zstd(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);
int lrdc_huffman(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);
int lrdc_rans(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);
int lrdc_rans16(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);
int lrdc_rans16ch(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);

/* Minimal LEB128 of at most 10 bytes at p[*pos]; values >= 2**63 saturate to UINT64_MAX (never equal to a size). */
int lrdc_uleb(const uint8_t *p, size_t len, size_t *pos, uint64_t *v, const char *what, lrdc_err *e);

/* Raw DEFLATE stream p[0..len) that must inflate to exactly n bytes, end there and use every byte (inflate.c). */
int lrdc_inflate_exact(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e);
/* CRC-32/IEEE of p[0..n) continuing from crc (0 to start), as zlib.crc32. */
uint32_t lrdc_crc32(uint32_t crc, const uint8_t *p, size_t n);

/* SHA-256 of p[0..n). */
void lrdc_sha256(const uint8_t *p, size_t n, uint8_t digest[32]);

/* ---- header JSON (canonical form only) ---- */
enum { J_OBJ, J_ARR, J_STR, J_INT, J_HUGE, J_F3 };
typedef struct {
    int type;
    int64_t i;       /* J_INT value */
    size_t off, len; /* J_STR: decoded bytes in json->strs; J_OBJ/J_ARR: children in json->kids (objects: key, value) */
    size_t chars;    /* J_STR: length in code points (surrogate pairs count once) */
} jnode;
typedef struct {
    jnode *nodes;
    size_t nnodes, cap;
    size_t *kids;
    size_t nkids, kcap;
    size_t *pend;
    size_t npend, pcap;
    char *strs;
    size_t nstrs, scap;
} json_doc;
int lrdc_json_parse(const uint8_t *p, size_t n, json_doc *d, lrdc_err *e);
void lrdc_json_free(json_doc *d);

/* ---- ONNX rebuild ---- */
typedef struct {
    const char *name; /* decoded UTF-8 name (not NUL-terminated) */
    size_t name_len;
    int onnx_type;
    const int64_t *shape;
    size_t ndim;
    const uint8_t *data; /* little-endian bytes of the logical dtype */
    size_t nbytes;
} lrdc_tensor;
int lrdc_onnx_join(const uint8_t *graph, size_t glen, const lrdc_tensor *t, size_t nt, uint8_t **out, size_t *out_n,
                   lrdc_err *e);

#endif
