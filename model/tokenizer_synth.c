// The synthetic tokenizer of the tiny presets: byte-level BPE trained here,
// deterministically, on a small English + code corpus written for epserve,
// emitted as a tokenizer.json that tokenizer.c loads like any other. Not a
// good tokenizer (the corpus is a few KB), but a complete and exact one.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "common/ep.h"
#include "common/weights.h"
#include "model/tokenizer.h"
#include "model/tokenizer_impl.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Qwen3's pre-tokenizer regex (tokenizer.json of Qwen/Qwen3-*).
static const char QWEN3_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char CORPUS[] =
    "The expert-parallel server splits a mixture-of-experts model across ranks. Each rank "
    "holds some of the experts, and the router sends every token to the experts it chose. "
    "When a request arrives, the scheduler puts it in a queue; the engine takes requests "
    "from the queue, runs the forward pass, samples the next token and streams it back to "
    "the client. Tokens that finish early leave the batch so that new requests can start.\n"
    "A good tokenizer turns text into numbers and numbers back into the same text. Byte-level "
    "BPE starts from the 256 bytes and learns merges: the most frequent pair of symbols "
    "becomes a new symbol, again and again, until the vocabulary is full. Because every byte "
    "has a token, any string can be encoded, even one with emoji, accents or Chinese "
    "characters, and decoding gives back exactly what went in.\n"
    "In the morning the weather was cold and clear. We walked along the river to the old "
    "bridge, where the market sells bread, cheese, apples and fresh fish. The children "
    "played near the water while their parents talked about work, school and the price of "
    "houses. Later it started to rain, so everyone went home and made tea.\n"
    "Why does the model answer slowly? Because the first token must wait for the whole "
    "prompt to be processed, and each following token needs one more step through every "
    "layer. Latency is the time a user waits; throughput is how many tokens per second the "
    "system produces for all users together. Both matter, and they often pull in opposite "
    "directions.\n"
    "It's important to measure before you optimise. I've seen programs where the slow part "
    "wasn't where anyone expected: they'd spent weeks on the kernel while the real problem "
    "was a lock. You'll find that a simple profile, a clear question and a small test are "
    "worth more than a clever guess. We're going to check the numbers again tomorrow.\n"
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 4096 65536 3.14159 2.71828 1e-6 "
    "-17 +23 50% $19.99 12:30 2024-05-17 v1.2.3 #7 x86_64 utf-8 ASCII UNICODE\n"
    "Questions, answers, lists: first, second, third; north, south, east, west; red, green, "
    "blue; small, medium, large; yes or no? (maybe) [optional] {required} <tag> \"quoted\" "
    "'single' `code` -- dash ... ellipsis! Really?! Okay.\n"
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n"
    "/* Returns the sum of the first n integers of a. */\n"
    "static long sum_array(const int *a, size_t n)\n{\n    long total = 0;\n"
    "    for (size_t i = 0; i < n; i++) {\n        total += a[i];\n    }\n"
    "    return total;\n}\n\n"
    "int main(int argc, char **argv)\n{\n    if (argc < 2) {\n"
    "        fprintf(stderr, \"usage: %s FILE\\n\", argv[0]);\n        return 1;\n    }\n"
    "    FILE *f = fopen(argv[1], \"rb\");\n    if (!f) {\n        perror(argv[1]);\n"
    "        return 1;\n    }\n    char buf[4096];\n    size_t n, count = 0;\n"
    "    while ((n = fread(buf, 1, sizeof buf, f)) > 0) count += n;\n    fclose(f);\n"
    "    printf(\"%zu bytes\\n\", count);\n    return 0;\n}\n\n"
    "struct node {\n    int key, value;\n    struct node *left, *right;\n};\n\n"
    "typedef enum { STATUS_OK = 0, STATUS_ERROR = -1 } status_t;\n\n"
    "def tokenize(text, vocab, merges):\n    \"\"\"Split text into tokens using BPE merges.\"\"\"\n"
    "    words = text.split()\n    result = []\n    for word in words:\n"
    "        symbols = list(word.encode(\"utf-8\"))\n        while len(symbols) > 1:\n"
    "            pairs = [(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]\n"
    "            best = min(pairs, key=lambda p: merges.get(p, float(\"inf\")))\n"
    "            if best not in merges:\n                break\n"
    "            symbols = merge(symbols, best)\n        result.extend(vocab[s] for s in symbols)\n"
    "    return result\n\n"
    "class Server:\n    def __init__(self, host=\"127.0.0.1\", port=8000):\n"
    "        self.host = host\n        self.port = port\n        self.requests = []\n\n"
    "    def handle(self, request):\n        if request.method == \"GET\":\n"
    "            return {\"status\": 200, \"body\": self.health()}\n"
    "        elif request.method == \"POST\":\n            return self.generate(request.json())\n"
    "        else:\n            raise ValueError(f\"unknown method {request.method}\")\n\n"
    "import numpy as np\nx = np.arange(16, dtype=np.float32).reshape(4, 4)\n"
    "y = np.exp(x - x.max(axis=-1, keepdims=True))\nprint(y / y.sum(axis=-1, keepdims=True))\n\n"
    "for i in $(seq 1 4); do mpirun -np $i ./epserve bench --model tiny; done\n"
    "git log --oneline | head -n 5 && make -j8 && ./run_tests.sh\n"
    "{\"model\": \"tiny-qwen3-moe\", \"messages\": [{\"role\": \"user\", \"content\": "
    "\"Hello!\"}], "
    "\"max_tokens\": 32, \"temperature\": 0.7, \"stream\": true}\n"
    "SELECT name, count(*) FROM requests WHERE status = 'done' GROUP BY name ORDER BY 2 DESC;\n"
    "function add(a, b) { return a + b; }\nconst items = [1, 2, 3].map((v) => v * 2);\n"
    "let mut total: u64 = 0; for x in values.iter() { total += *x; } println!(\"{}\", total);\n"
    "Caf\xc3\xa9, na\xc3\xafve, r\xc3\xa9sum\xc3\xa9, M\xc3\xbcnchen, \xc3\xa5ngstr\xc3\xb6m, "
    "se\xc3\xb1or, \xce\xb1\xce\xb2\xce\xb3 \xce\xb4\xce\xb5\xce\xbb\xcf\x84\xce\xb1, "
    "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80, "
    "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82 "
    "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf "
    "\xf0\x9f\x98\x80 \xf0\x9f\x9a\x80 \xe2\x9c\x93 \xe2\x86\x92 \xe2\x80\x94 \xe2\x82\xac\n"
    "The history of computing is full of ideas that looked strange at first. People once "
    "thought that nobody would need more than a few computers; now there is one in every "
    "pocket. Memory used to be measured in kilobytes, then megabytes, then gigabytes. Each "
    "generation of hardware made new kinds of software possible, and each generation of "
    "software found new ways to use all of the hardware it was given.\n"
    "Please write a short summary of the following article. Translate this sentence into "
    "French. Explain the difference between a process and a thread. What is the capital of "
    "Australia? Solve for x: 3x + 7 = 22. List three reasons why sleep matters for health. "
    "Give an example of a function that reverses a string in Python.\n"
    "Sure! Here is a summary: the article describes how a small team built a reliable "
    "service by testing every change, watching their metrics and keeping the design simple. "
    "The capital of Australia is Canberra. To solve 3x + 7 = 22, subtract 7 from both sides "
    "to get 3x = 15, then divide by 3, so x = 5. Sleep helps memory, mood and the immune "
    "system.\n";

