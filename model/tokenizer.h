// Text <-> token ids from a Hugging Face `tokenizer.json` of the byte-level
// BPE kind that Qwen3 and DeepSeek-V2 ship: optional NFC normaliser
// (utf8proc), pre-tokenizer Split regex (PCRE2, UTF + Unicode properties) then
// ByteLevel, BPE with merge ranks, added/special tokens matched before
// pre-tokenisation, ByteLevel decoder. Immutable once loaded, so one
// tokenizer serves every thread. Also the synthetic tokenizer of the tiny
// presets. Chat templates are model/chat.h.
#ifndef EP_TOKENIZER_H
#define EP_TOKENIZER_H

#include "common/ep.h"
#include "common/model_cfg.h"

typedef struct ep_tokenizer ep_tokenizer;

// Parses tokenizer.json. Errors (EP_ERR_FORMAT / EP_ERR_UNSUPPORTED) name the
// file and JSON key, what was expected and what was found: a model type other
// than "BPE" (e.g. "Unigram", "WordPiece"), a pre-tokenizer or normaliser we
// do not implement, a regex PCRE2 rejects, a merge naming an unknown token.
ep_status ep_tokenizer_load(const char *path, ep_tokenizer **out);
// The same from a JSON text held in memory; `name` stands for the file in messages.
ep_status ep_tokenizer_load_json(const char *json, size_t len, const char *name,
                                 ep_tokenizer **out);
// The tokenizer of a model: <checkpoint>/tokenizer.json when cfg has a
// checkpoint directory, else the synthetic one (ep_tokenizer_synth_json).
ep_status ep_tokenizer_for_model(const ep_model_cfg *cfg, ep_tokenizer **out);
void ep_tokenizer_free(ep_tokenizer *t); // NULL ok

// Ids span [0, ep_tokenizer_n_ids): the BPE vocab plus added tokens.
int ep_tokenizer_n_ids(const ep_tokenizer *t);

// Encodes len bytes of UTF-8. With allow_special, added tokens that are
// `special` are recognised in the text (as HF's tokenizer does by default);
// without it they are encoded as plain text. Added tokens that are not
// special are always recognised. Invalid UTF-8 is an EP_ERR_ARG naming the
// byte offset. *ids is malloc'ed (free it), *n may be 0.
ep_status ep_tokenizer_encode(const ep_tokenizer *t, const char *text, size_t len,
                              bool allow_special, int **ids, int *n);
// Decodes ids to bytes (NUL-terminated, *len without the NUL; malloc'ed).
// skip_special drops special added tokens. An id outside [0, n_ids) is an
// EP_ERR_ARG naming it and its index. The bytes may end in an incomplete
// UTF-8 sequence when the ids split a character: the result is the exact
// byte concatenation (decode(a ++ b) == decode(a) ++ decode(b)).
ep_status ep_tokenizer_decode(const ep_tokenizer *t, const int *ids, int n, bool skip_special,
                              char **text, size_t *len);
// The bytes one id decodes to (not NUL-terminated), NULL for an id out of range.
const char *ep_tokenizer_piece(const ep_tokenizer *t, int id, size_t *len);
bool ep_tokenizer_is_special(const ep_tokenizer *t, int id);
// Id of a token by its exact content (vocab entry or added token), -1 if none.
int ep_tokenizer_find(const ep_tokenizer *t, const char *content);
// End-of-sequence ids this tokenizer knows (Qwen3: <|im_end|>, <|endoftext|>;
// DeepSeek-V2: <｜end▁of▁sentence｜>), those present; returns how many (<= max).
int ep_tokenizer_eos_ids(const ep_tokenizer *t, int *ids, int max);

// ---- the synthetic tokenizer of the tiny presets ---------------------------
// A byte-level BPE tokenizer.json whose ids fill exactly cfg->vocab: 256 byte
// tokens, merges learned deterministically from a fixed English + code
// corpus, then the family's special tokens at the top ids (Qwen3:
// <|endoftext|>, <|im_start|>, <|im_end|>; DeepSeek-V2: <｜begin▁of▁sentence｜>,
// <｜end▁of▁sentence｜>). Qwen3's pre-tokenizer regex and NFC normaliser.
// EP_ERR_ARG when cfg->vocab < 256 + specials. *json malloc'ed.
ep_status ep_tokenizer_synth_json(const ep_model_cfg *cfg, char **json, size_t *len);
// The tokenizer_config.json beside it, shaped like the published ones
// (Qwen3's, DeepSeek-V2-Lite-Chat's): added_tokens_decoder with the special
// tokens at their ids, bos / eos / pad tokens, model_max_length, and a
// chat_template string (Qwen3: plain ChatML; DeepSeek-V2: its published
// template) that renders, with add_generation_prompt, exactly what
// ep_chat_render produces. add_bos_token is false for both: epserve's encode
// never adds a BOS (the DeepSeek template writes it as text). *json malloc'ed.
ep_status ep_tokenizer_synth_config_json(const ep_model_cfg *cfg, char **json, size_t *len);

#endif
