/* Two engines in one process, P2PHANDSHAKE metadata, RDMA transport on the
 * soft fabric (MC_RDMA_PROVIDER=soft, two devices): WRITE and READ from
 * 4 KiB to 256 MiB in multi-request batches with every byte verified, an
 * out-of-range request FAILED, NIC load stats and showLinks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <transfer_engine_c.h>

#include "check.h"
#include "data_util.h"

#define MAX_LEN ((size_t)256 << 20)
#define POLL_LIMIT_SEC 60
#define MATRIX "{\"cpu:0\":[[\"soft0\",\"soft1\"],[]],\"*\":[[\"soft0\",\"soft1\"],[]]}"

/* Poll every task to a terminal state; stores each final status in `out`. */
static int wait_batch(transfer_engine_t e, batch_id_t b, size_t tasks, int *out,
                      uint64_t *moved) {
    size_t t;
    for (t = 0; t < tasks; t++) {
        double deadline = now_sec() + POLL_LIMIT_SEC;
        struct transfer_status st;
        for (;;) {
            int rc = getTransferStatus(e, b, t, &st);
            if (rc != 0) {
                fprintf(stderr, "getTransferStatus(task %zu) returned %d\n", t, rc);
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
        out[t] = st.status;
        moved[t] = st.transferred_bytes;
    }
    return 1;
}

/* One batch of `parts` requests covering [0, len) of both buffers; 1 if
 * every task COMPLETED with all its bytes. */
static int transfer(transfer_engine_t e, segment_id_t seg, int opcode, uint8_t *local,
                    uint8_t *remote, size_t len, size_t parts) {
    struct transfer_request reqs[8];
    uint64_t lens[8], moved[8];
    int status[8];
    size_t i, chunk = len / parts;
    int rc, ok = 1;
    batch_id_t b;
    REQUIRE(parts >= 1 && parts <= 8);
    b = allocateBatchID(e, parts);
    REQUIRE(b != INVALID_BATCH);
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
    if (!wait_batch(e, b, parts, status, moved)) return 0;
    for (i = 0; i < parts; i++) {
        if (status[i] != STATUS_COMPLETED || moved[i] != lens[i]) {
            fprintf(stderr, "task %zu: status %d, %llu of %llu bytes\n", i, status[i],
                    (unsigned long long)moved[i], (unsigned long long)lens[i]);
            ok = 0;
        }
    }
    CHECK_EQ(freeBatchID(e, b), 0);
    return ok;
}

static transfer_engine_t rdma_engine(void) {
    void *args[2];
    transfer_engine_t e = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    REQUIRE(e != NULL);
    args[0] = (void *)MATRIX;
    args[1] = NULL;
    REQUIRE(installTransport(e, "rdma", args) != NULL);
    return e;
}

int main(void) {
    static const size_t sizes[] = {4096, 65536, (size_t)1 << 20, (size_t)16 << 20, (size_t)64 << 20, MAX_LEN};
    char b_name[128];
    uint8_t *a_buf, *b_buf;
    segment_id_t seg_b;
    size_t k;
    unsigned seed = 1;
    transfer_engine_t a = rdma_engine();
    transfer_engine_t b = rdma_engine();

    a_buf = malloc(MAX_LEN);
    b_buf = malloc(MAX_LEN);
    REQUIRE(a_buf && b_buf);
    memset(a_buf, 0, MAX_LEN);
    memset(b_buf, 0, MAX_LEN);
    CHECK_EQ(registerLocalMemory(a, a_buf, MAX_LEN, "cpu:0", 1), 0);
    CHECK_EQ(registerLocalMemory(b, b_buf, MAX_LEN, "cpu:0", 1), 0);

    CHECK_EQ(getLocalIpAndPort(b, b_name, sizeof b_name), 0);
    seg_b = openSegment(a, b_name);
    REQUIRE(seg_b > 0);

    for (k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        size_t parts = n >= 65536 ? 4 : 1;
        char what[64];
        /* WRITE a -> b. */
        fill(a_buf, n, seed);
        memset(b_buf, 0, n);
        snprintf(what, sizeof what, "RDMA WRITE %zu", n);
        CHECK(transfer(a, seg_b, OPCODE_WRITE, a_buf, b_buf, n, parts));
        CHECK(verify(b_buf, n, seed, what));
        seed++;
        /* READ b -> a. */
        fill(b_buf, n, seed);
        memset(a_buf, 0, n);
        snprintf(what, sizeof what, "RDMA READ %zu", n);
        CHECK(transfer(a, seg_b, OPCODE_READ, a_buf, b_buf, n, parts));
        CHECK(verify(a_buf, n, seed, what));
        seed++;
    }

    /* A target range beyond the peer's registered buffer fails; a valid
     * request in the same batch still completes. */
    {
        struct transfer_request r[2];
        int status[2];
        uint64_t moved[2];
        batch_id_t batch = allocateBatchID(a, 2);
        REQUIRE(batch != INVALID_BATCH);
        fill(a_buf, 8192, 77);
        r[0].opcode = OPCODE_WRITE;
        r[0].source = a_buf;
        r[0].target_id = seg_b;
        r[0].target_offset = (uint64_t)(uintptr_t)(b_buf + MAX_LEN - 4096);
        r[0].length = 8192;
        r[1].opcode = OPCODE_WRITE;
        r[1].source = a_buf;
        r[1].target_id = seg_b;
        r[1].target_offset = (uint64_t)(uintptr_t)b_buf;
        r[1].length = 8192;
        CHECK_EQ(submitTransfer(a, batch, r, 2), 0);
        REQUIRE(wait_batch(a, batch, 2, status, moved));
        CHECK_EQ(status[0], STATUS_FAILED);
        CHECK_EQ(status[1], STATUS_COMPLETED);
        CHECK(verify(b_buf, 8192, 77, "valid request next to an out-of-range one"));
        CHECK_EQ(freeBatchID(a, batch), 0);
    }

    /* Load stats: one entry per soft device, nothing in flight when idle. */
    {
        nic_load_stat_t stats[4];
        size_t count = 4, i;
        CHECK_EQ(getNicLoadStats(a, stats, &count), 0);
        CHECK_EQ(count, 2);
        for (i = 0; i < count && i < 2; i++) {
            char want[8];
            snprintf(want, sizeof want, "soft%zu", i);
            CHECK(strcmp(stats[i].device_name, want) == 0);
            CHECK_EQ(stats[i].inflight_bytes, 0);
            CHECK(stats[i].ewma_bandwidth_bps >= 0.0);
        }
    }

    /* showLinks names the devices and the connected endpoint(s). */
    {
        static char links[1 << 16];
        CHECK_EQ(showLinks(a, links, sizeof links, 1), 0);
        CHECK(links[0] == '{');
        CHECK(strstr(links, "\"rdma\"") != NULL);
        CHECK(strstr(links, "soft0") != NULL && strstr(links, "soft1") != NULL);
        CHECK(strstr(links, "\"connected\"") != NULL);
        CHECK_EQ(showLinks(a, links, sizeof links, 0), 0);
        CHECK(strlen(links) > 0);
    }

    CHECK_EQ(unregisterLocalMemory(a, a_buf), 0);
    CHECK_EQ(unregisterLocalMemory(b, b_buf), 0);
    destroyTransferEngine(a);
    destroyTransferEngine(b);
    free(a_buf);
    free(b_buf);
    return te_finish("data_rdma");
}
