// libFuzzer target: a tokenizer.json (byte-level BPE). What
// ep_tokenizer_load_json accepts must encode a few texts (fixed ones and the
// input's last bytes) to ids that all decode, byte-exactly concatenating
// their pieces, and must refuse invalid UTF-8 as EP_ERR_ARG.
#include "fuzz_util.h"
#include "model/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_log_set_level(EP_LOG_ERROR);
    return 0;
}

static void check_encode(const ep_tokenizer *t, const char *s, size_t n, bool special)
{
    int *ids, m;
    ep_status st = ep_tokenizer_encode(t, s, n, special, &ids, &m);
    // ARG: invalid UTF-8, or a byte with no token in a vocabulary that lacks some
    EP_FUZZ_CHECK(st == EP_OK || st == EP_ERR_ARG);
    if (st) return;
    EP_FUZZ_CHECK(m >= 0 && ids);
    size_t total = 0;
    for (int i = 0; i < m; i++) {
        size_t l;
        EP_FUZZ_CHECK(ep_tokenizer_piece(t, ids[i], &l) != NULL);
        total += l;
    }
    char *text;
    size_t len;
    EP_FUZZ_CHECK(ep_tokenizer_decode(t, ids, m, false, &text, &len) == EP_OK);
    EP_FUZZ_CHECK(len == total && text[len] == '\0');
    size_t off = 0;
    for (int i = 0; i < m; i++) {
        size_t l;
        const char *p = ep_tokenizer_piece(t, ids[i], &l);
        EP_FUZZ_CHECK(!memcmp(text + off, p, l));
        off += l;
    }
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ep_tokenizer *t;
    if (ep_tokenizer_load_json((const char *)data, size, "fuzz.json", &t) != EP_OK) {
        EP_FUZZ_CHECK(t == NULL && ep_last_error()[0]);
        return 0;
    }
    ep_fuzz_accepted();
    EP_FUZZ_CHECK(ep_tokenizer_n_ids(t) > 0);
    static const char *const texts[] = {"Hello, world! It's 2024.\n\n  x",
                                        "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 e\xcc\x81",
                                        "<|im_start|>user\nhi<|im_end|>",
                                        "   \t\r\n",
                                        "abcab aab 12",
                                        "\xff\xfe"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        check_encode(t, texts[i], strlen(texts[i]), true);
        check_encode(t, texts[i], strlen(texts[i]), false);
    }
    size_t tail = size < 48 ? size : 48;
    check_encode(t, (const char *)data + size - tail, tail, true);
    int eos[8];
    int ne = ep_tokenizer_eos_ids(t, eos, 8);
    for (int i = 0; i < ne; i++)
        EP_FUZZ_CHECK(eos[i] >= 0 && eos[i] < ep_tokenizer_n_ids(t));
    ep_tokenizer_free(t);
    return 0;
}
