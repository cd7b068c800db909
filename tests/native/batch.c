/* batch.c - test driver for the native decoder (built by tests/native/conftest.py, usually with sanitizers).
 * Reads jobs from stdin, one per line, and prints one result line per job on stdout:
 *   "F IN OUT"         decode the container file IN with lrdc_decode; on success write OUT
 *   "C ID N IN OUT"    decode the raw payload file IN with coder ID into exactly N bytes; on success write OUT
 * Result lines: "ok" or "err <message>". Saves a process start (and a sanitizer start-up) per case. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lrdc.h"

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long sz;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = (uint8_t *)malloc(sz > 0 ? (size_t)sz : 1);
    if (b && sz > 0 && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
    fclose(f);
    *n = sz > 0 ? (size_t)sz : 0;
    return b;
}

static int spill(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    if (n && fwrite(b, 1, n, f) != n) { fclose(f); return -1; }
    return fclose(f);
}

int main(void) {
    char line[8192], in[4096], outp[4096];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = 0, out_n = 0;
        uint8_t *data, *out = NULL;
        char err[512];
        int rc;
        err[0] = 0;
        if (line[0] == 'F') {
            if (sscanf(line, "F %4095s %4095s", in, outp) != 2) return 2;
            data = slurp(in, &n);
            if (!data) return 3;
            rc = lrdc_decode(data, n, &out, &out_n, err, sizeof err);
        } else if (line[0] == 'C') {
            int id;
            unsigned long want;
            lrdc_err e;
            if (sscanf(line, "C %d %lu %4095s %4095s", &id, &want, in, outp) != 4) return 2;
            data = slurp(in, &n);
            if (!data) return 3;
            out = (uint8_t *)malloc(want ? want : 1);
            if (!out) return 4;
            e.buf = err; e.len = sizeof err; e.set = 0; e.nomem = 0;
            rc = lrdc_decode_stream(id, data, n, out, want, &e) ? 1 : 0;
            out_n = want;
        } else {
            return 2;
        }
        free(data);
        if (rc == 0) {
            if (spill(outp, out, out_n)) return 3;
            printf("ok\n");
        } else {
            printf("err %s\n", err);
        }
        free(out);
        fflush(stdout);
    }
    return 0;
}
