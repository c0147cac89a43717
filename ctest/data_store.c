/* Two engines that find each other through a real metadata store (the
 * bundled HTTP server, etcd, Redis), through the C API only: WRITE and READ
 * with every byte verified, a notification, removal on destroy, and a clean
 * NULL for an unreachable store. The store URLs come from
 * TE_TEST_METADATA_URLS (';'-separated; scripts/test.sh sets it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <transfer_engine_c.h>

#include "check.h"
#include "data_util.h"

#define LEN ((size_t)1 << 20)

static int one_transfer(transfer_engine_t e, int op, void *src, segment_id_t seg, uint64_t dst,
                        uint64_t len) {
    struct transfer_request r;
    struct transfer_status st;
    batch_id_t b = allocateBatchID(e, 1);
    double deadline = now_sec() + 30;
    memset(&r, 0, sizeof r);
    r.opcode = op;
    r.source = src;
    r.target_id = seg;
    r.target_offset = dst;
    r.length = len;
    if (submitTransfer(e, b, &r, 1) != 0) return 0;
    for (;;) {
        if (getTransferStatus(e, b, 0, &st) != 0) return 0;
        if (st.status == STATUS_COMPLETED || st.status == STATUS_FAILED) break;
        if (now_sec() > deadline) return 0;
        usleep(500);
    }
    CHECK_EQ(freeBatchID(e, b), 0);
    return st.status == STATUS_COMPLETED && st.transferred_bytes == len;
}

static void exchange(const char *url, int idx) {
    char tname[128], iname[128], lname[128];
    transfer_engine_t target, init, late;
    uint8_t *remote = calloc(1, LEN), *local = calloc(1, LEN);
    segment_id_t seg;
    notify_msg_t note, *got;
    int n = 0;
    snprintf(tname, sizeof tname, "ctest-store-target-%d-%d", (int)getpid(), idx);
    snprintf(iname, sizeof iname, "ctest-store-init-%d-%d", (int)getpid(), idx);
    snprintf(lname, sizeof lname, "ctest-store-late-%d-%d", (int)getpid(), idx);
    fprintf(stderr, "store %s\n", url);
    target = createTransferEngine(url, tname, "127.0.0.1", 0, 0);
    init = createTransferEngine(url, iname, "127.0.0.1", 0, 0);
    REQUIRE(target != NULL && init != NULL && remote && local);
    REQUIRE(installTransport(target, "tcp", NULL) != NULL);
    REQUIRE(installTransport(init, "tcp", NULL) != NULL);
    CHECK_EQ(registerLocalMemory(target, remote, LEN, "cpu:0", 1), 0);
    CHECK_EQ(registerLocalMemory(init, local, LEN, "cpu:0", 1), 0);
    seg = openSegment(init, tname);
    REQUIRE(seg > 0);
    fill(local, LEN, (unsigned)idx);
    CHECK(one_transfer(init, OPCODE_WRITE, local, seg, (uint64_t)(uintptr_t)remote, LEN));
    CHECK(memcmp(local, remote, LEN) == 0);
    memset(local, 0, LEN);
    CHECK(one_transfer(init, OPCODE_READ, local, seg, (uint64_t)(uintptr_t)remote, LEN));
    CHECK(memcmp(local, remote, LEN) == 0);
    note.name = "ctest";
    note.msg = (char *)url;
    CHECK_EQ(genNotifyInEngine(init, (uint64_t)seg, note), 0);
    got = getNotifsFromEngine(target, &n);
    CHECK_EQ(n, 1);
    if (got && n == 1) CHECK(strcmp(got[0].msg, url) == 0);
    if (got) freeNotifsMsgBuf(got, n);
    CHECK_EQ(unregisterLocalMemory(target, remote), 0);
    destroyTransferEngine(target);
    /* Destroy removed the target's keys: a newcomer cannot open it. */
    late = createTransferEngine(url, lname, "127.0.0.1", 0, 0);
    REQUIRE(late != NULL);
    REQUIRE(installTransport(late, "tcp", NULL) != NULL);
    CHECK_EQ(openSegment(late, tname), -1);
    destroyTransferEngine(late);
    destroyTransferEngine(init);
    free(remote);
    free(local);
}

/* Same scheme, a port nobody listens on: NULL, no abort, bounded time. */
static void unreachable(const char *url) {
    char dead[256];
    const char *scheme_end = strstr(url, "://");
    double t0 = now_sec();
    transfer_engine_t e;
    if (scheme_end) {
        snprintf(dead, sizeof dead, "%.*s://127.0.0.1:9/metadata", (int)(scheme_end - url), url);
    } else {
        snprintf(dead, sizeof dead, "127.0.0.1:9");
    }
    e = createTransferEngine(dead, "ctest-unreachable", "127.0.0.1", 0, 0);
    CHECK(e == NULL);
    if (e) destroyTransferEngine(e);
    CHECK(now_sec() - t0 < 20);
}

int main(void) {
    const char *urls = getenv("TE_TEST_METADATA_URLS");
    char *copy, *tok, *save = NULL;
    int idx = 0;
    if (!urls || !*urls) {
        const char *skip = getenv("TE_SKIP_SERVICE_TESTS");
        fprintf(stderr, "TE_TEST_METADATA_URLS is not set: run scripts/test.sh "
                        "(it starts te-metadata-server, etcd and redis)\n");
        return (skip && strcmp(skip, "1") == 0) ? 77 : 1;
    }
    copy = strdup(urls);
    for (tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        exchange(tok, idx++);
        unreachable(tok);
    }
    free(copy);
    REQUIRE(idx > 0);
    return te_finish("data_store");
}