static const char *const QWEN3_SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char *const DSV2_SPECIALS[] = {"<\xef\xbd\x9c"
                                            "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                            "<\xef\xbd\x9c"
                                            "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"};

// ---- training ----------------------------------------------------------------

typedef struct {
    int *sym;
    int n;
    int freq;
} word;

typedef struct {
    const char *s;
    size_t n;
} piece;

static int piece_cmp(const void *a, const void *b)
{
    const piece *x = a, *y = b;
    int c = memcmp(x->s, y->s, EP_MIN(x->n, y->n));
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

// The corpus's pre-tokens (Qwen3's regex, gaps included), unique, with counts.
static int corpus_words(word **out)
{
    int err;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)QWEN3_REGEX, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
    EP_ASSERT(re);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t n = sizeof CORPUS - 1, at = 0, np = 0;
    piece *p = ep_xmalloc(n * sizeof *p);
    while (at < n && pcre2_match(re, (PCRE2_SPTR)CORPUS, n, at, 0, md, NULL) > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        EP_ASSERT(ov[1] > ov[0]); // Qwen3's regex matches every character
        p[np++] = (piece){CORPUS + ov[0], ov[1] - ov[0]};
        at = ov[1];
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    qsort(p, np, sizeof *p, piece_cmp);
    word *w = ep_xmalloc(np * sizeof *w);
    int nw = 0;
    for (size_t i = 0; i < np; i++) {
        if (nw && !piece_cmp(&p[i], &p[i - 1])) {
            w[nw - 1].freq++;
            continue;
        }
        w[nw].sym = ep_xmalloc(p[i].n * sizeof(int));
        for (size_t k = 0; k < p[i].n; k++)
            w[nw].sym[k] = (unsigned char)p[i].s[k];
        w[nw].n = (int)p[i].n;
        w[nw].freq = 1;
        nw++;
    }
    free(p);
    *out = w;
    return nw;
}

typedef struct {
    uint64_t key;
    int64_t count; // -1: empty
} pc_slot;

// Learns merges until n_tok tokens exist or no pair is left. tok/tok_len hold
// each token's bytes (ids < 256 are the bytes); ma/mb the merges in order.
static int train(int target, char **tok, int *tok_len, int *ma, int *mb, int *n_merges)
{
    word *w;
    int nw = corpus_words(&w);
    int n_tok = 256;
    *n_merges = 0;
    size_t cap = 1 << 16;
    pc_slot *pc = ep_xmalloc(cap * sizeof *pc);
    while (n_tok < target) {
        for (size_t i = 0; i < cap; i++)
            pc[i].count = -1;
        uint64_t best = 0;
        int64_t best_n = 0;
        for (int i = 0; i < nw; i++)
            for (int k = 0; k + 1 < w[i].n; k++) {
                uint64_t key = (uint64_t)w[i].sym[k] << 32 | (uint32_t)w[i].sym[k + 1];
                size_t h = (key * 0x9E3779B97F4A7C15ull) >> 48;
                while (pc[h].count >= 0 && pc[h].key != key)
                    h = (h + 1) & (cap - 1);
                if (pc[h].count < 0) pc[h] = (pc_slot){key, 0};
                pc[h].count += w[i].freq;
                // most frequent; ties to the smallest (a, b): deterministic
                if (pc[h].count > best_n || (pc[h].count == best_n && key < best))
                    best = key, best_n = pc[h].count;
            }
        if (!best_n) break;
        int a = (int)(best >> 32), b = (int)(uint32_t)best;
        int len = tok_len[a] + tok_len[b];
        char *s = ep_xmalloc((size_t)len);
        memcpy(s, tok[a], (size_t)tok_len[a]);
        memcpy(s + tok_len[a], tok[b], (size_t)tok_len[b]);
        int id = -1;
        for (int i = 256; i < n_tok && id < 0; i++)
            if (tok_len[i] == len && !memcmp(tok[i], s, (size_t)len)) id = i;
        if (id < 0) {
            id = n_tok++;
            tok[id] = s;
            tok_len[id] = len;
        } else {
            free(s);
        }
        ma[*n_merges] = a;
        mb[*n_merges] = b;
        (*n_merges)++;
        for (int i = 0; i < nw; i++) {
            int m = 0;
            for (int k = 0; k < w[i].n; k++) {
                if (k + 1 < w[i].n && w[i].sym[k] == a && w[i].sym[k + 1] == b) {
                    w[i].sym[m++] = id;
                    k++;
                } else {
                    w[i].sym[m++] = w[i].sym[k];
                }
            }
            w[i].n = m;
        }
    }
    free(pc);
    for (int i = 0; i < nw; i++)
        free(w[i].sym);
    free(w);
    return n_tok;
}

// ---- tokenizer.json ------------------------------------------------------------

static json_t *byte_key(const char *s, int n)
{
    char *k = ep_xmalloc(2 * (size_t)n + 1);
    size_t kl = ep_tk_byte_key((const unsigned char *)s, (size_t)n, k);
    json_t *v = json_stringn(k, kl);
    free(k);
    return v;
}

ep_status ep_tokenizer_synth_json(const ep_model_cfg *cfg, char **json, size_t *len)
{
    *json = NULL;
    *len = 0;
    bool ds = cfg->arch == EP_ARCH_DEEPSEEK_V2;
    const char *const *spec = ds ? DSV2_SPECIALS : QWEN3_SPECIALS;
    int n_spec = ds ? (int)EP_ARRAY_LEN(DSV2_SPECIALS) : (int)EP_ARRAY_LEN(QWEN3_SPECIALS);
    if (cfg->vocab < 256 + n_spec)
        return ep_errorf(EP_ERR_ARG,
                         "model '%s': vocab_size: expected at least %d for the synthetic "
                         "tokenizer (256 bytes + %d special tokens), found %d",
                         cfg->name, 256 + n_spec, n_spec, cfg->vocab);
    int target = cfg->vocab - n_spec;
    char **tok = ep_xcalloc((size_t)target, sizeof *tok);
    int *tok_len = ep_xcalloc((size_t)target, sizeof *tok_len);
    int *ma = ep_xmalloc((size_t)target * sizeof *ma),
        *mb = ep_xmalloc((size_t)target * sizeof *mb);
    char bytes[256];
    for (int b = 0; b < 256; b++) {
        bytes[b] = (char)b;
        tok[b] = &bytes[b];
        tok_len[b] = 1;
    }
    int n_merges;
    int n_tok = train(target, tok, tok_len, ma, mb, &n_merges);

    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    for (int i = 0; i < n_tok; i++) {
        json_t *k = byte_key(tok[i], tok_len[i]);
        json_object_set_new(vocab, json_string_value(k), json_integer(i));
        json_decref(k);
    }
    // A vocabulary larger than the corpus can fill (the full presets without
    // a checkpoint) gets reserved tokens: decodable, never produced by BPE.
    for (int i = n_tok, r = 0; i < target; i++) {
        char name[48];
        do
            snprintf(name, sizeof name, "<|reserved_%d|>", r++);
        while (json_object_get(vocab, name));
        json_object_set_new(vocab, name, json_integer(i));
    }
    for (int i = 0; i < n_merges; i++) {
        json_t *a = byte_key(tok[ma[i]], tok_len[ma[i]]), *b = byte_key(tok[mb[i]], tok_len[mb[i]]);
        char *m = ep_xmalloc(json_string_length(a) + json_string_length(b) + 2);
        sprintf(m, "%s %s", json_string_value(a), json_string_value(b));
        json_array_append_new(merges, json_string(m));
        free(m);
        json_decref(a);
        json_decref(b);
    }
    for (int i = 0; i < n_spec; i++)
        json_array_append_new(added,
                              json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", target + i,
                                        "content", spec[i], "single_word", 0, "lstrip", 0, "rstrip",
                                        0, "normalized", 0, "special", 1));
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:o, s:{s:s}, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, "
        "s:b}]}, s:n, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:o, "
        "s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer", "type",
        "NFC", "pre_tokenizer", "type", "Sequence", "pretokenizers", "type", "Split", "pattern",
        "Regex", QWEN3_REGEX, "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
        "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0, "post_processor", "decoder",
        "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0, "model",
        "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "",
        "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab",
        vocab, "merges", merges);
    EP_ASSERT(root);
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    EP_ASSERT(text);
    for (int i = 256; i < n_tok; i++)
        free(tok[i]);
    free(tok);
    free(tok_len);
    free(ma);
    free(mb);
    *json = text;
    *len = strlen(text);
    return EP_OK;
}

