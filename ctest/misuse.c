/* The misuse matrix: every entry point with NULL, destroyed and garbage
 * engine handles, NULL pointers, non-UTF-8 strings, bad batch ids and task
 * ids, and register/unregister edge cases -- each with the exact value the
 * Mooncake return conventions prescribe (spec §1.3). Nothing may crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <transfer_engine_c.h>

#include "check.h"

static const char NOT_UTF8[] = {(char)0xff, (char)0xfe, 'x', 0};
static char buf4k[4096];
static char buf64k[65536];

static transfer_engine_t new_engine(void) {
    transfer_engine_t e = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    REQUIRE(e != NULL);
    return e;
}

static notify_msg_t notify(const char *name, const char *msg) {
    notify_msg_t n;
    n.name = (char *)name;
    n.msg = (char *)msg;
    return n;
}

static struct transfer_request request(segment_id_t target, void *src, uint64_t len) {
    struct transfer_request r;
    r.opcode = OPCODE_WRITE;
    r.source = src;
    r.target_id = target;
    r.target_offset = 0x1000;
    r.length = len;
    return r;
}

/* Every function with a handle that is not a live engine. */
static void bad_handle_matrix(transfer_engine_t h, const char *what) {
    char buf[64];
    int size = 42;
    size_t count = 4;
    nic_load_stat_t stats[4];
    struct transfer_status st = {77, 77};
    struct transfer_request req = request(1, buf4k, 8);
    buffer_entry_t entry = {buf4k, sizeof buf4k};
    void *addrs[1] = {buf4k};
    int before = te_failures;

    CHECK_EQ(discoverTopology(h), -1);
    CHECK_EQ(getLocalIpAndPort(h, buf, sizeof buf), -1);
    CHECK(installTransport(h, "tcp", NULL) == NULL);
    CHECK_EQ(uninstallTransport(h, "tcp"), -1);
    CHECK_EQ(openSegment(h, "127.0.0.1:12345"), -1);
    CHECK_EQ(openSegmentNoCache(h, "127.0.0.1:12345"), -1);
    CHECK_EQ(closeSegment(h, 1), -1);
    CHECK_EQ(warmupEfaSegment(h, "x"), 0); /* no-op in every non-EFA build */
    CHECK_EQ(removeLocalSegment(h, "x"), -1);
    CHECK_EQ(registerLocalMemory(h, buf4k, sizeof buf4k, "cpu:0", 1), -1);
    CHECK_EQ(unregisterLocalMemory(h, buf4k), -1);
    CHECK_EQ(registerLocalMemoryBatch(h, &entry, 1, "cpu:0"), -1);
    CHECK_EQ(unregisterLocalMemoryBatch(h, addrs, 1), -1);
    CHECK(allocateBatchID(h, 4) == INVALID_BATCH);
    CHECK_EQ(submitTransfer(h, 1, &req, 1), 1);
    CHECK_EQ(submitTransferWithNotify(h, 1, &req, 1, notify("n", "m")), 1);
    CHECK(getNotifsFromEngine(h, &size) == NULL);
    CHECK_EQ(size, 0);
    CHECK_EQ(genNotifyInEngine(h, 1, notify("n", "m")), -1);
    CHECK_EQ(getTransferStatus(h, 1, 0, &st), 1);
    CHECK(st.status == 77 && st.transferred_bytes == 77);
    CHECK_EQ(freeBatchID(h, 1), 1);
    CHECK_EQ(syncSegmentCache(h), -1);
    CHECK_EQ(getNicLoadStats(h, stats, &count), -1);
    CHECK_EQ(showLinks(h, buf, sizeof buf, 0), -1);
    CHECK_EQ(showLinks(h, buf, sizeof buf, 1), -1);
    enableGracefulShutdown(h); /* logged and ignored */
    destroyTransferEngine(h);  /* logged and ignored */
    if (te_failures != before) fprintf(stderr, "  ^ with %s handle\n", what);
}

static void create_misuse(void) {
    clock_t t0 = clock();
    CHECK(createTransferEngine(NULL, "127.0.0.1", NULL, 0, 0) == NULL);
    CHECK(createTransferEngine("P2PHANDSHAKE", NULL, NULL, 0, 0) == NULL);
    CHECK(createTransferEngine("P2PHANDSHAKE", "", NULL, 0, 0) == NULL);
    CHECK(createTransferEngine(NOT_UTF8, "127.0.0.1", NULL, 0, 0) == NULL);
    CHECK(createTransferEngine("P2PHANDSHAKE", NOT_UTF8, NULL, 0, 0) == NULL);
    /* Mooncake aborts on an unknown metadata scheme; te-rs returns NULL. */
    CHECK(createTransferEngine("bogus://127.0.0.1:1", "127.0.0.1", NULL, 0, 0) == NULL);
    (void)t0;
}

