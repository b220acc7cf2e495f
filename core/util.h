/* util.h - small shared pieces of the core library: error messages, a
 * deterministic random number generator, durable file writes, timing.
 *
 * Error convention: functions return 0 on success and a negative value on
 * failure, after writing a message a user can read into `err` (ERR_LEN bytes).
 * core/ never exits the process. */
#ifndef DISTILLD_UTIL_H
#define DISTILLD_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define ERR_LEN 512

/* printf-style: write a message into err (if err is not NULL); returns -1 so a
 * caller can `return set_error(err, "...")`. */
int set_error(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that never returns NULL for a programmer-sized request: aborts
 * with a message when the machine is out of memory. Zero-filled. */
void *xcalloc(size_t count, size_t size);

/* Random numbers: a 64-bit state advanced by splitmix64. Streams are derived
 * from (seed, purpose, index) so that any step's randomness can be recomputed
 * without replaying earlier steps. */
typedef struct { uint64_t state; } Rng;
Rng rng_derive(uint64_t seed, uint64_t purpose, uint64_t index);
uint64_t rng_next(Rng *rng);
float rng_uniform(Rng *rng);           /* [0, 1) */
double rng_normal(Rng *rng);           /* standard normal (Box-Muller) */
uint32_t rng_below(Rng *rng, uint32_t n); /* uniform in [0, n) */

/* Durable replace: write `size` bytes to a temp file next to `path`, fsync,
 * rename over `path`, fsync the directory. A crash leaves either the old file
 * or the new one, never a torn one. */
int write_file_atomic(const char *path, const void *data, size_t size, char *err);

/* Read a whole file into a malloc'd buffer. */
int read_file_all(const char *path, unsigned char **data, size_t *size, char *err);

double now_seconds(void); /* monotonic clock */

#endif
