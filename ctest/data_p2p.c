/* Two engines in one process, P2PHANDSHAKE metadata, TCP transport: WRITE
 * and READ from 4 KiB to 64 MiB with every byte verified, multi-request
 * batches, BatchBusy before polling, and notifications both ways. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <transfer_engine_c.h>

#include "check.h"
#include "data_util.h"

#define MAX_LEN ((size_t)64 << 20)
#define POLL_LIMIT_SEC 60

/* Poll every task of the batch to a terminal state; returns 1 if all COMPLETED. */
static int wait_batch(transfer_engine_t e, batch_id_t b, size_t tasks, const uint64_t *lens) {
    size_t t;
    int ok = 1;
    for (t = 0; t < tasks; t++) {
        double deadline = now_sec() + POLL_LIMIT_SEC;
        struct transfer_status st;
        for (;;) {
            int rc = getTransferStatus(e, b, t, &st);
            if (rc != 0) {
                fprintf(stderr, "getTransferStatus(task %zu) returned %d\n", t, rc);
                return 0;
            }
            if (st.status < STATUS_WAITING || st.status > STATUS_FAILED) {
                fprintf(stderr, "status %d outside 0..6\n", st.status);
                return 0;
            }
            if (st.status == STATUS_COMPLETED || st.status == STATUS_FAILED) break;
            if (now_sec() > deadline) {
                fprintf(stderr, "task %zu still in status %d after %d s\n", t, st.status,
                        POLL_LIMIT_SEC);
                return 0;
            }
            nap();
        }
        if (st.status != STATUS_COMPLETED) {
            fprintf(stderr, "task %zu FAILED (%llu bytes moved)\n", t,
                    (unsigned long long)st.transferred_bytes);
            ok = 0;
        } else if (st.transferred_bytes != lens[t]) {
            fprintf(stderr, "task %zu moved %llu bytes, expected %llu\n", t,
                    (unsigned long long)st.transferred_bytes, (unsigned long long)lens[t]);
            ok = 0;
        }
    }
    return ok;
}

/* One batch of `parts` requests covering [0, len) of both buffers. */
static int transfer(transfer_engine_t e, segment_id_t seg, int opcode, uint8_t *local,
                    uint8_t *remote, size_t len, size_t parts, int check_busy) {
    struct transfer_request reqs[8];
    uint64_t lens[8];
    size_t i, chunk = len / parts;
    int rc, ok;
    batch_id_t b = allocateBatchID(e, parts);
    REQUIRE(b != INVALID_BATCH && parts <= 8);
    for (i = 0; i < parts; i++) {
        size_t off = i * chunk;
        size_t n = (i + 1 == parts) ? len - off : chunk;
        reqs[i].opcode = opcode;
        reqs[i].source = local + off;
        reqs[i].target_id = seg;
        reqs[i].target_offset = (uint64_t)(uintptr_t)(remote + off);
        reqs[i].length = n;
        lens[i] = n;
    }
    rc = submitTransfer(e, b, reqs, parts);
    if (rc != 0) {
        fprintf(stderr, "submitTransfer(%zu bytes, %zu parts) returned %d\n", len, parts, rc);
        return 0;
    }
    if (check_busy) CHECK_EQ(freeBatchID(e, b), 4); /* not polled yet: BatchBusy */
    ok = wait_batch(e, b, parts, lens);
    CHECK_EQ(freeBatchID(e, b), 0);
    return ok;
}

/* Wait for one notification on `e` and check it. */
static void expect_notify(transfer_engine_t e, const char *name, const char *msg) {
    double deadline = now_sec() + 10;
    int size = 0;
    notify_msg_t *n = NULL;
    while (now_sec() < deadline) {
        n = getNotifsFromEngine(e, &size);
        if (n != NULL) break;
        CHECK_EQ(size, 0);
        nap();
    }
    if (n == NULL) {
        fprintf(stderr, "no notification '%s' arrived within 10 s\n", name);
        te_failures++;
        return;
    }
    CHECK_EQ(size, 1);
    CHECK(n[0].name != NULL && strcmp(n[0].name, name) == 0);
    CHECK(n[0].msg != NULL && strcmp(n[0].msg, msg) == 0);
    CHECK_EQ(freeNotifsMsgBuf(n, size), 0);
}

