/* The header compiles as strict C99 (-std=c99 -pedantic-errors) and every
 * declaration is usable: take the address of all 27 functions. */
#include <transfer_engine_c.h>
#include <stdio.h>

typedef void (*any_fn)(void);

int main(void) {
    void *fns[] = {
        (void *)(size_t)&createTransferEngine, (void *)(size_t)&discoverTopology,
        (void *)(size_t)&getLocalIpAndPort, (void *)(size_t)&installTransport,
        (void *)(size_t)&uninstallTransport, (void *)(size_t)&openSegment,
        (void *)(size_t)&openSegmentNoCache, (void *)(size_t)&closeSegment,
        (void *)(size_t)&warmupEfaSegment, (void *)(size_t)&removeLocalSegment,
        (void *)(size_t)&destroyTransferEngine, (void *)(size_t)&registerLocalMemory,
        (void *)(size_t)&unregisterLocalMemory, (void *)(size_t)&registerLocalMemoryBatch,
        (void *)(size_t)&unregisterLocalMemoryBatch, (void *)(size_t)&allocateBatchID,
        (void *)(size_t)&submitTransfer, (void *)(size_t)&submitTransferWithNotify,
        (void *)(size_t)&getNotifsFromEngine, (void *)(size_t)&freeNotifsMsgBuf,
        (void *)(size_t)&genNotifyInEngine, (void *)(size_t)&getTransferStatus,
        (void *)(size_t)&freeBatchID, (void *)(size_t)&syncSegmentCache,
        (void *)(size_t)&getNicLoadStats, (void *)(size_t)&enableGracefulShutdown,
        (void *)(size_t)&showLinks,
    };
    size_t i, n = sizeof fns / sizeof fns[0];
    segment_handle_t h = LOCAL_SEGMENT;
    segment_desc_t d;
    transfer_request_t r;
    transfer_status_t s;
    d.type = 0;
    d.desc_.rdma.addr = NULL;
    d.desc_.nvmeof.port = 1;
    r.opcode = OPCODE_WRITE;
    s.status = STATUS_COMPLETED;
    for (i = 0; i < n; i++) {
        if (fns[i] == NULL) {
            fprintf(stderr, "function %u has no address\n", (unsigned)i);
            return 1;
        }
    }
    if (n != 27 || h != 0 || r.opcode != 1 || s.status != 4 || d.desc_.nvmeof.port != 1) return 1;
    printf("header_c99: %u functions declared\n", (unsigned)n);
    return 0;
}
