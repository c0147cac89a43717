/* te-rs's extension header (transfer_engine_ext.h) from C: cancel,
 * deadlines, release while in flight, blocking wait, and bad arguments.
 * Two engines in one process, P2PHANDSHAKE, TCP. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <transfer_engine_c.h>
#include <transfer_engine_ext.h>

#include "check.h"
#include "data_util.h"

#define TASKS 64
#define BLOCK ((size_t)64 << 10)
#define LEN (TASKS * BLOCK)
#define RELEASES 2000

static transfer_engine_t a, b;
static segment_id_t seg;
static uint8_t *a_buf, *b_buf;

static batch_id_t submit(uint64_t deadline_ms, int with_deadline) {
    struct transfer_request reqs[TASKS];
    size_t i;
    batch_id_t id = allocateBatchID(a, TASKS);
    for (i = 0; i < TASKS; i++) {
        reqs[i].opcode = OPCODE_WRITE;
        reqs[i].source = a_buf + i * BLOCK;
        reqs[i].target_id = seg;
        reqs[i].target_offset = (uint64_t)(uintptr_t)(b_buf + i * BLOCK);
        reqs[i].length = BLOCK;
    }
    if (with_deadline) {
        CHECK_EQ(teSubmitTransferWithDeadline(a, id, reqs, TASKS, deadline_ms), 0);
    } else {
        CHECK_EQ(submitTransfer(a, id, reqs, TASKS), 0);
    }
    return id;
}

static int status_of(batch_id_t id, size_t t) {
    struct transfer_status st;
    CHECK_EQ(getTransferStatus(a, id, t, &st), 0);
    return st.status;
}

/* A cancelled batch: every task CANCELED or COMPLETED (it won the race),
 * and freeBatchID accepts it at once. */
static void cancel_right_after_submit(void) {
    size_t t, canceled = 0;
    batch_id_t id = submit(0, 0);
    CHECK_EQ(teCancelBatch(a, id, 30000), 0);
    for (t = 0; t < TASKS; t++) {
        int s = status_of(id, t);
        CHECK(s == STATUS_CANCELED || s == STATUS_COMPLETED);
        canceled += s == STATUS_CANCELED;
        CHECK_EQ(status_of(id, t), s); /* ended once */
    }
    printf("cancel after submit: %zu of %d tasks CANCELED\n", canceled, TASKS);
    CHECK_EQ(freeBatchID(a, id), 0);
}

/* teWaitBatch returns once every task ended; the bytes are there. */
static void wait_for_completion(void) {
    size_t t;
    batch_id_t id;
    fill(a_buf, LEN, 9);
    memset(b_buf, 0, LEN);
    id = submit(0, 0);
    CHECK_EQ(teWaitBatch(a, id, TE_EXT_FOREVER), 0);
    for (t = 0; t < TASKS; t++) CHECK_EQ(status_of(id, t), STATUS_COMPLETED);
    CHECK(verify(b_buf, LEN, 9, "WRITE after teWaitBatch"));
    CHECK_EQ(freeBatchID(a, id), 0);
}

/* A deadline already past: nothing goes out, every task reads TIMEOUT
 * (or COMPLETED if it was sent before the transport looked). */
static void deadline_in_the_past(void) {
    size_t t;
    batch_id_t id = submit(0, 1);
    CHECK_EQ(teWaitBatch(a, id, 30000), 0);
    for (t = 0; t < TASKS; t++) {
        int s = status_of(id, t);
        CHECK(s == STATUS_TIMEOUT || s == STATUS_COMPLETED);
    }
    CHECK_EQ(freeBatchID(a, id), 0);
    id = submit(0, 0);
    CHECK_EQ(teSetBatchDeadline(a, id, 60000), 0);
    CHECK_EQ(teWaitBatch(a, id, 30000), 0);
    for (t = 0; t < TASKS; t++) CHECK_EQ(status_of(id, t), STATUS_COMPLETED);
    CHECK_EQ(freeBatchID(a, id), 0);
}

