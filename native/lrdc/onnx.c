/* onnx.c - rebuild the ONNX model: the graph record (a serialized ModelProto whose moved initializers have no data)
 * with each record's bytes put back as the initializer's raw_data (TensorProto field 9).
 *
 * The Python reference parses the graph bytes with protobuf, sets raw_data and serializes again. The graph record
 * is itself protobuf's serialization of that model, so re-serializing reproduces it byte for byte except for the
 * inserted fields and the lengths of the messages around them: ModelProto.graph (field 7) and the
 * GraphProto.initializer entries (field 5). That is what this module does, on the wire format alone: protobuf
 * writes known fields in field-number order and unknown fields after them, so raw_data (9) goes before the first
 * field numbered above 9 or unknown to onnx.proto. Nested messages other than those on the path to the
 * initializers are copied as they are (see docs/lrdc-format.md for what this does not check). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_PROTO ((uint64_t)0x7FFFFFFF) /* protobuf cannot serialize a message of 2 GiB or more */

typedef struct {
    size_t start;   /* offset of the field's tag */
    size_t tag_len; /* bytes of the tag */
    size_t body;    /* offset of the value (for length-delimited fields: after the length) */
    size_t end;     /* offset after the field */
    uint32_t num;
    int wt;
} field;

static int varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v) {
    uint64_t x = 0;
    int s;
    for (s = 0; s < 10; s++) {
        uint8_t b;
        if (*i >= n) return -1;
        b = p[(*i)++];
        if (s == 9 && b > 1) return -1;
        x |= (uint64_t)(b & 0x7F) << (7 * s);
        if (!(b & 0x80)) { *v = x; return 0; }
    }
    return -1;
}

/* The next field of the message p[*i..n); -1 on malformed wire data. */
static int next_field(const uint8_t *p, size_t n, size_t *i, field *f) {
    uint64_t tag, v;
    f->start = *i;
    if (varint(p, n, i, &tag)) return -1;
    f->tag_len = *i - f->start;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return -1;
    switch (f->wt) {
    case 0: f->body = *i; if (varint(p, n, i, &v)) return -1; break;
    case 1: f->body = *i; if (n - *i < 8) return -1; *i += 8; break;
    case 5: f->body = *i; if (n - *i < 4) return -1; *i += 4; break;
    case 2:
        if (varint(p, n, i, &v) || v > n - *i) return -1;
        f->body = *i;
        *i += (size_t)v;
        break;
    default: return -1; /* groups (3, 4) are not used by onnx.proto; 6, 7 are invalid */
    }
    f->end = *i;
    return 0;
}

static size_t varint_len(uint64_t v) {
    size_t k = 1;
    while (v >= 0x80) { v >>= 7; k++; }
    return k;
}

static uint8_t *put_varint(uint8_t *o, uint64_t v) {
    while (v >= 0x80) { *o++ = (uint8_t)(v | 0x80); v >>= 7; }
    *o++ = (uint8_t)v;
    return o;
}

/* TensorProto fields of onnx.proto (1.23): 1..14 and 16; others are unknown to protobuf and serialized last. */
static int tensor_field_known(uint32_t num) { return (num >= 1 && num <= 14) || num == 16; }

typedef struct {
    size_t start, end, body; /* the initializer field within the graph message, and its TensorProto content */
    const uint8_t *name;
    size_t name_len;
    size_t insert;  /* offset (absolute) where raw_data goes */
    long rec;       /* record index, or -1 */
    size_t order;   /* position among the initializers */
} init;

static int cmp_init(const void *a, const void *b) {
    const init *x = *(const init *const *)a, *y = *(const init *const *)b;
    size_t m = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, m);
    if (c) return c;
    if (x->name_len != y->name_len) return x->name_len < y->name_len ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order; /* equal names: later ones last */
}

