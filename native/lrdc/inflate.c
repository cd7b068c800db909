/* inflate.c - a raw DEFLATE decoder (RFC 1951) and CRC-32, so the decoder needs no zlib.
 *
 * It accepts exactly the streams zlib's inflate accepts (the Python reference decodes the huffman coder's streams
 * with zlib): over-subscribed codes are invalid; an incomplete code is valid only as a single code of length 1
 * (literal/length and distance codes; the code-length code must be complete); literal/length codes 286-287 and
 * distance codes 30-31 are invalid; the end-of-block code must have a length; a distance may not reach before the
 * first output byte; a stored block's LEN must be the complement of its NLEN. The output is bounded: a stream that
 * would produce more than the caller's n bytes is rejected when it tries. Canonical Huffman decoding by code length
 * (count/symbol tables), one bit at a time: simple and fast enough for the few kB of a weight tensor's literals. */
#include <string.h>

#include "internal.h"

#define MAXBITS 15
#define MAXLCODES 286
#define MAXDCODES 30
#define FIXLCODES 288

typedef struct {
    const uint8_t *in;
    size_t inlen, pos; /* next input byte */
    uint32_t bitbuf;
    unsigned bitcnt;
    uint8_t *out;
    size_t outlen, opos;
    int overflow; /* the stream tried to write past outlen */
} state;

typedef struct {
    short count[MAXBITS + 1]; /* number of codes of each length */
    short symbol[FIXLCODES];  /* symbols ordered by code */
} huff;

/* Next `need` bits, LSB-first; -1 when the input runs out. */
static int bits(state *s, unsigned need, uint32_t *v) {
    uint32_t val = s->bitbuf;
    while (s->bitcnt < need) {
        if (s->pos >= s->inlen) return -1;
        val |= (uint32_t)s->in[s->pos++] << s->bitcnt;
        s->bitcnt += 8;
    }
    s->bitbuf = need < 32 ? val >> need : 0;
    s->bitcnt -= need;
    *v = need < 32 ? val & ((1u << need) - 1) : val;
    return 0;
}

/* Decode one symbol; -1 out of input, -2 an unused code. */
static int decode(state *s, const huff *h) {
    int code = 0, first = 0, index = 0, len;
    for (len = 1; len <= MAXBITS; len++) {
        uint32_t b;
        int count;
        if (bits(s, 1, &b)) return -1;
        code |= (int)b;
        count = h->count[len];
        if (code - count < first) return h->symbol[index + (code - first)];
        index += count;
        first += count;
        first <<= 1;
        code <<= 1;
    }
    return -2;
}

/* Build a code from lengths; returns 0 complete, > 0 incomplete (codes left), < 0 over-subscribed. */
static int construct(huff *h, const short *length, int n) {
    int sym, len, left;
    short offs[MAXBITS + 1];
    for (len = 0; len <= MAXBITS; len++) h->count[len] = 0;
    for (sym = 0; sym < n; sym++) h->count[length[sym]]++;
    if (h->count[0] == n) return 0; /* no codes: complete, but any decode fails */
    left = 1;
    for (len = 1; len <= MAXBITS; len++) {
        left <<= 1;
        left -= h->count[len];
        if (left < 0) return left;
    }
    offs[1] = 0;
    for (len = 1; len < MAXBITS; len++) offs[len + 1] = (short)(offs[len] + h->count[len]);
    for (sym = 0; sym < n; sym++)
        if (length[sym] != 0) h->symbol[offs[length[sym]]++] = (short)sym;
    return left;
}

/* zlib's rule for literal/length and distance codes: incomplete only as one code of length 1. */
static int usable(const huff *h, int err, int n) {
    if (err < 0) return 0;
    if (err == 0) return 1;
    return h->count[1] == 1 && h->count[0] == n - 1;
}

