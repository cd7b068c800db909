/* lrdc.h - native reference decoder for LRDC weight containers (format version 3).
 *
 * Decodes a complete `.lrdc` file held in memory into the ONNX model bytes that `lowrank-deploy unpack`
 * writes. Portable C99; depends on libc and libzstd only (the zstd coder and the zstd-coded header); inflate,
 * CRC-32 and SHA-256 are built in. See docs/lrdc-format.md for the format and for what this decoder checks. */
#ifndef LRDC_H
#define LRDC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LRDC_FORMAT_VERSION 3

/* Return codes of lrdc_decode. */
#define LRDC_OK 0
#define LRDC_EINVALID 1 /* the container is corrupt, truncated, unsupported or inconsistent */
#define LRDC_ENOMEM 2   /* an allocation failed (sizes are checked against the input before allocating) */

/* Largest input accepted: the decoded-size cap (2 GiB) + the header cap (16 MiB) + 64 MiB, as the Python reader. */
#define LRDC_MAX_INPUT_BYTES ((((uint64_t)2) << 30) + (((uint64_t)16) << 20) + (((uint64_t)64) << 20))

/* Decode the container in[0..n) into a freshly allocated ONNX model *out of *out_n bytes (free it with
 * lrdc_free). On failure returns LRDC_EINVALID or LRDC_ENOMEM, sets *out = NULL, *out_n = 0 and writes a one-line,
 * NUL-terminated message into err[0..errlen) (err may be NULL when errlen is 0). Thread-safe: no global state. */
int lrdc_decode(const uint8_t *in, size_t n, uint8_t **out, size_t *out_n, char *err, size_t errlen);

/* Release a buffer returned by lrdc_decode (NULL is fine). */
void lrdc_free(uint8_t *p);

#ifdef __cplusplus
}
#endif
#endif
