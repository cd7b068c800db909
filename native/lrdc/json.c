/* json.c - parser for the LRDC header, which must be canonical JSON: exactly the bytes Python's
 * json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) writes. So there is no
 * whitespace, keys are strictly increasing (no duplicates), strings escape exactly what json.dumps escapes, integers
 * have no leading zeros or "-0". Values the schema never accepts (true/false/null, floats other than the "3.0" a
 * version may hold) are rejected here already; the container code checks the schema. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_DEPTH 16 /* the schema needs 4 levels; deeper input is rejected without recursing further */

typedef struct {
    const uint8_t *p;
    size_t n, i;
    json_doc *d;
    lrdc_err *e;
} parser;

static int grow(void **buf, size_t *cap, size_t need, size_t item, lrdc_err *e) {
    size_t c;
    void *nb;
    if (need <= *cap) return 0;
    c = *cap ? *cap : 64;
    while (c < need) {
        if (c > ((size_t)-1) / 2 / item) return lrdc_oom(e);
        c *= 2;
    }
    nb = realloc(*buf, c * item);
    if (!nb) return lrdc_oom(e);
    *buf = nb;
    *cap = c;
    return 0;
}

static int new_node(parser *s, int type, size_t *id) {
    json_doc *d = s->d;
    if (grow((void **)&d->nodes, &d->cap, d->nnodes + 1, sizeof(jnode), s->e)) return -1;
    memset(&d->nodes[d->nnodes], 0, sizeof(jnode));
    d->nodes[d->nnodes].type = type;
    *id = d->nnodes++;
    return 0;
}

static int push_pending(parser *s, size_t id) {
    json_doc *d = s->d;
    if (grow((void **)&d->pend, &d->pcap, d->npend + 1, sizeof(size_t), s->e)) return -1;
    d->pend[d->npend++] = id;
    return 0;
}

/* Move the last `count` pending ids into the kids array as the children of node `id`. */
static int close_container(parser *s, size_t id, size_t count) {
    json_doc *d = s->d;
    if (grow((void **)&d->kids, &d->kcap, d->nkids + count, sizeof(size_t), s->e)) return -1;
    if (count) memcpy(d->kids + d->nkids, d->pend + d->npend - count, count * sizeof(size_t));
    d->nodes[id].off = d->nkids;
    d->nodes[id].len = count;
    d->nkids += count;
    d->npend -= count;
    return 0;
}

static int put_bytes(parser *s, const char *b, size_t k) {
    json_doc *d = s->d;
    if (grow((void **)&d->strs, &d->scap, d->nstrs + k, 1, s->e)) return -1;
    memcpy(d->strs + d->nstrs, b, k);
    d->nstrs += k;
    return 0;
}

/* Code point as UTF-8 (lone surrogates as their 3-byte form, so equal Python strings give equal bytes). */
static int put_cp(parser *s, unsigned long cp) {
    char b[4];
    size_t k;
    if (cp < 0x80) { b[0] = (char)cp; k = 1; }
    else if (cp < 0x800) { b[0] = (char)(0xC0 | (cp >> 6)); b[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
    else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12)); b[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); b[2] = (char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18)); b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); b[3] = (char)(0x80 | (cp & 0x3F)); k = 4;
    }
    return put_bytes(s, b, k);
}

/* Four lowercase hex digits (json.dumps writes lowercase; anything else is not canonical). */
static int hex4(parser *s, unsigned long *v) {
    size_t j;
    *v = 0;
    if (s->n - s->i < 4) return lrdc_fail(s->e, "LRDC header is not valid JSON (truncated \\u escape)");
    for (j = 0; j < 4; j++) {
        uint8_t c = s->p[s->i + j];
        int x = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (x < 0) return lrdc_fail(s->e, "LRDC header is not canonical JSON (\\u escape is not 4 lowercase hex digits)");
        *v = (*v << 4) | (unsigned long)x;
    }
    s->i += 4;
    return 0;
}

static int parse_string(parser *s, size_t *id) {
    size_t start;
    jnode *nd;
    if (new_node(s, J_STR, id)) return -1;
    start = s->d->nstrs;
    s->i++; /* opening quote */
    for (;;) {
        uint8_t c;
        if (s->i >= s->n) return lrdc_fail(s->e, "LRDC header is not valid JSON (unterminated string)");
        c = s->p[s->i++];
        if (c == '"') break;
        if (c != '\\') {
            if (c < 0x20 || c > 0x7E) return lrdc_fail(s->e, "LRDC header is not canonical ASCII JSON (raw byte 0x%02x in a string)", c);
            if (put_bytes(s, (const char *)&c, 1)) return -1;
            s->d->nodes[*id].chars++;
            continue;
        }
        if (s->i >= s->n) return lrdc_fail(s->e, "LRDC header is not valid JSON (truncated escape)");
        c = s->p[s->i++];
        {
            char out = 0;
            switch (c) {
            case '"': out = '"'; break;
            case '\\': out = '\\'; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'n': out = '\n'; break;
            case 'r': out = '\r'; break;
            case 't': out = '\t'; break;
            case 'u': break;
            default: return lrdc_fail(s->e, "LRDC header is not canonical JSON (escape \\%c)", c);
            }
            if (c != 'u') {
                if (put_bytes(s, &out, 1)) return -1;
                s->d->nodes[*id].chars++;
                continue;
            }
        }
        {
            unsigned long u, lo;
            if (hex4(s, &u)) return -1;
            /* json.dumps uses \u only for what has no short form and is outside 0x20..0x7e. */
            if ((u >= 0x20 && u <= 0x7E) || u == 0x08 || u == 0x09 || u == 0x0A || u == 0x0C || u == 0x0D)
                return lrdc_fail(s->e, "LRDC header is not canonical JSON (needless \\u%04lx escape)", u);
            if (u >= 0xD800 && u <= 0xDBFF && s->n - s->i >= 6 && s->p[s->i] == '\\' && s->p[s->i + 1] == 'u') {
                size_t save = s->i;
                s->i += 2;
                if (hex4(s, &lo)) return -1;
                if (lo >= 0xDC00 && lo <= 0xDFFF) u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                else s->i = save; /* a lone high surrogate; the next escape stands on its own */
            }
            if (put_cp(s, u)) return -1;
            s->d->nodes[*id].chars++;
        }
    }
    nd = &s->d->nodes[*id];
    nd->off = start;
    nd->len = s->d->nstrs - start;
    return 0;
}

