/* rans.c - the rANS coders: rans (2, constriction's AnsCoder with a 24-bit categorical model), rans16 (5) and
 * rans16ch (6) (a 32-bit state, 16-bit words, two interleaved states, one or several tables). The shared table
 * format (precision, alphabet, frequency field) is parsed by read_alphabet / read_freqs. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_PRECISION 15
#define RANS16_L 65536u
#define MAX_TABLES 16

/* Alphabet of k symbols at p[*pos]: k strictly increasing bytes (k <= 32) or a 32-byte bitmap, LSB-first. */
static int read_alphabet(const uint8_t *p, size_t len, size_t *pos, unsigned k, uint8_t alpha[256], lrdc_err *e) {
    unsigned i, c = 0;
    if (k <= 32) {
        if (len - *pos < k) return lrdc_fail(e, "rANS payload shorter than its %u-symbol alphabet", k);
        for (i = 0; i < k; i++) {
            alpha[i] = p[*pos + i];
            if (i && alpha[i - 1] >= alpha[i]) return lrdc_fail(e, "rANS symbols are not strictly increasing");
        }
        *pos += k;
        return 0;
    }
    if (len - *pos < 32) return lrdc_fail(e, "rANS payload is shorter than its alphabet bitmap");
    for (i = 0; i < 256; i++)
        if (p[*pos + (i >> 3)] >> (i & 7) & 1) alpha[c++] = (uint8_t)i;
    if (c != k) return lrdc_fail(e, "rANS alphabet bitmap has %u symbols, header says %u", c, k);
    *pos += 32;
    return 0;
}

/* k frequencies summing to 2**precision at p[*pos]: k - 1 4-bit lengths L, then per symbol the L - 1 low bits of
 * f - 1 (L = 0: f = 1), zero-padded to a byte; the last frequency is the rest and must be >= 1. */
static int read_freqs(const uint8_t *p, size_t len, size_t *pos, unsigned k, unsigned precision, uint32_t *f,
                      lrdc_err *e) {
    size_t nib_bytes = (4 * (size_t)(k - 1) + 7) >> 3, nbits = 4 * (size_t)(k - 1), nbytes, at;
    unsigned i;
    uint64_t total = 0;
    const uint8_t *b = p + *pos;
    if (k == 1) { f[0] = 1u << precision; return 0; }
    if (len - *pos < nib_bytes) return lrdc_fail(e, "rANS payload is shorter than its frequency table");
    for (i = 0; i + 1 < k; i++) {
        unsigned L = (i & 1) ? b[i >> 1] >> 4 : b[i >> 1] & 15;
        if (L > 1) nbits += L - 1;
    }
    nbytes = (nbits + 7) >> 3;
    if (len - *pos < nbytes) return lrdc_fail(e, "rANS payload is shorter than its frequency table");
    if ((nbits & 7) && (b[nbytes - 1] >> (nbits & 7))) return lrdc_fail(e, "rANS frequency table has non-zero padding bits");
    at = 4 * (size_t)(k - 1);
    for (i = 0; i + 1 < k; i++) {
        unsigned L = (i & 1) ? b[i >> 1] >> 4 : b[i >> 1] & 15, j;
        uint32_t v = 1;
        if (L) {
            unsigned w = L - 1;
            uint32_t mant = 0;
            for (j = 0; j < w; j++) mant |= (uint32_t)((b[(at + j) >> 3] >> ((at + j) & 7)) & 1) << j;
            v = (1u << w) + mant + 1;
            at += w;
        }
        f[i] = v;
        total += v;
    }
    if (total >= ((uint64_t)1 << precision)) return lrdc_fail(e, "rANS frequencies must be >= 1 and sum to 2**%u", precision);
    f[k - 1] = (uint32_t)(((uint64_t)1 << precision) - total);
    *pos += nbytes;
    return 0;
}

/* ------------------------------------------------------------------------------- rans: constriction 0.5.0 */
/* The Python packer hands constriction Categorical(f / 2**p, perfect=False): a ContiguousCategorical model with
 * 24-bit precision whose CDF ("fast" quantization) is, exactly in integers because f / 2**p and its partial sums
 * are dyadic: cdf[i] = floor(C_i * (2**24 - k) / 2**p) + i, C_i = f_0 + ... + f_{i-1}; cdf[k] = 2**24.
 * The coder is AnsCoder<u32 words, u64 state>: words are popped from the end of the word array. */
