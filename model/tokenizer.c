// tokenizer.json loading for byte-level BPE (Qwen3, DeepSeek-V2): what the
// file may hold (docs/tokenizer.md), the vocabulary, merge and added-token
// tables, and the queries. Encoding and decoding are tokenizer_encode.c's,
// the chat templates chat.c's, the synthetic tokenizer tokenizer_synth.c's.
#include "model/tokenizer_impl.h"
#include "common/json_util.h"
#include "common/strmap.h"
#include "common/utf8.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Ids beyond this are refused: no real vocabulary comes near, and it keeps a
// hostile file from making us allocate gigabytes of per-id tables.
#define TK_MAX_IDS (1 << 24)

// ---- the GPT-2 byte <-> character map ----------------------------------------
// Printable bytes stand for themselves; the 68 others are given the code
// points 256, 257, ... in byte order, so every byte is a visible character.

static bool bl_self(int b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

uint32_t ep_tk_byte_char(int b)
{
    if (bl_self(b)) return (uint32_t)b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++)
        n += !bl_self(i);
    return 256 + n;
}

// The byte a code point stands for, -1 when it is not one of the 256.
static int bl_char_byte(uint32_t cp)
{
    if (cp < 256) return bl_self((int)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t n = cp - 256;
    for (int b = 0; b < 256; b++)
        if (!bl_self(b) && n-- == 0) return b;
    return -1;
}

size_t ep_tk_byte_key(const unsigned char *s, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += ep_utf8_encode(ep_tk_byte_char(s[i]), out + k); // below U+0800: 1 or 2 bytes
    }
    return k;
}

// ---- the merge table --------------------------------------------------------
// Fixed capacity (a power of two, at least twice the merges), linear probing,
// keyed by the id pair. The vocabulary is a common/strmap.h map.

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < 2 * n)
        c <<= 1;
    return c;
}

int ep_tk_vocab_id(const ep_tokenizer *t, const char *k, size_t len)
{
    int id;
    return t->vocab && ep_strmap_get(t->vocab, k, len, &id) ? id : -1;
}

const tk_pair *ep_tk_pair_get(const ep_tokenizer *t, int a, int b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_u64(key) & (t->pair_cap - 1);; i = (i + 1) & (t->pair_cap - 1)) {
        const tk_pair *s = &t->pairs[i];
        if (s->rank < 0) return NULL;
        if (s->key == key) return s;
    }
}

// A later duplicate overwrites the earlier one, as HF's HashMap collect does.
static void pair_put(ep_tokenizer *t, int a, int b, int rank, int id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_u64(key) & (t->pair_cap - 1);; i = (i + 1) & (t->pair_cap - 1)) {
        tk_pair *s = &t->pairs[i];
        if (s->rank < 0 || s->key == key) {
            *s = (tk_pair){key, rank, id};
            return;
        }
    }
}

static uint32_t pool_add(ep_tokenizer *t, const char *s, size_t n)
{
    if (t->pool_len + n + 1 > t->pool_cap) {
        t->pool_cap = EP_MAX(t->pool_cap * 2, t->pool_len + n + 1 + 4096);
        t->pool = ep_xrealloc(t->pool, t->pool_cap);
    }
    uint32_t off = (uint32_t)t->pool_len;
    memcpy(t->pool + off, s, n);
    t->pool[off + n] = '\0';
    t->pool_len += n + 1;
    return off;
}

// ---- loading -----------------------------------------------------------------

static const char *jtype(const json_t *v)
{
    return v ? ep_json_type_name(v) : "nothing";
}

// The string at key or NULL (absent/null); a non-string is an error.
static ep_status get_str(const char *name, const json_t *obj, const char *where, const char *key,
                         bool required, const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return ep_errorf(EP_ERR_FORMAT, "%s: key '%s%s': expected a string, found %s", name,
                             where, key, v ? "null" : "no such key");
        return EP_OK;
    }
    if (!json_is_string(v))
        return ep_errorf(EP_ERR_FORMAT, "%s: key '%s%s': expected a string, found %s", name, where,
                         key, jtype(v));
    *out = json_string_value(v);
    return EP_OK;
}

