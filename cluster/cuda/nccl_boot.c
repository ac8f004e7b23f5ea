// NCCL bootstrap over the MPI process group: version checks (library vs the
// headers we were built with, and the same library on every rank, since a
// mismatch hangs rather than fails), the unique id from rank 0 through
// ep_cluster_bcast, ncclCommInitRank. No payload moves here: see comm/nccl/.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/nccl_util.h"

struct ep_nccl {
    ncclComm_t comm;
    int device;
    int version; // runtime NCCL_VERSION_CODE
};

ep_status ep_nccl_status(ncclResult_t rc, const char *call, const char *file, int line)
{
    if (rc == ncclSuccess) return EP_OK;
    const char *detail = ncclGetLastError(NULL);
    return ep_errorf(EP_ERR_COMM, "%s failed at %s:%d: %s (NCCL error %d)%s%s", call, file, line,
                     ncclGetErrorString(rc), (int)rc, detail && *detail ? ": " : "",
                     detail ? detail : "");
}

ncclComm_t ep_nccl_comm(const ep_nccl *n)
{
    return n->comm;
}

int ep_nccl_device(const ep_nccl *n)
{
    return n->device;
}

int ep_nccl_version(const ep_nccl *n)
{
    return n->version;
}

// ---- versions ------------------------------------------------------------------------

// NCCL_VERSION(X, Y, Z) is X*1000 + Y*100 + Z up to 2.8 and X*10000 + Y*100 + Z after.
static void ep_nccl_version_split(int code, int *x, int *y, int *z)
{
    if (code >= 10000) {
        *x = code / 10000;
        *y = code / 100 % 100;
    } else {
        *x = code / 1000;
        *y = code / 100 % 10;
    }
    *z = code % 100;
}

void ep_nccl_version_str(int code, char *buf, size_t n)
{
    int x, y, z;
    ep_nccl_version_split(code, &x, &y, &z);
    snprintf(buf, n, "%d.%d.%d", x, y, z);
}

ep_status ep_nccl_version_check(int header, int runtime)
{
    int hx, hy, hz, rx, ry, rz;
    ep_nccl_version_split(header, &hx, &hy, &hz);
    ep_nccl_version_split(runtime, &rx, &ry, &rz);
    char hs[32], rs[32], ms[32];
    ep_nccl_version_str(header, hs, sizeof hs);
    ep_nccl_version_str(runtime, rs, sizeof rs);
    ep_nccl_version_str(EP_NCCL_MIN_VERSION, ms, sizeof ms);
    if (rx != hx)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "nccl: built against NCCL %s headers, expected a %d.x library at run "
                         "time, found %s (check LD_LIBRARY_PATH)",
                         hs, hx, rs);
    if (runtime < EP_NCCL_MIN_VERSION)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "nccl: expected NCCL %s or newer at run time, found %s", ms, rs);
    return EP_OK;
}

// ---- init -------------------------------------------------------------------------------

// What rank 0 broadcasts: whether it could make an id, and the id. The
// status travels with the id so that no rank waits for an id never coming.
typedef struct {
    int32_t ok;
    ncclUniqueId id;
} ep_nccl_id_msg;

ep_status ep_nccl_init(ep_cluster *c, ep_gpu *g, ep_nccl **out)
{
    *out = NULL;
    ep_status st;
    int runtime = 0;
    ep_status vst = EP_NCCL_ST(ncclGetVersion(&runtime));
    if (vst == EP_OK) vst = ep_nccl_version_check(NCCL_VERSION_CODE, runtime);
    char vmsg[512];
    snprintf(vmsg, sizeof vmsg, "%s", vst == EP_OK ? "" : ep_last_error());

    // Every rank learns every rank's version before anyone decides, so a
    // bad rank fails the whole group instead of leaving the others waiting.
    double *all = ep_xcalloc((size_t)c->world_size, sizeof(double));
    double mine = vst == EP_OK ? (double)runtime : -1.0;
    if ((st = ep_cluster_allgather_f64(c, &mine, 1, all)) != EP_OK) {
        free(all);
        return ep_error_prefix(st, "nccl: gathering library versions");
    }
    int bad = -1, other = -1;
    for (int r = 0; r < c->world_size && bad < 0; r++) {
        if (all[r] < 0)
            bad = r;
        else if (all[r] != all[0])
            other = other < 0 ? r : other;
    }
    int v0 = (int)all[0], vo = other >= 0 ? (int)all[other] : 0;
    free(all);
    if (vst != EP_OK) return ep_errorf(vst, "rank %d: %s", c->rank, vmsg);
    if (bad >= 0)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "nccl: rank %d cannot use its NCCL library (see its log)", bad);
    if (other >= 0) {
        char s0[32], so[32];
        ep_nccl_version_str(v0, s0, sizeof s0);
        ep_nccl_version_str(vo, so, sizeof so);
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "nccl: expected the same NCCL on every rank, found %s on rank 0 and %s "
                         "on rank %d",
                         s0, so, other);
    }

    ep_nccl_id_msg msg;
    memset(&msg, 0, sizeof msg);
    char idmsg[512] = "";
    if (c->rank == 0) {
        ep_status ist = EP_NCCL_ST(ncclGetUniqueId(&msg.id));
        msg.ok = ist == EP_OK;
        if (!msg.ok) snprintf(idmsg, sizeof idmsg, "%s", ep_last_error());
    }
    if ((st = ep_cluster_bcast(c, &msg, sizeof msg, 0)) != EP_OK)
        return ep_error_prefix(st, "nccl: broadcasting the unique id");
    if (!msg.ok)
        return ep_errorf(EP_ERR_COMM, "nccl: rank 0 could not create the unique id%s%s",
                         c->rank == 0 ? ": " : " (see rank 0's log)", idmsg);

    if ((st = ep_gpu_make_current(g)) != EP_OK) return st;
    ep_nccl *n = ep_xcalloc(1, sizeof *n);
    n->device = ep_gpu_device(g);
    n->version = runtime;
    st = EP_NCCL_ST(ncclCommInitRank(&n->comm, c->world_size, msg.id, c->rank));
    if (st != EP_OK) {
        free(n);
        return ep_error_prefix(st, "nccl: rank %d of %d on device %d", c->rank, c->world_size,
                               ep_gpu_device(g));
    }
    char vs[32];
    ep_nccl_version_str(runtime, vs, sizeof vs);
    EP_DEBUG("nccl %s: rank %d of %d on device %d", vs, c->rank, c->world_size, n->device);
    *out = n;
    return EP_OK;
}

void ep_nccl_free(ep_nccl *n)
{
    if (!n) return;
    if (n->comm) {
        ep_status st = EP_NCCL_ST(ncclCommDestroy(n->comm));
        if (st != EP_OK) EP_WARN("%s", ep_last_error());
    }
    free(n);
}
