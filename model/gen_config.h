// generation_config.json of a checkpoint (transformers' GenerationConfig as
// saved): the model's default sampling parameters and end-of-sequence ids.
// Read once, immutable. Each key is honoured, checked, accepted as having no
// effect, or reported as not applied (docs/serving.md has the table); a bad
// value of a key epserve uses is an error naming the file and the key. The
// precedence (request > generation_config > built-in) is the callers'
// (server/openai.c, app/generate.c); this module supplies the middle layer.
#ifndef EP_GEN_CONFIG_H
#define EP_GEN_CONFIG_H

#include "common/model_cfg.h"
#include "model/sample.h"

enum { EP_GEN_MAX_EOS = 16, EP_GEN_MAX_IGNORED = 16 };

typedef struct {
    bool present;    // a generation_config.json was read
    char path[1100]; // its path ("" when absent)
    // Honoured as defaults (has_*: the file gives the key, not null).
    bool has_temperature, has_top_p, has_top_k, has_do_sample, has_max_new_tokens;
    bool has_repetition_penalty;
    float repetition_penalty; // (0, 100]: a default of the sampler's (model/sample.h)
    float temperature;        // >= 0
    float top_p;              // (0, 1]
    int top_k;                // >= 0, 0: no limit
    bool do_sample;     // false: greedy by default (transformers ignores the sampling keys then)
    int max_new_tokens; // >= 1
    int eos[EP_GEN_MAX_EOS]; // eos_token_id (an integer or a list): also end a request
    int n_eos;
    // Checked (an id of the vocabulary), reported, no effect: epserve never
    // generates from an empty prompt (bos) and never pads (pad).
    int bos, pad; // -1 when absent
    // Keys present that would change transformers' output and that epserve
    // does not apply (a value other than the neutral one, or a key it does
    // not know): warned about by the caller, listed in /v1/models.
    struct {
        char key[48];
        char why[200];
    } ignored[EP_GEN_MAX_IGNORED];
    int n_ignored;
} ep_gen_config;

// Reads path, a generation_config.json, against a vocabulary of `vocab` ids.
// EP_ERR_CONFIG naming the file and key, what was expected and what was found
// (temperature < 0, top_p outside (0, 1], top_k < 0, max_new_tokens < 1, a
// token id outside [0, vocab), a wrong type); EP_ERR_FORMAT for bad JSON.
ep_status ep_gen_config_read(const char *path, int vocab, ep_gen_config *g);
// <cfg->checkpoint>/generation_config.json when cfg has a checkpoint directory
// and the file exists; otherwise *g is empty (present false) and EP_OK.
ep_status ep_gen_config_load(const ep_model_cfg *cfg, ep_gen_config *g);
// EP_WARN lines, one per ignored key ("<file>: key 'k': <why>; not applied").
void ep_gen_config_warn(const ep_gen_config *g);

// The defaults of a request that sets no sampling field: `p` holds the
// built-in ones on entry; the file's temperature, top_k, top_p and
// repetition_penalty replace them;
// do_sample false makes the temperature 0 (greedy); do_sample true without a
// temperature makes it 1 (transformers' default). seed is left alone.
void ep_gen_config_sample_defaults(const ep_gen_config *g, ep_sample_params *p);

// The JSON object /v1/models reports (malloc'ed, NUL-terminated, compact):
// {"file": path|null, "temperature", "top_p", "top_k" (the defaults a request
// gets), "max_tokens": max_new_tokens|null, "eos_token_id": [every id that
// ends a request], "bos_token_id", "pad_token_id" (null when absent),
// "ignored": [keys not applied]}.
char *ep_gen_config_json(const ep_gen_config *g, const ep_sample_params *defaults, const int *eos,
                         int n_eos);

// Writes the keys g gives (bos_token_id, do_sample, eos_token_id: an integer
// when one, else a list; pad_token_id, temperature, top_k, top_p,
// max_new_tokens) as transformers saves them, atomically.
ep_status ep_gen_config_write(const ep_gen_config *g, const char *path);
// The generation_config.json make-model writes: the published file of the
// family (Qwen3-30B-A3B: do_sample, temperature 0.6, top_k 20, top_p 0.95,
// eos [<|im_end|>, <|endoftext|>], bos / pad <|endoftext|>; DeepSeek-V2-Lite-
// Chat: do_sample, temperature 0.3, top_p 0.95, bos, eos) with the synthetic
// tokenizer's ids (ep_synth_special_ids_of).
void ep_gen_config_synth(const ep_model_cfg *cfg, ep_gen_config *g);

#endif