static void string_and_pointer_misuse(transfer_engine_t e) {
    char buf[256];
    char small[4];
    size_t count;
    nic_load_stat_t stats[4];
    void *args[2] = {NULL, NULL};
    time_t start;

    /* getLocalIpAndPort: truncation is silent, NUL-terminated. */
    CHECK_EQ(getLocalIpAndPort(e, NULL, 16), -1);
    CHECK_EQ(getLocalIpAndPort(e, buf, 0), 0);
    memset(small, 'Z', sizeof small);
    CHECK_EQ(getLocalIpAndPort(e, small, sizeof small), 0);
    CHECK_EQ(strlen(small), 3);
    CHECK_EQ(getLocalIpAndPort(e, buf, sizeof buf), 0);
    CHECK(strncmp(buf, small, 3) == 0 && strchr(buf, ':') != NULL);

    /* showLinks. */
    CHECK_EQ(showLinks(e, NULL, 64, 0), -1);
    CHECK_EQ(showLinks(e, buf, 0, 1), -1);
    memset(small, 'Z', sizeof small);
    CHECK_EQ(showLinks(e, small, sizeof small, 1), 0);
    CHECK_EQ(strlen(small), 3);
    CHECK_EQ(showLinks(e, buf, sizeof buf, 1), 0);
    CHECK(buf[0] == '{');
    CHECK_EQ(showLinks(e, buf, sizeof buf, 0), 0);

    /* getNicLoadStats: no size query; an engine without NICs reports 0. */
    count = 4;
    CHECK_EQ(getNicLoadStats(e, NULL, &count), -1);
    CHECK_EQ(getNicLoadStats(e, stats, NULL), -1);
    CHECK_EQ(getNicLoadStats(NULL, NULL, NULL), -1);
    CHECK_EQ(getNicLoadStats(e, stats, &count), 0);
    CHECK_EQ(count, 0);

    /* Never-fail functions on a live engine. */
    CHECK_EQ(discoverTopology(e), 0);
    CHECK_EQ(syncSegmentCache(e), 0);
    CHECK_EQ(closeSegment(e, 12345), 0);
    CHECK_EQ(closeSegment(e, -1), 0);
    CHECK_EQ(warmupEfaSegment(e, NULL), 0);
    CHECK_EQ(uninstallTransport(e, "tcp"), 0);
    CHECK_EQ(uninstallTransport(e, NULL), -1);
    CHECK_EQ(uninstallTransport(e, NOT_UTF8), -1);

    /* installTransport: unknown protocol, bad strings, bad matrix JSON. */
    CHECK(installTransport(e, NULL, NULL) == NULL);
    CHECK(installTransport(e, "no-such-protocol", NULL) == NULL);
    CHECK(installTransport(e, NOT_UTF8, NULL) == NULL);
    args[0] = (void *)"this is not json";
    CHECK(installTransport(e, "tcp", args) == NULL);
    args[0] = (void *)NOT_UTF8;
    CHECK(installTransport(e, "tcp", args) == NULL);

    /* openSegment: bad names fail with -1 within a bounded time. */
    start = time(NULL);
    CHECK_EQ(openSegment(e, NULL), -1);
    CHECK_EQ(openSegment(e, NOT_UTF8), -1);
    CHECK_EQ(openSegment(e, ""), -1);
    CHECK_EQ(openSegment(e, "///"), -1);
    CHECK_EQ(openSegment(e, "127.0.0.1:1"), -1);        /* nobody listens */
    CHECK_EQ(openSegment(e, "no-such-host.invalid:15000"), -1);
    CHECK_EQ(openSegmentNoCache(e, NULL), -1);
    CHECK_EQ(openSegmentNoCache(e, "127.0.0.1:1"), -1);
    CHECK(time(NULL) - start < 30);

    /* removeLocalSegment: empty names are invalid; unknown names are fine. */
    CHECK_EQ(removeLocalSegment(e, NULL), -1);
    CHECK_EQ(removeLocalSegment(e, NOT_UTF8), -1);
    CHECK_EQ(removeLocalSegment(e, ""), -1);
    CHECK_EQ(removeLocalSegment(e, "//"), -1);
    CHECK_EQ(removeLocalSegment(e, "never-opened"), 0);

    /* Notifications. */
    {
        int size = 42;
        CHECK(getNotifsFromEngine(e, NULL) == NULL);
        CHECK(getNotifsFromEngine(e, &size) == NULL);
        CHECK_EQ(size, 0);
        CHECK_EQ(freeNotifsMsgBuf(NULL, 0), 0);
        CHECK_EQ(freeNotifsMsgBuf(NULL, 5), 0);
        CHECK_EQ(genNotifyInEngine(e, 999, notify("n", "m")), -200);
        CHECK_EQ(genNotifyInEngine(e, (uint64_t)1 << 40, notify("n", "m")), -200);
        CHECK_EQ(genNotifyInEngine(e, 999, notify(NULL, "m")), -1);
        CHECK_EQ(genNotifyInEngine(e, 999, notify("n", NULL)), -1);
        /* Text that is not UTF-8 is sent with U+FFFD, as the C++ engine's
         * jsoncpp writes it: refused here only for the unknown segment. */
        CHECK_EQ(genNotifyInEngine(e, 999, notify("n", NOT_UTF8)), -200);
    }
}

