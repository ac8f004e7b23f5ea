// A hash map from byte strings (any bytes, NUL included) to int values: open
// addressing with linear probing, grown by doubling so that at most half the
// slots are used. The map keeps its own copy of every key. No removal and no
// iteration: the tokenizer's vocabulary is built once and then only read.
#ifndef EP_STRMAP_H
#define EP_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ep_strmap ep_strmap;

// An empty map sized for n_hint keys without growing (0: the smallest size).
ep_strmap *ep_strmap_init(size_t n_hint);
void ep_strmap_free(ep_strmap *m); // NULL: nothing

// Adds key[0..len) -> val and returns true; when the key is there already,
// returns false and leaves its value alone (the first one put wins).
// len must be below 4 GiB (an invariant: callers bound what they read).
bool ep_strmap_put(ep_strmap *m, const char *key, size_t len, int val);
// The value of key[0..len) into *val and true; false (*val untouched) if absent.
bool ep_strmap_get(const ep_strmap *m, const char *key, size_t len, int *val);

size_t ep_strmap_count(const ep_strmap *m); // keys held
size_t ep_strmap_cap(const ep_strmap *m);   // slots (a power of two, >= 2 * count)

// The hash the map uses (FNV-1a, high bits folded down, since the map takes
// the low bits); public so that tests can build keys that collide.
uint64_t ep_strmap_hash(const char *key, size_t len);

#endif
