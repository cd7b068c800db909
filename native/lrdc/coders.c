/* coders.c - the byte coders raw (0), zstd (1), huffman (3) and planes (4), the stream dispatcher, LEB128 and the
 * error sink. The rANS family (2, 5, 6) is in rans.c. Every decoder produces exactly n bytes or fails, and accepts
 * exactly the payloads the Python reference accepts (pipeline/entropy/coders.py). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "internal.h"

int lrdc_fail(lrdc_err *e, const char *fmt, ...) {
    if (!e->set && e->buf && e->len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->buf, e->len, fmt, ap);
        va_end(ap);
    }
    e->set = 1;
    return -1;
}

int lrdc_oom(lrdc_err *e) {
    if (!e->set) e->nomem = 1;
    return lrdc_fail(e, "out of memory");
}

int lrdc_uleb(const uint8_t *p, size_t len, size_t *pos, uint64_t *v, const char *what, lrdc_err *e) {
    uint64_t value = 0;
    int i, big = 0;
    for (i = 0; i < 10; i++) {
        uint8_t b;
        if (*pos + (size_t)i >= len) break;
        b = p[*pos + (size_t)i];
        if (i == 9 ? (b & 0x7F) != 0 : (i == 8 && (b & 0x40))) big = 1; /* >= 2**63: no size is that large */
        else value |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            if (b == 0 && i) return lrdc_fail(e, "%s: symbol count is not minimally encoded", what);
            *v = big ? UINT64_MAX : value;
            *pos += (size_t)i + 1;
            return 0;
        }
    }
    return lrdc_fail(e, "%s: truncated or over-long symbol count", what);
}