int lrdc_rans(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned precision, k, i;
    uint64_t count = 0, state;
    uint8_t alpha[256];
    uint32_t f[256], cdf[257];
    size_t pos = 10, nwords, w, s;
    if (n == 0) {
        if (len) return lrdc_fail(e, "rANS payload for 0 symbols must be empty, has %lu bytes", (unsigned long)len);
        return 0;
    }
    if (len < 10) return lrdc_fail(e, "rANS payload too short for its table header (%lu bytes)", (unsigned long)len);
    precision = p[0];
    k = (unsigned)p[1] + 1;
    for (i = 0; i < 8; i++) count |= (uint64_t)p[2 + i] << (8 * i);
    if (count != (uint64_t)n) return lrdc_fail(e, "rANS payload holds a different symbol count than the container record");
    if (precision < 8 || precision > MAX_PRECISION) return lrdc_fail(e, "rANS precision %u outside 8..%d", precision, MAX_PRECISION);
    if (read_alphabet(p, len, &pos, k, alpha, e) || read_freqs(p, len, &pos, k, precision, f, e)) return -1;
    if (k == 1) {
        if (pos != len) return lrdc_fail(e, "rANS one-symbol payload has unexpected trailing bytes");
        memset(out, alpha[0], n);
        return 0;
    }
    if ((len - pos) % 4 || len == pos) return lrdc_fail(e, "rANS word stream length %lu is not a positive multiple of 4", (unsigned long)(len - pos));
    {
        uint64_t c = 0;
        for (i = 0; i < k; i++) {
            cdf[i] = (uint32_t)((c * ((1u << 24) - k)) >> precision) + i;
            c += f[i];
        }
        cdf[k] = 1u << 24;
    }
    nwords = (len - pos) / 4;
#define WORD(j) ((uint32_t)p[pos + 4 * (j)] | (uint32_t)p[pos + 4 * (j) + 1] << 8 | (uint32_t)p[pos + 4 * (j) + 2] << 16 | (uint32_t)p[pos + 4 * (j) + 3] << 24)
    w = nwords; /* words left to pop: indices [0, w) */
    if (WORD(w - 1) == 0) return lrdc_fail(e, "rANS stream is corrupt: ANS compressed data never ends in a zero word");
    state = WORD(w - 1);
    w--;
    if (w) { state = (state << 32) | WORD(w - 1); w--; }
    for (s = 0; s < n; s++) {
        uint32_t q = (uint32_t)(state & 0xFFFFFF);
        unsigned lo = 0, hi = k; /* the largest i with cdf[i] <= q; cdf[0] = 0 */
        while (hi - lo > 1) {
            unsigned mid = (lo + hi) / 2;
            if (cdf[mid] <= q) lo = mid;
            else hi = mid;
        }
        out[s] = alpha[lo];
        state = (state >> 24) * (uint64_t)(cdf[lo + 1] - cdf[lo]) + (q - cdf[lo]);
        if (state < ((uint64_t)1 << 32) && w) { state = (state << 32) | WORD(w - 1); w--; }
    }
#undef WORD
    if (state != 0) return lrdc_fail(e, "rANS stream not fully consumed after %lu symbols (corrupt or wrong length)", (unsigned long)n);
    return 0;
}

/* --------------------------------------------------------------------------------------- rans16 / rans16ch */
typedef struct {
    uint32_t f[256], c[256];
    uint8_t *lut; /* 2**precision slots -> symbol rank */
} table16;

/* precision, k, count (== n) and the alphabet: the head rans16 and rans16ch share. */
static int head16(const uint8_t *p, size_t len, size_t n, unsigned *precision, unsigned *k, uint8_t alpha[256],
                  size_t *pos, const char *name, lrdc_err *e) {
    uint64_t count;
    if (len < 3) return lrdc_fail(e, "%s payload too short for its head (%lu bytes)", name, (unsigned long)len);
    *precision = p[0];
    *k = (unsigned)p[1] + 1;
    if (*precision < 8 || *precision > MAX_PRECISION) return lrdc_fail(e, "%s precision %u outside 8..%d", name, *precision, MAX_PRECISION);
    *pos = 2;
    if (lrdc_uleb(p, len, pos, &count, name, e)) return -1;
    if (count != (uint64_t)n) return lrdc_fail(e, "%s payload holds a different symbol count than the container record", name);
    return read_alphabet(p, len, pos, *k, alpha, e);
}

/* Decode n symbols in segments: count[r] segments of length[r] symbols; segment j uses the table named by the j-th
 * `bits`-bit field of idx (LSB-first). Symbol i uses state i % 2; within a segment symbols go in pairs, both decoded
 * before either state refills (state 0 first), exactly as pipeline/entropy/rans_kernels.py orders its word reads. */