static void memory_misuse(transfer_engine_t e) {
    buffer_entry_t list[3];
    void *addrs[3];

    CHECK_EQ(registerLocalMemory(e, buf4k, 0, "cpu:0", 1), -1);        /* zero length */
    CHECK_EQ(registerLocalMemory(e, NULL, 4096, "cpu:0", 1), -1);      /* NULL address */
    CHECK_EQ(registerLocalMemory(e, buf4k, sizeof buf4k, NULL, 1), -1);
    CHECK_EQ(registerLocalMemory(e, buf4k, sizeof buf4k, NOT_UTF8, 1), -1);
    CHECK_EQ(registerLocalMemory(e, buf4k, sizeof buf4k, "cpu:0", 1), 0);
    CHECK_EQ(registerLocalMemory(e, buf4k, sizeof buf4k, "cpu:0", 1), -7); /* same region */
    CHECK_EQ(registerLocalMemory(e, buf4k + 100, 10, "cpu:0", 1), -7);     /* inside */
    CHECK_EQ(registerLocalMemory(e, buf4k + 4000, 4096 * 2, "*", 0), -7);  /* straddles */
    CHECK_EQ(unregisterLocalMemory(e, buf4k + 1), -3);                     /* not a start */
    CHECK_EQ(unregisterLocalMemory(e, NULL), -3);
    CHECK_EQ(unregisterLocalMemory(e, buf64k), -3);
    CHECK_EQ(unregisterLocalMemory(e, buf4k), 0);
    CHECK_EQ(unregisterLocalMemory(e, buf4k), -3);                         /* twice */

    list[0].addr = buf64k;
    list[0].length = 1024;
    list[1].addr = buf64k + 4096;
    list[1].length = 1024;
    list[2].addr = buf64k + 8192;
    list[2].length = 0;
    CHECK_EQ(registerLocalMemoryBatch(e, NULL, 2, "cpu:0"), -1);
    CHECK_EQ(registerLocalMemoryBatch(e, list, 2, NULL), -1);
    CHECK_EQ(registerLocalMemoryBatch(e, list, 2, NOT_UTF8), -1);
    CHECK_EQ(registerLocalMemoryBatch(e, list, 3, "cpu:0"), -1);           /* zero length */
    list[2].addr = buf64k + 512;                                           /* overlaps [0] */
    list[2].length = 1024;
    CHECK_EQ(registerLocalMemoryBatch(e, list, 3, "cpu:0"), -7);
    list[2].addr = NULL;
    CHECK_EQ(registerLocalMemoryBatch(e, list, 3, "cpu:0"), -1);           /* NULL entry */
    CHECK_EQ(registerLocalMemoryBatch(e, list, 0, "cpu:0"), 0);            /* empty */
    CHECK_EQ(registerLocalMemoryBatch(e, list, 2, "cpu:0"), 0);
    CHECK_EQ(registerLocalMemoryBatch(e, list, 2, "cpu:0"), -7);           /* again */
    CHECK_EQ(registerLocalMemory(e, buf64k + 4096 + 512, 16, "cpu:0", 1), -7);
    CHECK_EQ(unregisterLocalMemoryBatch(e, NULL, 2), -1);
    CHECK_EQ(unregisterLocalMemoryBatch(e, addrs, 0), 0);
    addrs[0] = list[0].addr;
    addrs[1] = list[1].addr;
    CHECK_EQ(unregisterLocalMemoryBatch(e, addrs, 2), 0);
    CHECK_EQ(unregisterLocalMemoryBatch(e, addrs, 2), -3);                 /* twice */
}

