// `epserve calibrate` over the model: runs the full forward on calibration
// sequences (spread over ranks, results reduced so every rank holds them)
// and derives the banpick profile (docs/routing.md, "Calibration"). The pure
// parts (KL, policy, data file, profile assembly) are router/calibrate.h.
#ifndef EP_MODEL_CALIBRATE_H
#define EP_MODEL_CALIBRATE_H

#include "model/model.h"
#include "router/calibrate.h"

typedef struct {
    int k_min;          // K_min of the layer runs and of the profile; 0: routing default
    int top_keys;       // key experts kept per domain; 0: ceil(MoE layers / 4)
    int key_candidates; // most frequent experts tried per layer and domain; 0: 2
    int top_tokens;     // N of the top-N KL; 0: 1000 (the whole vocab when smaller)
    const char *active; // active Pick domain; NULL: the only one, or auto
    bool auto_domain;   // with active NULL: `pick.domain: auto` even for one domain
    bool progress;      // one line per forward sweep on stderr (rank 0)
} ep_calib_opts;
void ep_calib_opts_default(ep_calib_opts *o);

// What was measured, besides the profile (for the header and the report).
typedef struct {
    int64_t n_tokens; // positions over all sequences
    int n_sweeps;     // forward passes over (part of) the data
    int top_tokens;   // N actually used (min(N, vocab))
    int k_min;        // K_min actually used
    int top_keys;     // keys per domain asked for
    double *w;        // [n_layers] mean top-N KL per layer (dense 0)
    double r_min, r_max;
} ep_calib_summary;
void ep_calib_summary_free(ep_calib_summary *s); // NULL ok

// Model options sized for calibration on data: one sequence of up to
// data->max_len tokens per rank and step. Callers may change the placement,
// the wire dtype or add with_reference before ep_model_init.
void ep_calib_model_opts(const ep_model_cfg *cfg, const ep_calib_data *data, ep_model_opts *mo);

// Runs every sweep on every rank (all ranks must call it with the same data
// and options) and fills rc (a validated banpick config, identical on every
// rank) and sum. m (borrowed) is cfg's model on cluster cl, built with
// ep_calib_model_opts() or at least that large; it holds no sequence after.
ep_status ep_calibrate(const ep_model_cfg *cfg, ep_cluster *cl, ep_model *m,
                       const ep_calib_data *data, const ep_calib_opts *o, ep_routing_cfg *rc,
                       ep_calib_summary *sum);

#endif
