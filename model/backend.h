// The model-level backend (DESIGN.md §3, ep_backend): the ops one step of
// the forward is made of, behind one static const table per backend, private
// to model/. model.c's step driver (ep_model_forward_ex) calls only through
// it, never `if (cuda)`. opts.moe.backend picks the table: cpu
// (backend_cpu.c: the host forward, fp32 activations, KV rows in host
// memory) or cuda (forward_cuda.c: weights, KV cache and activations on the
// device; a build without CUDA has forward_cuda_off.c, which refuses by
// name). The residual stream lives where the backend keeps it; the driver
// only sees host-side token metadata (m->tok_seq, m->tok_pos) and logits or
// sampled ids at the end.
#ifndef EP_MODEL_BACKEND_H
#define EP_MODEL_BACKEND_H

#include "model/model_impl.h"
#include "model/sample.h"

struct ep_model_backend_i {
    const char *name; // as ep_moe_backend_name
    bool built;       // in this build
    // How ep_model_init reads the replicated matrices: EP_DTYPE_AUTO keeps
    // opts.dtype; else this storage whatever opts.dtype says (cuda: BF16).
    ep_dtype dtype;
    bool host_kv_rows; // the host ep_kv holds the rows (else bookkeeping only)
    // After the host weights are read, the MoE layers and the KV
    // bookkeeping are made; makes what the steps need (cpu: the host
    // scratch; cuda: uploads the weights, sizes device memory). On failure the message names the
    // backend and the step; close is still called.
    ep_status (*open)(ep_model *m);
    void (*close)(ep_model *m); // frees what open made; safe after a failed or no open
    // The step's T tokens (b->tokens, m->tok_seq, m->tok_pos filled, KV
    // blocks reserved) into the residual stream: the embedding rows.
    ep_status (*begin)(ep_model *m, const ep_batch *b, int T);
    // x += attention(rmsnorm(x)) of layer l, the new tokens' KV rows written.
    ep_status (*attention)(ep_model *m, int layer, int T);
    // x += ffn(rmsnorm(x)) of layer l: the dense MLP, or the MoE layer
    // (ep_moe_forward; its counters into *ls, which the caller zeroed).
    ep_status (*ffn)(ep_model *m, const ep_policy *p, int layer, int T, ep_comm_stats *ls);
    // Final norm and lm_head of the rows b asks for (ep_batch.all_logits):
    // logits [rows, vocab] into host memory when `logits` is not NULL, else
    // kept where the backend works for `sample`. *rows receives their count.
    ep_status (*final)(ep_model *m, const ep_batch *b, int T, float *logits, int *rows);
    // After final: ids[r] for r < rows, drawn by samplers[r] (NULL: no draw,
    // id -1) from the rows' logits; host_logits (may be NULL) holds them on
    // the host when final was given a buffer. Each sampler's RNG advances as
    // ep_sampler_sample's would.
    ep_status (*sample)(ep_model *m, int rows, ep_sampler *const *samplers,
                        const float *host_logits, int *ids);
    // What open allocated on the device, by part (ep_model_dev_mem; the
    // experts field is the caller's); EP_ERR_UNSUPPORTED without a device.
    ep_status (*dev_mem)(const ep_model *m, ep_model_dev_mem *out);
};

extern const ep_model_backend_i ep_model_backend_cpu;        // backend_cpu.c
extern const ep_model_backend_i ep_model_backend_cuda_table; // forward_cuda.c or forward_cuda_off.c

// The host logits buffer for `rows` rows: `logits` when not NULL, else the
// model's own (m->hlogits, grown as needed).
float *ep_model_host_logits(ep_model *m, float *logits, int rows);

// Host sampling of rows (the cpu table's sample, the cuda table's fallback).
void ep_model_sample_host(int rows, int vocab, ep_sampler *const *samplers, const float *logits,
                          int *ids);

#endif
