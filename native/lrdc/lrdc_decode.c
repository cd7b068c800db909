/* lrdc_decode.c - CLI: lrdc-decode IN.lrdc OUT.onnx
 * Exit codes: 0 written; 1 invalid container (nothing written); 2 usage; 3 I/O error; 4 out of memory.
 * The output is written to OUT.onnx.tmp-<pid> and renamed over OUT.onnx only after a complete decode, so a failed
 * run leaves no output file. Errors are one line on stderr: "lrdc-decode: <message>". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lrdc.h"

static int die(int code, const char *what, const char *detail) {
    fprintf(stderr, "lrdc-decode: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return code;
}

int main(int argc, char **argv) {
    FILE *f;
    uint8_t *in = NULL, *out = NULL;
    size_t n = 0, cap = 0, out_n = 0, pathlen;
    char err[512], *tmp;
    int rc;
    if (argc != 3) return die(2, "usage: lrdc-decode IN.lrdc OUT.onnx", NULL);
    f = fopen(argv[1], "rb");
    if (!f) return die(3, argv[1], strerror(errno));
    for (;;) { /* read the whole file, refusing anything over the decoder's input cap */
        size_t got;
        if (n == cap) {
            /* Grow to at most one byte past the cap (64-bit arithmetic: no overflow on 32-bit size_t). */
            uint64_t want = cap ? (uint64_t)cap * 2 : (uint64_t)1 << 16;
            size_t nc;
            uint8_t *nb;
            if ((uint64_t)cap > LRDC_MAX_INPUT_BYTES) { fclose(f); free(in); return die(1, argv[1], "larger than any container this decoder accepts"); }
            if (want > LRDC_MAX_INPUT_BYTES + 1) want = LRDC_MAX_INPUT_BYTES + 1;
            if (want > (uint64_t)(size_t)-1) { fclose(f); free(in); return die(4, argv[1], "out of memory"); }
            nc = (size_t)want;
            nb = (uint8_t *)realloc(in, nc);
            if (!nb) { fclose(f); free(in); return die(4, argv[1], "out of memory"); }
            in = nb;
            cap = nc;
        }
        got = fread(in + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { fclose(f); free(in); return die(3, argv[1], "read error"); }
    fclose(f);
    rc = lrdc_decode(in, n, &out, &out_n, err, sizeof err);
    free(in);
    if (rc != LRDC_OK) return die(rc == LRDC_ENOMEM ? 4 : 1, argv[1], err);
    pathlen = strlen(argv[2]);
    tmp = (char *)malloc(pathlen + 32);
    if (!tmp) { lrdc_free(out); return die(4, "out of memory", NULL); }
    srand((unsigned)time(NULL) ^ (unsigned)clock());
    snprintf(tmp, pathlen + 32, "%s.tmp-%lu", argv[2], (unsigned long)rand());
    f = fopen(tmp, "wb");
    if (!f) { rc = die(3, tmp, strerror(errno)); free(tmp); lrdc_free(out); return rc; }
    if (fwrite(out, 1, out_n, f) != out_n || fflush(f) != 0) {
        fclose(f); remove(tmp); free(tmp); lrdc_free(out);
        return die(3, argv[2], "write error");
    }
    if (fclose(f) != 0 || rename(tmp, argv[2]) != 0) {
        rc = die(3, argv[2], strerror(errno));
        remove(tmp); free(tmp); lrdc_free(out);
        return rc;
    }
    free(tmp);
    lrdc_free(out);
    return 0;
}