/* Check a TensorProto against its record (type, dims, no data of its own). */
static int check_tensor(const uint8_t *g, const init *in, const lrdc_tensor *t, lrdc_err *e) {
    size_t i = in->body, nd = 0;
    int64_t dtype = 0;
    int has_data = 0, bad_dims = 0;
    field f;
    while (i < in->end) {
        if (next_field(g, in->end, &i, &f)) return lrdc_fail(e, "LRDC graph record is not an ONNX ModelProto (bad initializer)");
        if (f.num == 1 && f.wt == 0) {
            size_t j = f.body;
            uint64_t v;
            varint(g, f.end, &j, &v);
            if (nd >= t->ndim || (int64_t)v != t->shape[nd]) bad_dims = 1;
            nd++;
        } else if (f.num == 1 && f.wt == 2) {
            size_t j = f.body;
            while (j < f.end) {
                uint64_t v;
                if (varint(g, f.end, &j, &v)) return lrdc_fail(e, "LRDC graph record is not an ONNX ModelProto (bad dims)");
                if (nd >= t->ndim || (int64_t)v != t->shape[nd]) bad_dims = 1;
                nd++;
            }
        } else if (f.num == 2 && f.wt == 0) {
            size_t j = f.body;
            uint64_t v;
            varint(g, f.end, &j, &v);
            dtype = (int32_t)(uint32_t)v;
        } else if (f.num == 9) {
            has_data = 1;
        } else if ((f.num == 4 || f.num == 5 || f.num == 7) && (f.wt != 2 || f.end > f.body)) {
            has_data = 1;
        }
    }
    if (dtype != t->onnx_type || bad_dims || nd != t->ndim)
        return lrdc_fail(e, "LRDC tensor '%.*s': dtype/shape disagree with the graph's initializer", (int)(t->name_len > 200 ? 200 : t->name_len), t->name);
    if (has_data) return lrdc_fail(e, "LRDC tensor '%.*s' is stored twice (graph initializer still has data)", (int)(t->name_len > 200 ? 200 : t->name_len), t->name);
    return 0;
}