static void batch_misuse(transfer_engine_t e, transfer_engine_t other) {
    struct transfer_request reqs[3];
    struct transfer_status st = {77, 77};
    batch_id_t b, b0, foreign;
    int i;
    for (i = 0; i < 3; i++) reqs[i] = request(999, buf4k, 8);

    b = allocateBatchID(e, 2);
    CHECK(b != INVALID_BATCH);
    b0 = allocateBatchID(e, 0);
    CHECK(b0 != INVALID_BATCH && b0 != b);
    foreign = allocateBatchID(other, 2);
    CHECK(foreign != INVALID_BATCH && foreign != b);

    CHECK_EQ(submitTransfer(e, b, NULL, 1), 1);          /* NULL entries */
    CHECK_EQ(submitTransfer(e, b, NULL, 0), 0);          /* nothing to do */
    CHECK_EQ(submitTransfer(e, b, reqs, 3), 2);          /* over capacity 2 */
    CHECK_EQ(submitTransfer(e, b0, reqs, 1), 2);         /* capacity 0 */
    CHECK_EQ(submitTransfer(e, b, reqs, 1), 1);          /* unknown segment id */
    reqs[0].target_id = -5;
    CHECK_EQ(submitTransfer(e, b, reqs, 1), 1);          /* negative segment id */
    reqs[0].target_id = 999;
    reqs[0].opcode = 7;                                  /* any opcode != 0 is WRITE */
    CHECK_EQ(submitTransfer(e, b, reqs, 1), 1);
    CHECK_EQ(submitTransfer(e, 0, reqs, 1), 1);          /* garbage batch ids */
    CHECK_EQ(submitTransfer(e, 0xdeadbeefULL, reqs, 1), 1);
    CHECK_EQ(submitTransfer(e, INVALID_BATCH, reqs, 1), 1);
    CHECK_EQ(submitTransfer(e, foreign, reqs, 1), 1);    /* another engine's batch */

    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 0, notify("n", "m")), 1);
    CHECK_EQ(submitTransferWithNotify(e, b, NULL, 1, notify("n", "m")), 1);
    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 1, notify(NULL, "m")), 1);
    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 1, notify("n", NULL)), 1);
    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 1, notify(NOT_UTF8, "m")), 1);
    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 3, notify("n", "m")), 2);
    CHECK_EQ(submitTransferWithNotify(e, b, reqs, 1, notify("n", "m")), 1);
    CHECK_EQ(submitTransferWithNotify(e, 0xdeadbeefULL, reqs, 1, notify("n", "m")), 1);

    /* No task was added by any failed submit: task 0 is out of range. */
    CHECK_EQ(getTransferStatus(e, b, 0, &st), 1);
    CHECK_EQ(getTransferStatus(e, b, (size_t)-1, &st), 1);
    CHECK_EQ(getTransferStatus(e, b, 0, NULL), 1);
    CHECK_EQ(getTransferStatus(e, 0xdeadbeefULL, 0, &st), 1);
    CHECK_EQ(getTransferStatus(e, foreign, 0, &st), 1);
    CHECK(st.status == 77 && st.transferred_bytes == 77); /* untouched on error */

    CHECK_EQ(freeBatchID(e, 0xdeadbeefULL), 1);
    CHECK_EQ(freeBatchID(e, INVALID_BATCH), 1);
    CHECK_EQ(freeBatchID(e, foreign), 1);
    CHECK_EQ(freeBatchID(e, b), 0);                      /* empty batch frees */
    CHECK_EQ(freeBatchID(e, b), 1);                      /* already freed */
    CHECK_EQ(getTransferStatus(e, b, 0, &st), 1);
    CHECK_EQ(submitTransfer(e, b, reqs, 1), 1);
    CHECK_EQ(freeBatchID(e, b0), 0);
    CHECK_EQ(freeBatchID(other, foreign), 0);
}

int main(void) {
    transfer_engine_t e, other, dead;

    create_misuse();

    bad_handle_matrix(NULL, "NULL");
    bad_handle_matrix((transfer_engine_t)(uintptr_t)0x1234, "garbage");
    bad_handle_matrix((transfer_engine_t)(uintptr_t)0x7e5e00000ff0ULL, "never-issued");
    dead = new_engine();
    destroyTransferEngine(dead);
    bad_handle_matrix(dead, "destroyed");

    e = new_engine();
    other = new_engine();
    CHECK(e != other);
    string_and_pointer_misuse(e);
    memory_misuse(e);
    batch_misuse(e, other);
    destroyTransferEngine(other);
    destroyTransferEngine(e);
    destroyTransferEngine(e); /* double destroy is refused, not a crash */
    return te_finish("misuse");
}
