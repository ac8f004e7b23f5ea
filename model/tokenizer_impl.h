// Inside the tokenizer, shared by its files (tokenizer.c loads,
// tokenizer_encode.c encodes, tokenizer_synth.c trains) and the `tokenize`
// command: the struct, the GPT-2 byte-level character map (UTF-8 itself is
// common/utf8.h).
// Not part of the public API (model/tokenizer.h).
#ifndef EP_TOKENIZER_IMPL_H
#define EP_TOKENIZER_IMPL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include "common/strmap.h"
#include "model/tokenizer.h"

#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#define TK_MAX_SPLITS 16

enum { TK_PRESENT = 1, TK_SPECIAL = 2, TK_ADDED = 4 }; // per-id flags

// ---- tables ------------------------------------------------------------------
// The merge table: a hash map of fixed capacity (a power of two, at least
// twice the merges), linear probing. The vocabulary is a common/strmap.h map.
typedef struct {
    uint64_t key; // a << 32 | b
    int32_t rank; // -1: empty
    int32_t id;
} tk_pair;

struct ep_tokenizer {
    char *name;
    int n_ids;
    // per id: the bytes it decodes to (in pool) and TK_* flags
    uint32_t *piece_off, *piece_len;
    uint8_t *flags;
    char *pool;
    size_t pool_len, pool_cap;

    ep_strmap *vocab; // vocab key (byte-level string as in the file) -> id
    int byte_id[256];
    tk_pair *pairs; // merge (a, b) -> rank, merged id
    size_t pair_cap;
    bool ignore_merges;
    int unk_id; // -1: none

    bool nfc;
    int n_splits; // Split regexes, then the GPT-2 one when ByteLevel use_regex
    pcre2_code *splits[TK_MAX_SPLITS + 1];

    // added tokens: a byte trie, longest match wins
    int n_added;
    struct tk_added {
        int id;
        uint32_t off, len; // content in pool
        bool special, lstrip, rstrip, single_word, normalized;
    } * added;
    struct tk_node {
        int child, sibling; // first child, next sibling (0: none; node 0 is the root)
        int added;          // index in added[], -1 when no token ends here
        unsigned char byte;
    } * nodes;
    int n_nodes, cap_nodes;
    int root_child[256];
};

// Id of a vocab key (byte-level string as in the file), -1 if none.
int ep_tk_vocab_id(const ep_tokenizer *t, const char *k, size_t len);
// The merge of (a, b), NULL if none.
const tk_pair *ep_tk_pair_get(const ep_tokenizer *t, int a, int b);

// ---- byte level --------------------------------------------------------------

// The character byte b stands for in byte-level vocabularies (Ġ for ' ').
uint32_t ep_tk_byte_char(int b);
// Writes the byte-level string of s[0..n) to out (room for 2n bytes); returns its length.
size_t ep_tk_byte_key(const unsigned char *s, size_t n, char *out);

#endif
