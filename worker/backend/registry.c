/* The backends this build has (see backend.h). The one place outside the CUDA backend
 * that knows whether it was built. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/backend/backend.h"

#ifdef TD_HAVE_CUDA
td_status td_backend_cuda_new(int device, td_backend **out);
int td_backend_cuda_count(char *why, size_t why_len);
#endif

int td_backend_devices(const char *name, char *why, size_t why_len) {
    if (!strcmp(name, "cpu")) return 1;
    if (strcmp(name, "cuda")) {
        snprintf(why, why_len, "unknown backend '%s'", name);
        return 0;
    }
#ifdef TD_HAVE_CUDA
    return td_backend_cuda_count(why, why_len);
#else
    snprintf(why, why_len, "this build has no CUDA backend (TANDEM_CUDA=OFF)");
    return 0;
#endif
}

td_status td_backend_new(const char *name, int device, td_backend **out) {
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) return td_backend_cpu_new(out);
    if (strcmp(name, "cuda") && strcmp(name, "auto"))
        return td_error_set(TD_ERR_INVALID, "unknown device '%s': use cpu, cuda or auto", name);
    int want = !strcmp(name, "cuda");
#ifdef TD_HAVE_CUDA
    char why[256] = "";
    int n = td_backend_cuda_count(why, sizeof why);
    if (n > 0) return td_backend_cuda_new(device % n, out);
    if (want) return td_error_set(TD_ERR_RUNTIME, "device cuda: no usable GPU: %s", why);
    TD_LOG_INFO("device auto: on the CPU (no usable GPU: %s)", why);
#else
    (void)device;
    if (want) return td_error_set(TD_ERR_RUNTIME, "device cuda: this build has no CUDA backend");
    TD_LOG_INFO("device auto: on the CPU (this build has no CUDA backend)");
#endif
    return td_backend_cpu_new(out);
}

void td_backend_free(td_backend **b) {
    if (!b || !*b) return;
    (*b)->ops->free(*b);
    free(*b);
    *b = NULL;
}
