// libFuzzer target: model.safetensors.index.json of a checkpoint directory.
// The directory also holds one fixed, valid shard (written once) so that
// inputs naming it reach the lazy shard open and the fp32 read; names with
// '/' or '..' must be refused. Does not fuzz the shard itself
// (fuzz_safetensors.c does).
#include "common/safetensors.h"
#include "fuzz_util.h"

#include <string.h>

#define SHARD "model-00001-of-00001.safetensors"

static const float k_a[2 * 3] = {1, 2, 3, 4, 5, 6};
static const uint16_t k_b[5] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0}; // bf16 1..5

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_log_set_level(EP_LOG_ERROR);
    const ep_st_entry e[2] = {
        {"a", EP_DTYPE_F32, 2, {2, 3}, k_a},
        {"b", EP_DTYPE_BF16, 1, {5}, k_b},
    };
    if (ep_st_write(ep_fuzz_path(SHARD), e, 2, NULL) != EP_OK)
        ep_fuzz_fail(__FILE__, __LINE__, "shard");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ep_fuzz_file("model.safetensors.index.json", data, size);
    ep_ckpt *c = NULL;
    if (ep_ckpt_open(ep_fuzz_dir(), &c) != EP_OK) {
        EP_FUZZ_CHECK(c == NULL);
        return 0;
    }
    const char *names[] = {"a", "b", "c", "model.layers.0.mlp.gate.weight", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const ep_st_tensor *t = NULL;
        if (ep_ckpt_find(c, names[i], &t) == EP_OK) {
            EP_FUZZ_CHECK(t != NULL && !strcmp(t->name, names[i]));
        }
    }
    float a[6], b[5];
    if (ep_ckpt_read_f32(c, "a", 2, (const int64_t[]){2, 3}, a) == EP_OK)
        EP_FUZZ_CHECK(!memcmp(a, k_a, sizeof a));
    if (ep_ckpt_read_f32(c, "b", 1, (const int64_t[]){5}, b) == EP_OK)
        EP_FUZZ_CHECK(b[0] == 1.0f && b[4] == 5.0f);
    ep_ckpt_free(c);
    ep_fuzz_accepted();
    return 0;
}
