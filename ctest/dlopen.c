/* dlopen the installed library, resolve all 27 functions by name and drive
 * create/destroy through the resolved pointers. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <transfer_engine_c.h>

#include "check.h"

static const char *const NAMES[] = {
    "createTransferEngine", "discoverTopology", "getLocalIpAndPort",
    "installTransport", "uninstallTransport", "openSegment",
    "openSegmentNoCache", "closeSegment", "warmupEfaSegment",
    "removeLocalSegment", "destroyTransferEngine", "registerLocalMemory",
    "unregisterLocalMemory", "registerLocalMemoryBatch",
    "unregisterLocalMemoryBatch", "allocateBatchID", "submitTransfer",
    "submitTransferWithNotify", "getNotifsFromEngine", "freeNotifsMsgBuf",
    "genNotifyInEngine", "getTransferStatus", "freeBatchID",
    "syncSegmentCache", "getNicLoadStats", "enableGracefulShutdown",
    "showLinks",
};

typedef transfer_engine_t (*create_fn)(const char *, const char *, const char *, uint64_t, int);
typedef void (*destroy_fn)(transfer_engine_t);
typedef int (*ipport_fn)(transfer_engine_t, char *, size_t);

int main(void) {
    size_t i;
    void *lib = dlopen(TE_SHARED_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen(%s): %s\n", TE_SHARED_LIBRARY, dlerror());
        return 1;
    }
    CHECK_EQ(sizeof NAMES / sizeof NAMES[0], 27);
    for (i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        if (dlsym(lib, NAMES[i]) == NULL) {
            fprintf(stderr, "dlsym(%s): %s\n", NAMES[i], dlerror());
            te_failures++;
        }
    }
    {
        create_fn create;
        destroy_fn destroy;
        ipport_fn ipport;
        char buf[128] = {0};
        transfer_engine_t e;
        *(void **)&create = dlsym(lib, "createTransferEngine");
        *(void **)&destroy = dlsym(lib, "destroyTransferEngine");
        *(void **)&ipport = dlsym(lib, "getLocalIpAndPort");
        REQUIRE(create && destroy && ipport);
        e = create("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
        REQUIRE(e != NULL);
        CHECK_EQ(ipport(e, buf, sizeof buf), 0);
        CHECK(strchr(buf, ':') != NULL);
        destroy(e);
        CHECK_EQ(ipport(e, buf, sizeof buf), -1); /* destroyed handle */
    }
    /* The library must survive dlclose after its engines are gone. */
    CHECK_EQ(dlclose(lib), 0);
    return te_finish("dlopen");
}