// ---- tokenizer_config.json -------------------------------------------------------

// One line each, no whitespace between tags: the same text with or without
// trim_blocks / lstrip_blocks. Qwen3: ChatML as model/chat.c writes it
// (Qwen's own template adds tools and thinking blocks, which epserve does
// not render). DeepSeek-V2: the template of DeepSeek-V2(-Lite)-Chat.
static const char QWEN3_CHAT_TEMPLATE[] =
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt "
    "%}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
static const char DSV2_CHAT_TEMPLATE[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% "
    "endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ "
    "'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ "
    "'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' "
    "%}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}{{ 'Assistant:' }}{% endif %}";

ep_status ep_tokenizer_synth_config_json(const ep_model_cfg *cfg, char **json, size_t *len)
{
    *json = NULL;
    *len = 0;
    bool ds = cfg->arch == EP_ARCH_DEEPSEEK_V2;
    const char *const *spec = ds ? DSV2_SPECIALS : QWEN3_SPECIALS;
    int n_spec = ds ? (int)EP_ARRAY_LEN(DSV2_SPECIALS) : (int)EP_ARRAY_LEN(QWEN3_SPECIALS);
    if (cfg->vocab < 256 + n_spec)
        return ep_errorf(EP_ERR_ARG,
                         "model '%s': vocab_size: expected at least %d for the synthetic "
                         "tokenizer (256 bytes + %d special tokens), found %d",
                         cfg->name, 256 + n_spec, n_spec, cfg->vocab);
    ep_synth_special_ids ids;
    ep_synth_special_ids_of(cfg, &ids);
    // The specials sit at the top ids in table order (ep_tokenizer_synth_json).
    const int top = cfg->vocab - n_spec;
    EP_ASSERT(ids.bos == top && ids.eos == cfg->vocab - 1);
    json_t *dec = json_object();
    for (int i = 0; i < n_spec; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", top + i);
        json_object_set_new(dec, id,
                            json_pack("{s:s, s:b, s:b, s:b, s:b, s:b}", "content", spec[i],
                                      "lstrip", 0, "normalized", 0, "rstrip", 0, "single_word", 0,
                                      "special", 1));
    }
    const char *eos = spec[ids.eos - top], *pad = spec[ids.pad - top];
    json_t *root = json_object();
    json_object_set_new(root, "add_bos_token", json_false());
    json_object_set_new(root, "add_eos_token", json_false());
    json_object_set_new(root, "add_prefix_space", json_false());
    json_object_set_new(root, "added_tokens_decoder", dec);
    json_t *extra = json_array();
    if (!ds) {
        json_array_append_new(extra, json_string(spec[ids.im_start - top]));
        json_array_append_new(extra, json_string(eos));
    }
    json_object_set_new(root, "additional_special_tokens", extra);
    // Qwen3 has no BOS token (its configs' bos_token_id is <|endoftext|>).
    json_object_set_new(root, "bos_token", ds ? json_string(spec[ids.bos - top]) : json_null());
    json_object_set_new(root, "chat_template",
                        json_string(ds ? DSV2_CHAT_TEMPLATE : QWEN3_CHAT_TEMPLATE));
    json_object_set_new(root, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(root, "eos_token", json_string(eos));
    json_object_set_new(root, "errors", json_string("replace"));
    json_object_set_new(root, "model_max_length", json_integer(cfg->max_pos));
    json_object_set_new(root, "pad_token", json_string(pad));
    json_object_set_new(root, "split_special_tokens", json_false());
    // The generic class: tokenizer.json is all it needs.
    json_object_set_new(root, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    json_object_set_new(root, "unk_token", json_null());
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    EP_ASSERT(text);
    *json = text;
    *len = strlen(text);
    return EP_OK;
}