static ep_status get_bool(const char *name, const json_t *obj, const char *where, const char *key,
                          bool dflt, bool *out)
{
    json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v || json_is_null(v)) return EP_OK;
    if (!json_is_boolean(v))
        return ep_errorf(EP_ERR_FORMAT, "%s: key '%s%s': expected true or false, found %s", name,
                         where, key, jtype(v));
    *out = json_is_true(v);
    return EP_OK;
}

static ep_status load_normalizer(ep_tokenizer *t, const json_t *n, const char *where, int depth)
{
    if (!n || json_is_null(n)) return EP_OK;
    if (!json_is_object(n) || depth > 8)
        return ep_errorf(EP_ERR_FORMAT, "%s: key '%s': expected a normalizer object, found %s",
                         t->name, where, depth > 8 ? "too deep a nesting" : jtype(n));
    const char *type;
    ep_status st = get_str(t->name, n, "normalizer.", "type", true, &type);
    if (st) return st;
    if (!strcmp(type, "NFC")) {
        t->nfc = true;
        return EP_OK;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return ep_errorf(EP_ERR_FORMAT, "%s: key '%s.normalizers': expected an array, found %s",
                             t->name, where, jtype(list));
        for (size_t i = 0; i < json_array_size(list); i++) {
            st = load_normalizer(t, json_array_get(list, i), where, depth + 1);
            if (st) return st;
        }
        return EP_OK;
    }
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "%s: key '%s.type': expected \"NFC\", \"Sequence\" or null, found \"%s\" "
                     "(not implemented)",
                     t->name, where, type);
}

// HF compiles these patterns with Oniguruma (Ruby syntax); PCRE2 reads them
// the same except for a few escapes, rewritten here: \s is Oniguruma's
// White_Space list (PCRE2 adds U+180E), \h/\H are hex digits (PCRE2:
// horizontal space); and ^/$ are line anchors (PCRE2_MULTILINE). \S inside
// a character class is left to PCRE2 (no tokenizer we know writes it).
#define ONIG_SPACE                                                                                 \
    "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}"       \
    "\\x{3000}"
#define ONIG_HEX "0-9a-fA-F"

static char *onig_to_pcre2(const char *p, size_t n, size_t *out_len)
{
    size_t cap = n * 4 + 256, k = 0;
    char *o = ep_xmalloc(cap);
    bool in_class = false;
#define PUT(str)                                                                                   \
    do {                                                                                           \
        size_t l_ = strlen(str);                                                                   \
        if (k + l_ + 8 > cap) o = ep_xrealloc(o, cap = 2 * cap + l_);                              \
        memcpy(o + k, str, l_);                                                                    \
        k += l_;                                                                                   \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (k + 16 > cap) o = ep_xrealloc(o, cap *= 2);
        if (c == '\\' && i + 1 < n) {
            char e = p[++i];
            if (e == 's')
                PUT(in_class ? ONIG_SPACE : "[" ONIG_SPACE "]");
            else if (e == 'S' && !in_class)
                PUT("[^" ONIG_SPACE "]");
            else if (e == 'h')
                PUT(in_class ? ONIG_HEX : "[" ONIG_HEX "]");
            else if (e == 'H' && !in_class)
                PUT("[^" ONIG_HEX "]");
            else
                o[k++] = c, o[k++] = e;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            o[k++] = c;
            // a ']' first (after an optional '^') is a literal
            if (i + 1 < n && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[k++] = p[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') { // [:alpha:]
            const char *end = memchr(p + i + 2, ']', n - i - 2);
            size_t l = end ? (size_t)(end - (p + i)) + 1 : 1;
            if (k + l + 8 > cap) o = ep_xrealloc(o, cap = 2 * cap + l);
            memcpy(o + k, p + i, l);
            k += l;
            i += l - 1;
            continue;
        }
        if (in_class && c == ']') in_class = false;
        o[k++] = c;
    }
#undef PUT
    o[k] = '\0';
    *out_len = k;
    return o;
}

static ep_status compile_regex(ep_tokenizer *t, const char *pat, size_t len, bool literal,
                               const char *where)
{
    if (t->n_splits >= TK_MAX_SPLITS)
        return ep_errorf(EP_ERR_UNSUPPORTED, "%s: key '%s': more than %d Split pre-tokenizers",
                         t->name, where, TK_MAX_SPLITS);
    int err;
    PCRE2_SIZE eoff;
    size_t plen = len;
    char *p = literal ? NULL : onig_to_pcre2(pat, len, &plen);
    pcre2_code *re = pcre2_compile(
        (PCRE2_SPTR)(p ? p : pat), plen,
        PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : PCRE2_MULTILINE), &err, &eoff, NULL);
    free(p);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: key '%s': expected a regular expression PCRE2 accepts, found "
                         "\"%.80s\" (%s at offset %zu of its PCRE2 form)",
                         t->name, where, pat, (const char *)msg, (size_t)eoff);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // interpreted when JIT is unavailable
    t->splits[t->n_splits++] = re;
    return EP_OK;
}