int lrdc_onnx_join(const uint8_t *g, size_t glen, const lrdc_tensor *t, size_t nt, uint8_t **out, size_t *out_n,
                   lrdc_err *e) {
    size_t i = 0, ngraph = 0, ninit = 0, k, gbody = 0, gend = 0, gstart = 0, gtag = 0;
    field f;
    init *inits = NULL, **sorted = NULL;
    uint64_t graph_new, total;
    uint8_t *o, *w;
    int rc = -1;
    *out = NULL;
    *out_n = 0;
    /* ModelProto: exactly one graph (field 7). */
    while (i < glen) {
        if (next_field(g, glen, &i, &f)) return lrdc_fail(e, "LRDC graph record is not an ONNX ModelProto (malformed wire data)");
        if (f.num == 7) {
            if (f.wt != 2 || ngraph) return lrdc_fail(e, "LRDC graph record is not a canonical ModelProto (graph field repeated or mistyped)");
            ngraph++;
            gstart = f.start; gtag = f.tag_len; gbody = f.body; gend = f.end;
        }
    }
    if (nt == 0) {
        *out = (uint8_t *)malloc(glen ? glen : 1);
        if (!*out) return lrdc_oom(e);
        if (glen) memcpy(*out, g, glen);
        *out_n = glen;
        return 0;
    }
    if (!ngraph) return lrdc_fail(e, "LRDC tensor '%.*s' has no matching initializer in the graph", (int)(t[0].name_len > 200 ? 200 : t[0].name_len), t[0].name);
    /* GraphProto: its initializers (field 5). */
    for (i = gbody; i < gend;) {
        if (next_field(g, gend, &i, &f)) return lrdc_fail(e, "LRDC graph record is not an ONNX ModelProto (malformed graph)");
        if (f.num == 5 && f.wt == 2) ninit++;
    }
    inits = (init *)calloc(ninit ? ninit : 1, sizeof(init));
    sorted = (init **)calloc(ninit ? ninit : 1, sizeof(init *));
    if (!inits || !sorted) { lrdc_oom(e); goto done; }
    for (i = gbody, k = 0; i < gend;) {
        next_field(g, gend, &i, &f);
        if (f.num == 5 && f.wt == 2) {
            init *in = &inits[k];
            size_t j = f.body;
            field h;
            in->start = f.start; in->body = f.body; in->end = f.end; in->rec = -1; in->order = k;
            in->insert = f.end;
            while (j < f.end) {
                if (next_field(g, f.end, &j, &h)) { lrdc_fail(e, "LRDC graph record is not an ONNX ModelProto (bad initializer)"); goto done; }
                if (h.num == 8 && h.wt == 2) { in->name = g + h.body; in->name_len = h.end - h.body; }
                if (in->insert == f.end && (h.num > 9 || !tensor_field_known(h.num))) in->insert = h.start;
            }
            if (!in->name) in->name = g + f.body; /* no name: an empty one */
            sorted[k] = in;
            k++;
        }
    }
    qsort(sorted, ninit, sizeof(init *), cmp_init);
    /* Each record goes to the last initializer of its name (Python builds {name: tensor}, the last one wins). */
    for (k = 0; k < nt; k++) {
        size_t lo = 0, hi = ninit;
        init key, *kp = &key;
        key.name = (const uint8_t *)t[k].name; key.name_len = t[k].name_len; key.order = (size_t)-1;
        while (lo < hi) { /* first entry greater than (name, +inf): the one before it is the last of that name */
            size_t mid = lo + (hi - lo) / 2;
            if (cmp_init(&sorted[mid], &kp) <= 0) lo = mid + 1;
            else hi = mid;
        }
        if (lo == 0 || sorted[lo - 1]->name_len != t[k].name_len || memcmp(sorted[lo - 1]->name, t[k].name, t[k].name_len)) {
            lrdc_fail(e, "LRDC tensor '%.*s' has no matching initializer in the graph", (int)(t[k].name_len > 200 ? 200 : t[k].name_len), t[k].name);
            goto done;
        }
        if (check_tensor(g, sorted[lo - 1], &t[k], e)) goto done;
        sorted[lo - 1]->rec = (long)k;
    }
    /* Sizes first (bounded by the protobuf limit), then one allocation. */
    graph_new = gend - gbody;
    for (k = 0; k < ninit; k++) {
        if (inits[k].rec >= 0) {
            uint64_t nb = t[inits[k].rec].nbytes;
            uint64_t old_body = inits[k].end - inits[k].body;
            uint64_t new_body = old_body + 1 + varint_len(nb) + nb;
            uint64_t old_len_bytes = inits[k].body - inits[k].start;
            size_t tag_len = 0, j = inits[k].start;
            uint64_t tag;
            varint(g, inits[k].end, &j, &tag);
            tag_len = j - inits[k].start;
            graph_new += tag_len + varint_len(new_body) + new_body - (old_len_bytes + old_body);
            if (graph_new > MAX_PROTO) { lrdc_fail(e, "rebuilt ONNX model would exceed protobuf's 2 GiB limit"); goto done; }
        }
    }
    total = (uint64_t)glen - (gend - gstart) + gtag + varint_len(graph_new) + graph_new;
    if (total > MAX_PROTO) { lrdc_fail(e, "rebuilt ONNX model would exceed protobuf's 2 GiB limit"); goto done; }
    o = (uint8_t *)malloc((size_t)total ? (size_t)total : 1);
    if (!o) { lrdc_oom(e); goto done; }
    w = o;
    memcpy(w, g, gstart + gtag); w += gstart + gtag;
    w = put_varint(w, graph_new);
    {
        size_t at = gbody;
        for (k = 0; k < ninit; k++) {
            const init *in = &inits[k];
            const lrdc_tensor *r;
            size_t j = in->start, tag_len;
            uint64_t tag, new_body;
            if (in->rec < 0) continue;
            r = &t[in->rec];
            varint(g, in->end, &j, &tag);
            tag_len = j - in->start;
            memcpy(w, g + at, in->start - at); w += in->start - at; /* everything up to this initializer */
            memcpy(w, g + in->start, tag_len); w += tag_len;
            new_body = (in->end - in->body) + 1 + varint_len(r->nbytes) + r->nbytes;
            w = put_varint(w, new_body);
            memcpy(w, g + in->body, in->insert - in->body); w += in->insert - in->body;
            *w++ = 0x4A; /* field 9 (raw_data), length-delimited */
            w = put_varint(w, r->nbytes);
            if (r->nbytes) { memcpy(w, r->data, r->nbytes); w += r->nbytes; }
            memcpy(w, g + in->insert, in->end - in->insert); w += in->end - in->insert;
            at = in->end;
        }
        memcpy(w, g + at, gend - at); w += gend - at;
    }
    memcpy(w, g + gend, glen - gend); w += glen - gend;
    if ((uint64_t)(w - o) != total) { free(o); lrdc_fail(e, "internal error: rebuilt size mismatch"); goto done; }
    *out = o;
    *out_n = (size_t)total;
    rc = 0;
done:
    free(inits);
    free(sorted);
    return rc;
}