static int words16(const uint8_t *p, size_t len, size_t pos, uint8_t *out, size_t n, const uint8_t *alpha,
                   table16 *t, unsigned ntab, unsigned precision, const uint64_t *cnt, const uint64_t *rl, size_t nruns,
                   const uint8_t *idx, unsigned bits, const char *name, lrdc_err *e) {
    size_t rest = len - pos, nw, wp = 0, i = 0, seg = 0, r;
    uint64_t x0, x1, mask = ((uint64_t)1 << precision) - 1;
    const uint8_t *wb;
    unsigned tt;
    if (rest < 8 || rest % 2) return lrdc_fail(e, "%s stream of %lu bytes is not two 4-byte states plus 16-bit words", name, (unsigned long)rest);
    x0 = (uint32_t)p[pos] | (uint32_t)p[pos + 1] << 8 | (uint32_t)p[pos + 2] << 16 | (uint32_t)p[pos + 3] << 24;
    x1 = (uint32_t)p[pos + 4] | (uint32_t)p[pos + 5] << 8 | (uint32_t)p[pos + 6] << 16 | (uint32_t)p[pos + 7] << 24;
    wb = p + pos + 8;
    nw = (rest - 8) / 2;
    for (tt = 0; tt < ntab; tt++) {
        uint32_t s, c = 0, j;
        t[tt].lut = (uint8_t *)malloc((size_t)1 << precision);
        if (!t[tt].lut) return lrdc_oom(e);
        for (s = 0; s < 256; s++) {
            t[tt].c[s] = c;
            for (j = 0; j < t[tt].f[s] && c + j < (1u << precision); j++) t[tt].lut[c + j] = (uint8_t)s;
            c += t[tt].f[s];
        }
    }
#define STEP(x)                                                                                                   \
    do {                                                                                                          \
        uint64_t sl_ = (x) & mask;                                                                                \
        unsigned s_ = tb->lut[sl_];                                                                               \
        out[i] = alpha[s_];                                                                                       \
        (x) = (uint64_t)tb->f[s_] * ((x) >> precision) + sl_ - tb->c[s_];                                         \
        if ((x) < RANS16_L) {                                                                                     \
            if (wp >= nw) return lrdc_fail(e, "%s stream ends before its symbols do (truncated or corrupt)", name); \
            (x) = ((x) << 16) | (uint64_t)((uint32_t)wb[2 * wp] | (uint32_t)wb[2 * wp + 1] << 8);                 \
            wp++;                                                                                                 \
        }                                                                                                         \
    } while (0)
    for (r = 0; r < nruns; r++) {
        uint64_t c;
        for (c = 0; c < cnt[r]; c++) {
            unsigned tix = 0, b;
            size_t end = i + (size_t)rl[r];
            const table16 *tb;
            for (b = 0; b < bits; b++) {
                uint64_t bit = (uint64_t)seg * bits + b; /* 64-bit: seg * bits can pass 2**32 */
                tix |= (unsigned)((idx[bit >> 3] >> (bit & 7)) & 1) << b;
            }
            seg++;
            if (tix >= ntab) return lrdc_fail(e, "%s: a segment names a table beyond its %u", name, ntab);
            tb = &t[tix];
            if ((i & 1) && i < end) { STEP(x1); i++; }
            while (i + 1 < end) {
                uint64_t sl0 = x0 & mask, sl1 = x1 & mask;
                unsigned s0 = tb->lut[sl0], s1 = tb->lut[sl1];
                out[i] = alpha[s0];
                out[i + 1] = alpha[s1];
                x0 = (uint64_t)tb->f[s0] * (x0 >> precision) + sl0 - tb->c[s0];
                x1 = (uint64_t)tb->f[s1] * (x1 >> precision) + sl1 - tb->c[s1];
                if (x0 < RANS16_L) {
                    if (wp >= nw) return lrdc_fail(e, "%s stream ends before its symbols do (truncated or corrupt)", name);
                    x0 = (x0 << 16) | (uint64_t)((uint32_t)wb[2 * wp] | (uint32_t)wb[2 * wp + 1] << 8);
                    wp++;
                }
                if (x1 < RANS16_L) {
                    if (wp >= nw) return lrdc_fail(e, "%s stream ends before its symbols do (truncated or corrupt)", name);
                    x1 = (x1 << 16) | (uint64_t)((uint32_t)wb[2 * wp] | (uint32_t)wb[2 * wp + 1] << 8);
                    wp++;
                }
                i += 2;
            }
            if (i < end) { STEP(x0); i++; }
        }
    }
#undef STEP
    if (wp != nw || x0 != RANS16_L || x1 != RANS16_L)
        return lrdc_fail(e, "%s stream not fully consumed after %lu symbols (corrupt or wrong length)", name, (unsigned long)n);
    return 0;
}