static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static ep_status load_pretok_one(ep_tokenizer *t, const json_t *p, const char *where, bool *have_bl)
{
    if (!json_is_object(p))
        return ep_errorf(EP_ERR_FORMAT, "%s: key '%s': expected a pre-tokenizer object, found %s",
                         t->name, where, jtype(p));
    const char *type;
    ep_status st = get_str(t->name, p, "pre_tokenizer.", "type", true, &type);
    if (st) return st;
    if (*have_bl)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key '%s': expected ByteLevel to be the last pre-tokenizer, found "
                         "\"%s\" after it",
                         t->name, where, type);
    if (!strcmp(type, "Split")) {
        const char *beh;
        bool invert;
        if ((st = get_str(t->name, p, "pre_tokenizer.Split.", "behavior", true, &beh)) ||
            (st = get_bool(t->name, p, "pre_tokenizer.Split.", "invert", false, &invert)))
            return st;
        if (strcmp(beh, "Isolated") || invert)
            return ep_errorf(EP_ERR_UNSUPPORTED,
                             "%s: key '%s': expected Split behavior \"Isolated\", invert false, "
                             "found \"%s\", invert %s (not implemented)",
                             t->name, where, beh, invert ? "true" : "false");
        json_t *pat = json_object_get(p, "pattern");
        json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        json_t *s = rx ? rx : lit;
        if (!json_is_object(pat) || !json_is_string(s))
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key '%s.pattern': expected {\"Regex\": string} or {\"String\": "
                             "string}, found %s",
                             t->name, where, jtype(pat));
        return compile_regex(t, json_string_value(s), json_string_length(s), s == lit, where);
    }
    if (!strcmp(type, "ByteLevel")) {
        bool prefix, use_regex;
        if ((st = get_bool(t->name, p, "pre_tokenizer.ByteLevel.", "add_prefix_space", true,
                           &prefix)) ||
            (st = get_bool(t->name, p, "pre_tokenizer.ByteLevel.", "use_regex", true, &use_regex)))
            return st;
        if (prefix)
            return ep_errorf(EP_ERR_UNSUPPORTED,
                             "%s: key '%s.add_prefix_space': expected false, found true (not "
                             "implemented)",
                             t->name, where);
        *have_bl = true;
        if (use_regex) return compile_regex(t, GPT2_REGEX, sizeof GPT2_REGEX - 1, false, where);
        return EP_OK;
    }
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "%s: key '%s.type': expected \"Split\", \"ByteLevel\" or \"Sequence\", found "
                     "\"%s\" (not implemented)",
                     t->name, where, type);
}

static ep_status load_pretokenizer(ep_tokenizer *t, const json_t *p)
{
    bool have_bl = false;
    ep_status st;
    if (!p || json_is_null(p))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'pre_tokenizer': expected a ByteLevel pre-tokenizer (alone or "
                         "last in a Sequence), found %s",
                         t->name, p ? "null" : "no such key");
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key 'pre_tokenizer.pretokenizers': expected an array, found %s",
                             t->name, jtype(list));
        for (size_t i = 0; i < json_array_size(list); i++) {
            char where[64];
            snprintf(where, sizeof where, "pre_tokenizer.pretokenizers[%zu]", i);
            st = load_pretok_one(t, json_array_get(list, i), where, &have_bl);
            if (st) return st;
        }
    } else {
        st = load_pretok_one(t, p, "pre_tokenizer", &have_bl);
        if (st) return st;
    }
    if (!have_bl)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'pre_tokenizer': expected a ByteLevel pre-tokenizer (alone or "
                         "last in a Sequence), found none (only byte-level BPE is implemented)",
                         t->name);
    return EP_OK;
}