/* Free while in flight, many times: the id goes at once and nothing stays
 * behind once the transfers ended. */
static void release_in_flight(void) {
    size_t ids0, alive0, ids, alive;
    int i;
    double limit;
    /* The baseline: no freed batch still held (a transport lets go of a
     * task a moment after its last slice ended). */
    limit = now_sec() + 30;
    do {
        CHECK_EQ(teBatchCounts(a, &ids0, &alive0), 0);
        if (alive0 == ids0) break;
        nap();
    } while (now_sec() < limit);
    CHECK_EQ(alive0, ids0);
    for (i = 0; i < RELEASES; i++) {
        batch_id_t id = submit(0, 0);
        CHECK_EQ(teReleaseBatchID(a, id), 0);
        CHECK_EQ(teReleaseBatchID(a, id), -1);
        CHECK_EQ(freeBatchID(a, id), 1); /* unknown id: upstream's INVALID_ARGUMENT status */
    }
    limit = now_sec() + 30;
    do {
        CHECK_EQ(teBatchCounts(a, &ids, &alive), 0);
        if (ids == ids0 && alive == alive0) break;
        nap();
    } while (now_sec() < limit);
    CHECK_EQ(ids, ids0);
    CHECK_EQ(alive, alive0);
    printf("%d releases in flight: %zu batch ids, %zu alive, as before\n", RELEASES, ids, alive);
}

static void bad_arguments(void) {
    batch_id_t id = allocateBatchID(a, 1);
    size_t n;
    CHECK_EQ(teCancelBatch(NULL, id, 0), -1);
    CHECK_EQ(teCancelBatch(a, id ^ 0xff, 0), -1);
    CHECK_EQ(teCancelTransfer(a, id, 0, 0), -1); /* no task 0 yet */
    CHECK_EQ(teSubmitTransferWithDeadline(a, id, NULL, 1, 10), -1);
    CHECK_EQ(teSubmitTransferWithDeadline(a, INVALID_BATCH, NULL, 0, 10), -1);
    CHECK_EQ(teSetBatchDeadline(a, INVALID_BATCH, 10), -1);
    CHECK_EQ(teWaitBatch(a, INVALID_BATCH, 0), -1);
    CHECK_EQ(teWaitBatch((transfer_engine_t)(uintptr_t)0x1234, id, 0), -1);
    CHECK_EQ(teBatchCounts(a, NULL, NULL), -1);
    CHECK_EQ(teBatchCounts(NULL, &n, NULL), -1);
    CHECK_EQ(teWaitBatch(a, id, 0), 0); /* no tasks: ended */
    CHECK_EQ(teReleaseBatchID(a, id), 0);
}

int main(void) {
    char b_name[128];
    a = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    b = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    if (!a || !b || !installTransport(a, "tcp", NULL) || !installTransport(b, "tcp", NULL)) {
        fprintf(stderr, "engine setup failed\n");
        return 1;
    }
    a_buf = calloc(1, LEN);
    b_buf = calloc(1, LEN);
    if (!a_buf || !b_buf) return 1;
    CHECK_EQ(registerLocalMemory(a, a_buf, LEN, "cpu:0", 1), 0);
    CHECK_EQ(registerLocalMemory(b, b_buf, LEN, "cpu:0", 1), 0);
    CHECK_EQ(getLocalIpAndPort(b, b_name, sizeof b_name), 0);
    seg = openSegment(a, b_name);
    if (seg <= 0) {
        fprintf(stderr, "openSegment failed\n");
        return 1;
    }
    cancel_right_after_submit();
    wait_for_completion();
    deadline_in_the_past();
    release_in_flight();
    bad_arguments();
    destroyTransferEngine(a);
    destroyTransferEngine(b);
    free(a_buf);
    free(b_buf);
    return te_finish("cancel");
}