static int parse_number(parser *s, size_t *id) {
    size_t st = s->i;
    int neg = 0;
    uint64_t mag = 0;
    int huge = 0;
    if (s->p[s->i] == '-') { neg = 1; s->i++; }
    if (s->i >= s->n || s->p[s->i] < '0' || s->p[s->i] > '9') return lrdc_fail(s->e, "LRDC header is not valid JSON (bad number)");
    if (s->p[s->i] == '0') {
        s->i++;
        if (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') return lrdc_fail(s->e, "LRDC header is not valid JSON (leading zero)");
    } else {
        while (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') {
            unsigned d = (unsigned)(s->p[s->i++] - '0');
            if (mag > (UINT64_MAX - d) / 10) huge = 1;
            else mag = mag * 10 + d;
        }
    }
    if (s->i < s->n && (s->p[s->i] == '.' || s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        /* A float. The only one any valid header can hold is a version of 3.0 (Python compares 3.0 == 3), and
         * json.dumps writes it as "3.0"; every other float fails the canonical form or the schema. */
        while (s->i < s->n && strchr("0123456789.eE+-", s->p[s->i]) && s->p[s->i]) s->i++;
        if (s->i - st == 3 && memcmp(s->p + st, "3.0", 3) == 0) return new_node(s, J_F3, id);
        return lrdc_fail(s->e, "LRDC header holds a float where only integers are valid");
    }
    if (neg && mag == 0 && !huge) return lrdc_fail(s->e, "LRDC header is not canonical JSON (-0)");
    if (new_node(s, J_INT, id)) return -1;
    if (huge || (!neg && mag > (uint64_t)INT64_MAX) || (neg && mag > (uint64_t)INT64_MAX + 1)) {
        s->d->nodes[*id].type = J_HUGE; /* outside every range the schema allows */
    } else {
        s->d->nodes[*id].i = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    }
    return 0;
}

static int str_less(const json_doc *d, size_t a, size_t b) {
    const jnode *x = &d->nodes[a], *y = &d->nodes[b];
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(d->strs + x->off, d->strs + y->off, m);
    return c < 0 || (c == 0 && x->len < y->len);
}

static int parse_value(parser *s, size_t *id, int depth) {
    uint8_t c;
    if (s->i >= s->n) return lrdc_fail(s->e, "LRDC header is not valid JSON (truncated)");
    c = s->p[s->i];
    if (c == '"') return parse_string(s, id);
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(s, id);
    if (c == '[' || c == '{') {
        int obj = c == '{';
        size_t count = 0, prev_key = 0;
        if (depth >= MAX_DEPTH) return lrdc_fail(s->e, "LRDC header nests deeper than %d levels", MAX_DEPTH);
        if (new_node(s, obj ? J_OBJ : J_ARR, id)) return -1;
        s->i++;
        if (s->i < s->n && s->p[s->i] == (obj ? '}' : ']')) {
            s->i++;
            return close_container(s, *id, 0);
        }
        for (;;) {
            size_t v;
            if (obj) {
                size_t k;
                if (s->i >= s->n || s->p[s->i] != '"') return lrdc_fail(s->e, "LRDC header is not canonical JSON (object key expected)");
                if (parse_string(s, &k)) return -1;
                if (count && !str_less(s->d, prev_key, k))
                    return lrdc_fail(s->e, "LRDC header is not canonical JSON (duplicate keys or key order)");
                prev_key = k;
                if (push_pending(s, k)) return -1;
                if (s->i >= s->n || s->p[s->i] != ':') return lrdc_fail(s->e, "LRDC header is not canonical JSON (':' expected)");
                s->i++;
            }
            if (parse_value(s, &v, depth + 1)) return -1;
            if (push_pending(s, v)) return -1;
            count++;
            if (s->i >= s->n) return lrdc_fail(s->e, "LRDC header is not valid JSON (truncated)");
            if (s->p[s->i] == ',') { s->i++; continue; }
            if (s->p[s->i] == (obj ? '}' : ']')) { s->i++; break; }
            return lrdc_fail(s->e, "LRDC header is not canonical JSON (unexpected byte 0x%02x)", s->p[s->i]);
        }
        return close_container(s, *id, obj ? 2 * count : count);
    }
    return lrdc_fail(s->e, "LRDC header holds a value the schema never accepts (byte 0x%02x)", c);
}

int lrdc_json_parse(const uint8_t *p, size_t n, json_doc *d, lrdc_err *e) {
    parser s;
    size_t root;
    memset(d, 0, sizeof(*d));
    s.p = p; s.n = n; s.i = 0; s.d = d; s.e = e;
    if (n == 0 || p[0] != '{') return lrdc_fail(e, "LRDC header is not a JSON object");
    if (parse_value(&s, &root, 0)) return -1;
    if (s.i != n) return lrdc_fail(e, "LRDC header is not canonical JSON (bytes after the object)");
    return 0;
}

void lrdc_json_free(json_doc *d) {
    free(d->nodes);
    free(d->kids);
    free(d->pend);
    free(d->strs);
    memset(d, 0, sizeof(*d));
}