static ep_status load_decoder(ep_tokenizer *t, const json_t *d)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type || strcmp(type, "ByteLevel"))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'decoder.type': expected \"ByteLevel\", found %s%s%s", t->name,
                         type ? "\"" : "", type ? type : jtype(d), type ? "\"" : "");
    return EP_OK;
}

// The bytes a token string decodes to: HF's ByteLevel decoder maps each
// character back to its byte, and keeps the raw UTF-8 of a token holding any
// character outside the map (fullwidth DeepSeek specials, for instance).
static uint32_t add_piece(ep_tokenizer *t, const char *s, size_t n, uint32_t *len)
{
    char *tmp = ep_xmalloc(n + 1);
    size_t k = 0, i = 0;
    uint32_t cp;
    while (i < n) {
        size_t l = ep_utf8_next((const unsigned char *)s + i, n - i, &cp);
        int b = l ? bl_char_byte(cp) : -1;
        if (b < 0) break;
        tmp[k++] = (char)b;
        i += l;
    }
    uint32_t off = i == n ? pool_add(t, tmp, k) : pool_add(t, s, n);
    *len = (uint32_t)(i == n ? k : n);
    free(tmp);
    return off;
}

static ep_status check_id(const ep_tokenizer *t, const json_t *v, const char *key, const char *tok,
                          int *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= TK_MAX_IDS)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: key '%s' (token \"%.60s\"): expected an id in [0, %d), found %s",
                         t->name, key, tok, TK_MAX_IDS,
                         json_is_integer(v) ? "an integer out of range" : jtype(v));
    *id = (int)json_integer_value(v);
    return EP_OK;
}

static ep_status load_added(ep_tokenizer *t, const json_t *list)
{
    if (!list || json_is_null(list)) return EP_OK;
    if (!json_is_array(list))
        return ep_errorf(EP_ERR_FORMAT, "%s: key 'added_tokens': expected an array, found %s",
                         t->name, jtype(list));
    t->n_added = (int)json_array_size(list);
    t->added = ep_xcalloc((size_t)t->n_added + 1, sizeof *t->added);
    for (int i = 0; i < t->n_added; i++) {
        json_t *a = json_array_get(list, (size_t)i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%d].", i);
        if (!json_is_object(a))
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key 'added_tokens[%d]': expected an object, "
                             "found %s",
                             t->name, i, jtype(a));
        const char *content;
        struct tk_added *x = &t->added[i];
        ep_status st = get_str(t->name, a, where, "content", true, &content);
        if (st) return st;
        size_t clen = json_string_length(json_object_get(a, "content"));
        if (clen == 0)
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key '%scontent': expected a non-empty string, "
                             "found \"\"",
                             t->name, where);
        char idkey[80];
        snprintf(idkey, sizeof idkey, "%sid", where);
        if ((st = check_id(t, json_object_get(a, "id"), idkey, content, &x->id)) ||
            (st = get_bool(t->name, a, where, "special", false, &x->special)) ||
            (st = get_bool(t->name, a, where, "lstrip", false, &x->lstrip)) ||
            (st = get_bool(t->name, a, where, "rstrip", false, &x->rstrip)) ||
            (st = get_bool(t->name, a, where, "single_word", false, &x->single_word)) ||
            (st = get_bool(t->name, a, where, "normalized", !x->special, &x->normalized)))
            return st;
        x->off = pool_add(t, content, clen);
        x->len = (uint32_t)clen;
    }
    return EP_OK;
}