/* ---------------------------------------------------------------------------------------------------- zstd */
int lrdc_zstd(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned long long fcs = ZSTD_getFrameContentSize(p, len);
    unsigned long long declared;
    ZSTD_DCtx *dctx;
    ZSTD_inBuffer ib;
    ZSTD_outBuffer ob;
    size_t r;
    if (fcs == ZSTD_CONTENTSIZE_ERROR) return lrdc_fail(e, "zstd payload has no valid frame header");
    if (fcs == ZSTD_CONTENTSIZE_UNKNOWN || fcs != (unsigned long long)n)
        return lrdc_fail(e, "zstd frame declares %s bytes, container record says %lu",
                         fcs == ZSTD_CONTENTSIZE_UNKNOWN ? "an unknown number of" : "a different number of",
                         (unsigned long)n);
    /* python-zstandard then reads the frame header again: a skippable frame declares its own skip size there (and
     * then never decodes to it); an empty frame returns nothing without looking further. */
    declared = fcs;
    if (len >= 8 && (((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24) & 0xFFFFFFF0u) == 0x184D2A50u)
        declared = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    if (declared == 0) return 0;
    if (declared != fcs) return lrdc_fail(e, "zstd payload is a skippable frame");
    dctx = ZSTD_createDCtx();
    if (!dctx) return lrdc_oom(e);
    ib.src = p; ib.size = len; ib.pos = 0;
    ob.dst = out; ob.size = n; ob.pos = 0;
    r = ZSTD_decompressStream(dctx, &ob, &ib);
    ZSTD_freeDCtx(dctx);
    if (ZSTD_isError(r)) return lrdc_fail(e, "zstd payload is corrupt: %s", ZSTD_getErrorName(r));
    if (r != 0) return lrdc_fail(e, "zstd payload is corrupt: did not decompress the full frame");
    if (ob.pos != n) return lrdc_fail(e, "zstd payload decoded to %lu bytes, expected %lu", (unsigned long)ob.pos, (unsigned long)n);
    if (ib.pos != ib.size) return lrdc_fail(e, "zstd payload has %lu bytes after its frame", (unsigned long)(ib.size - ib.pos));
    return 0;
}

/* ------------------------------------------------------------------------------------------------- huffman */
static unsigned pack_width(unsigned k) {
    unsigned m = 1, pw = k;
    while (pw * k <= 256) { pw *= k; m++; }
    return m;
}

int lrdc_huffman(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned m, k, j, km, kpad;
    size_t pos = 1, count, i, pad;
    uint64_t stored;
    uint8_t *tokens;
    const uint8_t *alpha;
    if (n == 0) {
        if (len) return lrdc_fail(e, "huffman payload for 0 symbols must be empty, has %lu bytes", (unsigned long)len);
        return 0;
    }
    if (!len) return lrdc_fail(e, "huffman payload is empty");
    m = p[0];
    if (m > 8) return lrdc_fail(e, "huffman payload mode %u is not 0..8", m);
    if (lrdc_uleb(p, len, &pos, &stored, "huffman payload", e)) return -1;
    if (stored != (uint64_t)n) return lrdc_fail(e, "huffman payload holds a different symbol count than the container record");
    if (m == 0) {
        if (len != pos + 1) return lrdc_fail(e, "huffman one-symbol payload must end after its symbol");
        memset(out, p[pos], n);
        return 0;
    }
    if (m == 1) return lrdc_inflate_exact(p + pos, len - pos, out, n, e);
    if (len < pos + 1) return lrdc_fail(e, "huffman packed payload is truncated");
    k = p[pos];
    if (k < 2 || k > 16 || pack_width(k) != m) return lrdc_fail(e, "huffman packed payload: alphabet size %u does not pack %u symbols per literal", k, m);
    if (len < pos + 1 + k) return lrdc_fail(e, "huffman packed payload is shorter than its alphabet");
    alpha = p + pos + 1;
    for (j = 1; j < k; j++)
        if (alpha[j - 1] >= alpha[j]) return lrdc_fail(e, "huffman alphabet is not strictly increasing");
    count = n / m + (n % m != 0);
    tokens = (uint8_t *)malloc(count);
    if (!tokens) return lrdc_oom(e);
    if (lrdc_inflate_exact(p + pos + 1 + k, len - pos - 1 - k, tokens, count, e)) { free(tokens); return -1; }
    for (km = 1, j = 0; j < m; j++) km *= k;
    pad = count * m - n;
    for (kpad = 1, j = 0; j < m - pad; j++) kpad *= k;
    for (i = 0; i < count; i++)
        if (tokens[i] >= km) {
            unsigned bad = tokens[i];
            free(tokens);
            return lrdc_fail(e, "huffman packed literal %u is not below %u**%u", bad, k, m);
        }
    if (pad && tokens[count - 1] >= kpad) { free(tokens); return lrdc_fail(e, "huffman packed payload: the padding of the last literal is not rank 0"); }
    for (i = 0; i < count; i++) {
        unsigned t = tokens[i];
        size_t base = i * m;
        for (j = 0; j < m && base + j < n; j++) { out[base + j] = alpha[t % k]; t /= k; }
    }
    free(tokens);
    return 0;
}

/* -------------------------------------------------------------------------------------------------- planes */
static int planes(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned s, j;
    size_t pos, total = 0, rows, i;
    uint8_t *plane;
    if (!len) return lrdc_fail(e, "planes payload is empty");
    s = p[0];
    if (s < 1 || s > 8 || n % s) return lrdc_fail(e, "planes payload: item size %u is not 1..8 or does not divide %lu bytes", s, (unsigned long)n);
    pos = 1 + 5 * (size_t)s;
    if (len < pos) return lrdc_fail(e, "planes payload is shorter than its plane table");
    for (j = 0; j < s; j++) {
        const uint8_t *q = p + 1 + 5 * j;
        total += (uint32_t)q[1] | (uint32_t)q[2] << 8 | (uint32_t)q[3] << 16 | (uint32_t)q[4] << 24;
    }
    if (total != len - pos) return lrdc_fail(e, "planes payload: plane lengths do not cover the payload exactly");
    rows = n / s;
    plane = (uint8_t *)malloc(rows ? rows : 1);
    if (!plane) return lrdc_oom(e);
    for (j = 0; j < s; j++) {
        const uint8_t *q = p + 1 + 5 * j;
        size_t l = (uint32_t)q[1] | (uint32_t)q[2] << 8 | (uint32_t)q[3] << 16 | (uint32_t)q[4] << 24;
        if (q[0] == 4) { free(plane); return lrdc_fail(e, "planes payload: a plane cannot itself be coded as planes"); }
        if (lrdc_decode_stream(q[0], p + pos, l, plane, rows, e)) { free(plane); return -1; }
        for (i = 0; i < rows; i++) out[i * s + j] = plane[i];
        pos += l;
    }
    free(plane);
    return 0;
}

int lrdc_decode_stream(int coder, const uint8_t *payload, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    switch (coder) {
    case 0:
        if (len != n) return lrdc_fail(e, "raw payload has %lu bytes, expected exactly %lu", (unsigned long)len, (unsigned long)n);
        if (n) memcpy(out, payload, n);
        return 0;
    case 1: return lrdc_zstd(payload, len, out, n, e);
    case 2: return lrdc_rans(payload, len, out, n, e);
    case 3: return lrdc_huffman(payload, len, out, n, e);
    case 4: return planes(payload, len, out, n, e);
    case 5: return lrdc_rans16(payload, len, out, n, e);
    case 6: return lrdc_rans16ch(payload, len, out, n, e);
    default: return lrdc_fail(e, "unknown coder id %d in container; known ids: 0 raw, 1 zstd, 2 rans, 3 huffman, 4 planes, 5 rans16, 6 rans16ch", coder);
    }
}