static int codes(state *s, const huff *lencode, const huff *distcode) {
    static const short lbase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const short lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const short dbase[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const short dext[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    for (;;) {
        int symbol = decode(s, lencode);
        if (symbol < 0) return symbol;
        if (symbol < 256) {
            if (s->opos >= s->outlen) { s->overflow = 1; return -3; }
            s->out[s->opos++] = (uint8_t)symbol;
        } else if (symbol == 256) {
            return 0;
        } else {
            uint32_t e;
            size_t len, dist;
            symbol -= 257;
            if (symbol >= 29) return -4; /* 286, 287 */
            if (bits(s, (unsigned)lext[symbol], &e)) return -1;
            len = (size_t)lbase[symbol] + e;
            symbol = decode(s, distcode);
            if (symbol < 0) return symbol;
            if (symbol >= 30) return -4;
            if (bits(s, (unsigned)dext[symbol], &e)) return -1;
            dist = (size_t)dbase[symbol] + e;
            if (dist > s->opos) return -5; /* too far back */
            if (len > s->outlen - s->opos) { s->overflow = 1; return -3; }
            while (len--) { s->out[s->opos] = s->out[s->opos - dist]; s->opos++; }
        }
    }
}

static int stored(state *s) {
    size_t len;
    s->bitbuf = 0; /* discard to a byte boundary */
    s->bitcnt = 0;
    if (s->inlen - s->pos < 4) return -1;
    len = (size_t)s->in[s->pos] | (size_t)s->in[s->pos + 1] << 8;
    if ((s->in[s->pos + 2] ^ s->in[s->pos]) != 0xFF || (s->in[s->pos + 3] ^ s->in[s->pos + 1]) != 0xFF) return -6;
    s->pos += 4;
    if (len > s->outlen - s->opos) {
        /* zlib copies what fits first; either way the stream is too long */
        s->overflow = 1;
        return -3;
    }
    if (s->inlen - s->pos < len) return -1;
    if (len) memcpy(s->out + s->opos, s->in + s->pos, len);
    s->opos += len;
    s->pos += len;
    return 0;
}

static int fixed(state *s) {
    huff lc, dc; /* built per block (cheap), so there is no shared state between threads */
    short lengths[FIXLCODES];
    int sym;
    for (sym = 0; sym < 144; sym++) lengths[sym] = 8;
    for (; sym < 256; sym++) lengths[sym] = 9;
    for (; sym < 280; sym++) lengths[sym] = 7;
    for (; sym < FIXLCODES; sym++) lengths[sym] = 8;
    construct(&lc, lengths, FIXLCODES);
    for (sym = 0; sym < MAXDCODES + 2; sym++) lengths[sym] = 5;
    construct(&dc, lengths, MAXDCODES + 2);
    return codes(s, &lc, &dc);
}

static int dynamic(state *s) {
    static const short order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    short lengths[MAXLCODES + MAXDCODES];
    int nlen, ndist, ncode, index, err;
    uint32_t v;
    huff lencode, distcode;
    if (bits(s, 5, &v)) return -1;
    nlen = (int)v + 257;
    if (bits(s, 5, &v)) return -1;
    ndist = (int)v + 1;
    if (bits(s, 4, &v)) return -1;
    ncode = (int)v + 4;
    if (nlen > MAXLCODES || ndist > MAXDCODES) return -7;
    for (index = 0; index < ncode; index++) {
        if (bits(s, 3, &v)) return -1;
        lengths[order[index]] = (short)v;
    }
    for (; index < 19; index++) lengths[order[index]] = 0;
    if (construct(&lencode, lengths, 19) != 0) return -8; /* the code-length code must be complete */
    index = 0;
    while (index < nlen + ndist) {
        int symbol = decode(s, &lencode), len = 0, rep;
        if (symbol < 0) return symbol;
        if (symbol < 16) {
            lengths[index++] = (short)symbol;
            continue;
        }
        if (symbol == 16) {
            if (index == 0) return -9;
            len = lengths[index - 1];
            if (bits(s, 2, &v)) return -1;
            rep = 3 + (int)v;
        } else if (symbol == 17) {
            if (bits(s, 3, &v)) return -1;
            rep = 3 + (int)v;
        } else {
            if (bits(s, 7, &v)) return -1;
            rep = 11 + (int)v;
        }
        if (index + rep > nlen + ndist) return -9;
        while (rep--) lengths[index++] = (short)len;
    }
    if (lengths[256] == 0) return -10;
    err = construct(&lencode, lengths, nlen);
    if (!usable(&lencode, err, nlen)) return -11;
    err = construct(&distcode, lengths + nlen, ndist);
    if (!usable(&distcode, err, ndist)) return -12;
    return codes(s, &lencode, &distcode);
}

int lrdc_inflate_exact(const uint8_t *p, size_t len, uint8_t *out, size_t n, lrdc_err *e) {
    state s;
    int last, err = 0;
    memset(&s, 0, sizeof s);
    s.in = p; s.inlen = len; s.out = out; s.outlen = n;
    do {
        uint32_t v;
        if (bits(&s, 1, &v)) { err = -1; break; }
        last = (int)v;
        if (bits(&s, 2, &v)) { err = -1; break; }
        err = v == 0 ? stored(&s) : v == 1 ? fixed(&s) : v == 2 ? dynamic(&s) : -13;
    } while (!err && !last);
    if (s.overflow) return lrdc_fail(e, "huffman stream inflates to more than the %lu bytes expected", (unsigned long)n);
    if (err == -1) return lrdc_fail(e, "huffman stream is truncated (no final end-of-block)");
    if (err) return lrdc_fail(e, "huffman (DEFLATE) stream is corrupt (error %d)", -err);
    if (s.opos != n) return lrdc_fail(e, "huffman stream inflates to %lu bytes, expected %lu", (unsigned long)s.opos, (unsigned long)n);
    if (s.pos != len) return lrdc_fail(e, "huffman stream has %lu trailing bytes after its final block", (unsigned long)(len - s.pos));
    return 0;
}

/* CRC-32/IEEE (reflected polynomial 0xEDB88320, as zlib.crc32), one table lookup per byte. */
static const uint32_t CRC_TABLE[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du};

uint32_t lrdc_crc32(uint32_t crc, const uint8_t *p, size_t n) {
    size_t i;
    crc = ~crc;
    for (i = 0; i < n; i++) crc = CRC_TABLE[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}