static void trie_insert(ep_tokenizer *t, int ai)
{
    const struct tk_added *a = &t->added[ai];
    const unsigned char *s = (const unsigned char *)t->pool + a->off;
    int node = 0;
    for (uint32_t i = 0; i < a->len; i++) {
        int c = node == 0 ? t->root_child[s[i]] : t->nodes[node].child;
        if (node != 0)
            while (c && t->nodes[c].byte != s[i])
                c = t->nodes[c].sibling;
        if (!c) {
            if (t->n_nodes == t->cap_nodes) {
                t->cap_nodes = t->cap_nodes ? 2 * t->cap_nodes : 64;
                t->nodes = ep_xrealloc(t->nodes, (size_t)t->cap_nodes * sizeof *t->nodes);
            }
            c = t->n_nodes++;
            t->nodes[c] = (struct tk_node){.child = 0, .sibling = 0, .added = -1, .byte = s[i]};
            if (node == 0) {
                t->root_child[s[i]] = c;
            } else {
                t->nodes[c].sibling = t->nodes[node].child;
                t->nodes[node].child = c;
            }
        }
        node = c;
    }
    // Two entries with the same content: the first keeps it (HF dedups too).
    if (t->nodes[node].added < 0) t->nodes[node].added = ai;
}

static ep_status load_model(ep_tokenizer *t, const json_t *m, const json_t *added_list)
{
    if (!json_is_object(m))
        return ep_errorf(EP_ERR_FORMAT, "%s: key 'model': expected an object, found %s", t->name,
                         jtype(m));
    const char *type, *unk;
    bool byte_fallback;
    ep_status st;
    if ((st = get_str(t->name, m, "model.", "type", false, &type))) return st;
    if (type && strcmp(type, "BPE"))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'model.type': expected \"BPE\", found \"%s\" (only byte-level "
                         "BPE tokenizers are implemented)",
                         t->name, type);
    if ((st = get_bool(t->name, m, "model.", "byte_fallback", false, &byte_fallback)) ||
        (st = get_bool(t->name, m, "model.", "ignore_merges", false, &t->ignore_merges)) ||
        (st = get_str(t->name, m, "model.", "unk_token", false, &unk)))
        return st;
    if (byte_fallback)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'model.byte_fallback': expected false, found true (not "
                         "implemented)",
                         t->name);
    json_t *dropout = json_object_get(m, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'model.dropout': expected null or 0, found %g", t->name,
                         json_number_value(dropout));
    const char *fix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const char *s;
        if ((st = get_str(t->name, m, "model.", fix[i], false, &s))) return st;
        if (s && s[0])
            return ep_errorf(EP_ERR_UNSUPPORTED,
                             "%s: key 'model.%s': expected \"\" or null, found \"%.40s\" (not "
                             "implemented)",
                             t->name, fix[i], s);
    }

    json_t *vocab = json_object_get(m, "vocab");
    if (!json_is_object(vocab))
        return ep_errorf(EP_ERR_FORMAT, "%s: key 'model.vocab': expected an object, found %s",
                         t->name, jtype(vocab));
    if ((st = load_added(t, added_list))) return st;

    // Ids: the largest of vocab and added tokens decides n_ids.
    int max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        int id = 0;
        char where[32];
        snprintf(where, sizeof where, "model.vocab");
        if ((st = check_id(t, v, where, key, &id))) return st;
        max_id = EP_MAX(max_id, id);
    }
    for (int i = 0; i < t->n_added; i++)
        max_id = EP_MAX(max_id, t->added[i].id);
    if (max_id < 0)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: key 'model.vocab': expected at least one token, "
                         "found none",
                         t->name);
    t->n_ids = max_id + 1;
    t->piece_off = ep_xcalloc((size_t)t->n_ids, sizeof *t->piece_off);
    t->piece_len = ep_xcalloc((size_t)t->n_ids, sizeof *t->piece_len);
    t->flags = ep_xcalloc((size_t)t->n_ids, 1);

    t->vocab = ep_strmap_init(json_object_size(vocab));
    json_object_foreach(vocab, key, v)
    {
        int id = (int)json_integer_value(v);
        size_t klen = strlen(key); // jansson keys hold no NUL (it rejects \u0000 in keys)
        if (t->flags[id] & TK_PRESENT)
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key 'model.vocab' (token \"%.60s\"): expected a unique id, "
                             "found %d used twice",
                             t->name, key, id);
        ep_strmap_put(t->vocab, key, klen, id);
        t->piece_off[id] = add_piece(t, key, klen, &t->piece_len[id]);
        t->flags[id] = TK_PRESENT;
    }
    for (int i = 0; i < t->n_added; i++) {
        struct tk_added *a = &t->added[i];
        t->piece_off[a->id] = add_piece(t, t->pool + a->off, a->len, &t->piece_len[a->id]);
        t->flags[a->id] = TK_PRESENT | TK_ADDED | (a->special ? TK_SPECIAL : 0);
        trie_insert(t, i);
    }
    t->unk_id = unk ? ep_tk_vocab_id(t, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char k[2];
        unsigned char ub = (unsigned char)b;
        size_t kl = ep_tk_byte_key(&ub, 1, k);
        t->byte_id[b] = ep_tk_vocab_id(t, k, kl);
    }

    json_t *merges = json_object_get(m, "merges");
    if (!merges || json_is_null(merges))
        merges = NULL;
    else if (!json_is_array(merges))
        return ep_errorf(EP_ERR_FORMAT, "%s: key 'model.merges': expected an array, found %s",
                         t->name, jtype(merges));
    size_t nm = merges ? json_array_size(merges) : 0;
    t->pair_cap = pow2_at_least(nm);
    t->pairs = ep_xmalloc(t->pair_cap * sizeof *t->pairs);
    for (size_t i = 0; i < t->pair_cap; i++)
        t->pairs[i].rank = -1;
    if (nm > INT_MAX / 2)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: key 'model.merges': expected fewer than %d merges, "
                         "found %zu",
                         t->name, INT_MAX / 2, nm);
    char *cat = NULL;
    size_t cat_cap = 0;
    for (size_t i = 0; i < nm; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (json_is_string(e)) {
            // "a b": exactly one space (byte-level tokens hold none)
            const char *s = json_string_value(e), *sp = strchr(s, ' ');
            if (sp && !strchr(sp + 1, ' ') && sp > s && sp[1]) {
                a = s, alen = (size_t)(sp - s), b = sp + 1, blen = strlen(b);
            }
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            alen = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            blen = json_string_length(json_array_get(e, 1));
        }
        if (!a) {
            free(cat);
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: key 'model.merges[%zu]': expected \"a b\" or [\"a\", \"b\"], "
                             "found %s",
                             t->name, i, jtype(e));
        }
        if (alen + blen + 1 > cat_cap) {
            cat_cap = 2 * (alen + blen + 1);
            cat = ep_xrealloc(cat, cat_cap);
        }
        memcpy(cat, a, alen);
        memcpy(cat + alen, b, blen);
        int ia = ep_tk_vocab_id(t, a, alen), ib = ep_tk_vocab_id(t, b, blen);
        int ic = ep_tk_vocab_id(t, cat, alen + blen);
        if (ia < 0 || ib < 0 || ic < 0) {
            const char *bad = ia < 0 ? a : ib < 0 ? b : cat;
            int badlen = (int)(ia < 0 ? alen : ib < 0 ? blen : alen + blen);
            ep_status r = ep_errorf(EP_ERR_FORMAT,
                                    "%s: key 'model.merges[%zu]': expected tokens of model.vocab, "
                                    "found \"%.*s\" which is not in it",
                                    t->name, i, EP_MIN(badlen, 60), bad);
            free(cat);
            return r;
        }
        pair_put(t, ia, ib, (int)i, ic);
    }
    free(cat);
    return EP_OK;
}