int main(void) {
    static const size_t sizes[] = {4096, 65536, (size_t)1 << 20, (size_t)16 << 20, MAX_LEN};
    char a_name[128], b_name[128];
    uint8_t *a_buf, *b_buf;
    segment_id_t seg_b, seg_a;
    size_t k;
    unsigned seed = 1;

    transfer_engine_t a = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    transfer_engine_t b = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    REQUIRE(a != NULL && b != NULL);
    REQUIRE(installTransport(a, "tcp", NULL) != NULL);
    REQUIRE(installTransport(b, "tcp", NULL) != NULL);
    CHECK(installTransport(a, "tcp", NULL) != NULL); /* already installed */

    a_buf = malloc(MAX_LEN);
    b_buf = malloc(MAX_LEN);
    REQUIRE(a_buf && b_buf);
    memset(a_buf, 0, MAX_LEN);
    memset(b_buf, 0, MAX_LEN);
    CHECK_EQ(registerLocalMemory(a, a_buf, MAX_LEN, "cpu:0", 1), 0);
    CHECK_EQ(registerLocalMemory(b, b_buf, MAX_LEN, "cpu:0", 1), 0);

    CHECK_EQ(getLocalIpAndPort(a, a_name, sizeof a_name), 0);
    CHECK_EQ(getLocalIpAndPort(b, b_name, sizeof b_name), 0);
    seg_b = openSegment(a, b_name);
    seg_a = openSegment(b, a_name);
    REQUIRE(seg_b > 0 && seg_a > 0);
    CHECK_EQ(openSegment(a, b_name), seg_b);
    CHECK_EQ(openSegmentNoCache(a, b_name), seg_b);
    CHECK_EQ(openSegment(a, a_name), LOCAL_SEGMENT);

    for (k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        char what[64];
        /* WRITE a -> b. */
        fill(a_buf, n, seed);
        memset(b_buf, 0, n);
        snprintf(what, sizeof what, "WRITE %zu", n);
        CHECK(transfer(a, seg_b, OPCODE_WRITE, a_buf, b_buf, n, 1, k == 0));
        CHECK(verify(b_buf, n, seed, what));
        seed++;
        /* READ b -> a. */
        fill(b_buf, n, seed);
        memset(a_buf, 0, n);
        snprintf(what, sizeof what, "READ %zu", n);
        CHECK(transfer(a, seg_b, OPCODE_READ, a_buf, b_buf, n, 1, 0));
        CHECK(verify(a_buf, n, seed, what));
        seed++;
    }

    /* A multi-request batch, written by b into a. */
    fill(b_buf, (size_t)4 << 20, seed);
    memset(a_buf, 0, (size_t)4 << 20);
    CHECK(transfer(b, seg_a, OPCODE_WRITE, b_buf, a_buf, (size_t)4 << 20, 7, 1));
    CHECK(verify(a_buf, (size_t)4 << 20, seed, "WRITE 4 MiB in 7 parts"));

    /* Notifications both ways. */
    {
        notify_msg_t m;
        m.name = "from-a";
        m.msg = "hello b";
        CHECK_EQ(genNotifyInEngine(a, (uint64_t)seg_b, m), 0);
        expect_notify(b, "from-a", "hello b");
        m.name = "from-b";
        m.msg = "hello a";
        CHECK_EQ(genNotifyInEngine(b, (uint64_t)seg_a, m), 0);
        expect_notify(a, "from-b", "hello a");
    }

    /* submitTransferWithNotify: delivered once the whole batch completed. */
    {
        struct transfer_request r;
        uint64_t len = 8192;
        notify_msg_t m;
        batch_id_t batch = allocateBatchID(a, 1);
        REQUIRE(batch != INVALID_BATCH);
        fill(a_buf, len, 99);
        r.opcode = OPCODE_WRITE;
        r.source = a_buf;
        r.target_id = seg_b;
        r.target_offset = (uint64_t)(uintptr_t)b_buf;
        r.length = len;
        m.name = "batch-done";
        m.msg = "8 KiB written";
        CHECK_EQ(submitTransferWithNotify(a, batch, &r, 1, m), 0);
        CHECK(wait_batch(a, batch, 1, &len));
        CHECK(verify(b_buf, len, 99, "WRITE with notify"));
        CHECK_EQ(freeBatchID(a, batch), 0);
        expect_notify(b, "batch-done", "8 KiB written");
    }

    CHECK_EQ(unregisterLocalMemory(a, a_buf), 0);
    CHECK_EQ(unregisterLocalMemory(b, b_buf), 0);
    destroyTransferEngine(a);
    destroyTransferEngine(b);
    free(a_buf);
    free(b_buf);
    return te_finish("data_p2p");
}