static void free_tables(table16 *t, unsigned ntab) {
    unsigned i;
    for (i = 0; i < ntab; i++) free(t[i].lut);
}

int lrdc_rans16(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned precision, k;
    uint8_t alpha[256];
    size_t pos;
    table16 t;
    uint64_t one = 1, all = n;
    int r;
    if (n == 0) {
        if (len) return lrdc_fail(e, "rans16 payload for 0 symbols must be empty, has %lu bytes", (unsigned long)len);
        return 0;
    }
    memset(&t, 0, sizeof t);
    if (head16(p, len, n, &precision, &k, alpha, &pos, "rans16", e)) return -1;
    if (read_freqs(p, len, &pos, k, precision, t.f, e)) return -1;
    if (k == 1) {
        if (pos != len) return lrdc_fail(e, "rans16 one-symbol payload has unexpected trailing bytes");
        memset(out, alpha[0], n);
        return 0;
    }
    r = words16(p, len, pos, out, n, alpha, &t, 1, precision, &one, &all, 1, NULL, 0, "rans16", e);
    free_tables(&t, 1);
    return r;
}

int lrdc_rans16ch(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    unsigned precision, k, ntab, tt, bits;
    uint8_t alpha[256];
    size_t pos, r, index_len;
    uint64_t nruns, covered = 0, nseg = 0, *cnt = NULL, *rl = NULL;
    table16 *t = NULL;
    int rc = -1;
    if (n == 0) {
        if (len) return lrdc_fail(e, "rans16ch payload for 0 symbols must be empty, has %lu bytes", (unsigned long)len);
        return 0;
    }
    if (head16(p, len, n, &precision, &k, alpha, &pos, "rans16ch", e)) return -1;
    if (k == 1) {
        if (pos != len) return lrdc_fail(e, "rans16ch one-symbol payload has unexpected trailing bytes");
        memset(out, alpha[0], n);
        return 0;
    }
    if (pos >= len || p[pos] < 1 || p[pos] > MAX_TABLES) return lrdc_fail(e, "rans16ch table count must be 1..%d", MAX_TABLES);
    ntab = p[pos++];
    t = (table16 *)calloc(ntab, sizeof(table16));
    if (!t) return lrdc_oom(e);
    for (tt = 0; tt < ntab; tt++)
        if (read_freqs(p, len, &pos, k, precision, t[tt].f, e)) goto done;
    if (lrdc_uleb(p, len, &pos, &nruns, "rans16ch runs", e)) goto done;
    if (nruns < 1 || nruns > (len - pos) / 2 || nruns > ((size_t)-1) / sizeof(uint64_t)) {
        lrdc_fail(e, "rans16ch: segment runs do not fit the payload");
        goto done;
    }
    cnt = (uint64_t *)malloc((size_t)nruns * sizeof(uint64_t));
    rl = (uint64_t *)malloc((size_t)nruns * sizeof(uint64_t));
    if (!cnt || !rl) { lrdc_oom(e); goto done; }
    for (r = 0; r < nruns; r++) {
        if (lrdc_uleb(p, len, &pos, &cnt[r], "rans16ch run count", e)) goto done;
        if (lrdc_uleb(p, len, &pos, &rl[r], "rans16ch run length", e)) goto done;
        if (cnt[r] < 1 || rl[r] < 1 || cnt[r] > n || rl[r] > n || cnt[r] * rl[r] > (uint64_t)n - covered) {
            lrdc_fail(e, "rans16ch segment runs must be positive and cover exactly the symbols");
            goto done;
        }
        covered += cnt[r] * rl[r];
        nseg += cnt[r];
    }
    if (covered != n) { lrdc_fail(e, "rans16ch segment runs cover %lu symbols, not %lu", (unsigned long)covered, (unsigned long)n); goto done; }
    for (bits = 0; (1u << bits) < ntab; bits++) {}
    index_len = (size_t)((nseg * bits + 7) >> 3);
    if (len - pos < index_len) { lrdc_fail(e, "rans16ch payload is shorter than its table indices"); goto done; }
    if (bits && index_len && ((nseg * bits) & 7) && (p[pos + index_len - 1] >> ((nseg * bits) & 7))) {
        lrdc_fail(e, "rans16ch table indices have non-zero padding bits");
        goto done;
    }
    rc = words16(p, len, pos + index_len, out, n, alpha, t, ntab, precision, cnt, rl, (size_t)nruns, p + pos, bits,
                 "rans16ch", e);
done:
    if (t) free_tables(t, ntab);
    free(t);
    free(cnt);
    free(rl);
    return rc;
}