ep_status ep_tokenizer_load_json(const char *json, size_t len, const char *name, ep_tokenizer **out)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return ep_errorf(EP_ERR_FORMAT, "%s: line %d column %d: expected valid JSON: %s", name,
                         jerr.line, jerr.column, jerr.text);
    ep_tokenizer *t = ep_xcalloc(1, sizeof *t);
    t->name = ep_xstrdup(name);
    t->n_nodes = 1; // the root
    t->cap_nodes = 64;
    t->nodes = ep_xmalloc((size_t)t->cap_nodes * sizeof *t->nodes);
    t->nodes[0] = (struct tk_node){.added = -1};
    ep_status st;
    if (!json_is_object(root)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s: expected a JSON object at the top, found %s", name,
                       jtype(root));
        goto err;
    }
    if ((st = load_model(t, json_object_get(root, "model"),
                         json_object_get(root, "added_tokens"))) ||
        (st = load_normalizer(t, json_object_get(root, "normalizer"), "normalizer", 0)) ||
        (st = load_pretokenizer(t, json_object_get(root, "pre_tokenizer"))) ||
        (st = load_decoder(t, json_object_get(root, "decoder"))))
        goto err;
    json_decref(root);
    *out = t;
    return EP_OK;
err:
    json_decref(root);
    ep_tokenizer_free(t);
    return st;
}

ep_status ep_tokenizer_load(const char *path, ep_tokenizer **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return ep_errorf(EP_ERR_IO, "%s: expected a regular file", path);
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        fclose(f);
        return ep_errorf(EP_ERR_NOMEM, "%s: cannot allocate %lld bytes to read it", path,
                         (long long)sb.st_size);
    }
    size_t n = fread(buf, 1, (size_t)sb.st_size, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || n != (size_t)sb.st_size) {
        free(buf);
        return ep_errorf(EP_ERR_IO, "%s: read %zu of %lld bytes", path, n, (long long)sb.st_size);
    }
    ep_status st = ep_tokenizer_load_json(buf, n, path, out);
    free(buf);
    return st;
}

ep_status ep_tokenizer_for_model(const ep_model_cfg *cfg, ep_tokenizer **out)
{
    *out = NULL;
    if (cfg->checkpoint[0]) {
        char path[1200];
        snprintf(path, sizeof path, "%s/tokenizer.json", cfg->checkpoint);
        struct stat sb;
        if (stat(path, &sb))
            return ep_errorf(EP_ERR_IO,
                             "model '%s': expected the tokenizer at %s, found no such file "
                             "(real checkpoints ship it; `epserve make-model` writes one)",
                             cfg->name, path);
        return ep_tokenizer_load(path, out);
    }
    char *json;
    size_t len;
    ep_status st = ep_tokenizer_synth_json(cfg, &json, &len);
    if (st) return st;
    char name[128];
    snprintf(name, sizeof name, "synthetic tokenizer of %s", cfg->name);
    st = ep_tokenizer_load_json(json, len, name, out);
    free(json);
    return st;
}

void ep_tokenizer_free(ep_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_splits; i++)
        pcre2_code_free(t->splits[i]);
    free(t->name);
    free(t->piece_off);
    free(t->piece_len);
    free(t->flags);
    free(t->pool);
    ep_strmap_free(t->vocab);
    free(t->pairs);
    free(t->added);
    free(t->nodes);
    free(t);
}

// ---- queries -----------------------------------------------------------------

int ep_tokenizer_n_ids(const ep_tokenizer *t)
{
    return t->n_ids;
}

const char *ep_tokenizer_piece(const ep_tokenizer *t, int id, size_t *len)
{
    if (id < 0 || id >= t->n_ids || !(t->flags[id] & TK_PRESENT)) return NULL;
    *len = t->piece_len[id];
    return t->pool + t->piece_off[id];
}

bool ep_tokenizer_is_special(const ep_tokenizer *t, int id)
{
    return id >= 0 && id < t->n_ids && (t->flags[id] & TK_SPECIAL);
}

int ep_tokenizer_find(const ep_tokenizer *t, const char *content)
{
    size_t n = strlen(content);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->pool + t->added[i].off, content, n))
            return t->added[i].id;
    return ep_tk_vocab_id(t, content, n);
}

int ep_tokenizer_eos_ids(const ep_tokenizer *t, int *ids, int max)
{
    static const char *const eos[] = {"<|im_end|>", "<|endoftext|>",
                                      "<\xef\xbd\x9c"
                                      "end\xe2\x96\x81of\xe2\x96\x81sentence"
                                      "\xef\xbd\x9c>"};
    int n = 0;
    for (size_t i = 0; i < EP_ARRAY_LEN(eos) && n < max; i++) {
        int id = ep_tokenizer_find(t, eos[i]);
        if (id >= 0) ids[n++] = id;
    }
    return n;
}
